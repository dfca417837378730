#!/usr/bin/env python3
"""How good is the tuner's search? For each point, in one process: the search's choice
(vkqlinear.tuner.search_point), the exhaustive best (every candidate timed), then both
timed again in alternation; prints the chosen / best kernel time per point.

    python bench/tune_quality.py [--shapes 1536x384,2048x2048] [--tokens 1,8,512]
"""

import argparse
import sys

import numpy as np

import vkqlinear as vq
from vkqlinear.kernels import candidates
from vkqlinear.model_bench import random_weights
from vkqlinear.tuner import Point, alternate, search_point


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1536x384,2048x2048")
    ap.add_argument("--tokens", default="1,8,512")
    ap.add_argument("--budget", type=float, default=30.0, help="the search's seconds a point")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args(argv)
    dev = vq.Device()
    rng = np.random.default_rng(0)
    print(dev.name)
    ratios = []
    for shape in a.shapes.split(","):
        k, n = (int(v) for v in shape.lower().split("x"))
        qw = random_weights(rng, k, n)         # held: a DeviceLinear holds it weakly
        dl = vq.DeviceLinear.of(qw, dev)
        for t in (int(v) for v in a.tokens.split(",")):
            chosen = search_point(dl, t, a.budget, rng=rng)["best"]
            full = search_point(dl, t, float("inf"), exhaustive=True, rng=rng)
            pool = {c.describe(): c for alg in ("tiled", "cooperative")
                    for c in candidates(alg, t, dl.kernel_group_size, False, dev.caps)}
            best = pool.get(min(full["timings"], key=full["timings"].get), full["best"])
            if best == chosen:
                ratio = 1.0
            else:
                t_chosen, t_best = alternate(Point(dl, t, rng), [chosen, best], a.rounds)
                ratio = t_chosen / t_best
            ratios.append(ratio)
            print(f"{k}x{n} T={t}: search chose {chosen.describe()}; exhaustive best "
                  f"{best.describe()} of {len(full['timings'])}: chosen / best {ratio:.3f}",
                  flush=True)
    print(f"worst chosen / best: {max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
