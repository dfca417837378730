#!/usr/bin/env python3
"""How good is the tuner's search? For each point, in one process: the search's choice
(vkqlinear.tuner.search_point, with the tuner's share of budget a point), every candidate
timed (exhaustive), then the choice and the exhaustive search's fastest few timed again
in alternation (a single exhaustive timing is as noisy as the search's); prints the
chosen / best kernel time per point.

    python bench/tune_quality.py [--shapes 4096x4096,1536x384] [--tokens 1,8,512]
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
    ap.add_argument("--shapes", default="4096x4096,1536x384")
    ap.add_argument("--tokens", default="1,8,512")
    ap.add_argument("--budget", type=float, default=15.0,
                    help="the search's seconds a point (default 15: the tuner's 600 s over "
                         "the quick benchmark's 40 points)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--finalists", type=int, default=4,
                    help="the exhaustive search's fastest, timed again with the choice")
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
            ranked = sorted((name for name in full["timings"] if name in pool),
                            key=full["timings"].get)
            finalists = [pool[name] for name in ranked[:a.finalists]]
            timed = [chosen] + [c for c in finalists if c != chosen]
            times = alternate(Point(dl, t, rng), timed, a.rounds)
            best = timed[int(np.argmin(times))]
            ratio = times[0] / min(times)
            ratios.append(ratio)
            print(f"{k}x{n} T={t}: search chose {chosen.describe()}; best of the "
                  f"exhaustive search's {len(full['timings'])} after re-timing "
                  f"{best.describe()}: chosen / best {ratio:.3f}",
                  flush=True)
    print(f"worst chosen / best: {max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
