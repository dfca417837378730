#!/usr/bin/env python3
"""How good is the tuner's search? The points tuned as `python -m vkqlinear tune` tunes
them (vkqlinear.measure.tuner.tune: each point's search with the tuner's share of budget, then
the recheck of the tuned choices; into a temporary tuning file), then every candidate
of each point timed (exhaustive), in one process; then, in a fresh process, the tuned
choice and the exhaustive search's fastest few timed again in alternation (a single
exhaustive timing is as noisy as the search's, and a process that has built hundreds of
pipelines times differently). Prints the chosen / best kernel time per point; the
searched points can be saved (--save) and timed again later (--load).

    python bench/tune_quality.py [--shapes 4096x4096,1536x384] [--tokens 1,8,512]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

import vkqlinear as vq
from vkqlinear.kernels import KERNEL_ALGORITHMS, candidates, kernel_config, kernel_from_config
from vkqlinear.measure.common import int_list, shape_list
from vkqlinear.measure.model_bench import random_weights
from vkqlinear.measure.tuner import (
    RECHECK_SHARE,
    VISIT_RUNS,
    Trials,
    keeping_calls_of,
    paired_visits,
    search_point,
    tune,
)

GROUP_SIZE = 32


def search(a):
    """The points' tuned choices and exhaustive finalists, as configs."""
    dev = vq.Device()
    print(dev.name, flush=True)
    # the tuner's own run, its entries in a file of their own (not the user's)
    n = len(a.shapes) * len(a.tokens)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(
            os.environ, {"VKQLINEAR_TUNING_FILE": str(Path(tmp) / "tuning.json")}):
        report = tune(a.shapes, a.tokens, [GROUP_SIZE], a.budget * n / (1 - RECHECK_SHARE),
                      device=dev, log=None)
    tuned = {(p["K"], p["N"], p["T"]): p for p in report["points"]}
    print(f"tuned {n} points in {time.perf_counter() - start:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    out = []
    for k, n in a.shapes:
        qw = random_weights(rng, k, n, GROUP_SIZE)     # held: a DeviceLinear holds it weakly
        dl = vq.DeviceLinear.of(qw, dev)
        for t in a.tokens:
            start = time.perf_counter()
            entry = tuned[(k, n, t)]
            chosen = kernel_from_config(entry["config"], t, dl.kernel_group_size, False,
                                        dev.caps)
            full = search_point(dl, t, float("inf"), exhaustive=True, rng=rng,
                                exhaustive_rounds=a.exhaustive_rounds)
            pool = {c.describe(): c for alg in KERNEL_ALGORITHMS
                    for c in candidates(alg, t, dl.kernel_group_size, False, dev.caps)}
            ranked = sorted((name for name in full["timings"] if name in pool),
                            key=full["timings"].get)
            finalists = [pool[name] for name in ranked[:a.finalists]]
            kernels = [chosen] + [c for c in finalists if c != chosen]
            out.append({"K": k, "N": n, "T": t, "timed": len(full["timings"]),
                        "configs": [kernel_config(c) for c in kernels]})
            again = entry.get("recheck")
            if entry["best"] != entry["default"]:
                how = f"tuned / default {entry['ratio']:.2f}" + (
                    "" if again is None else f", {again:.2f} when rechecked")
            elif again is None:
                how = "the default"
            else:
                how = f"the default again: tuned / default {again:.2f} when rechecked"
            # the exhaustive search of a long point (4096 x 4096, T = 512) takes many minutes
            print(f"searched {k}x{n} T={t}: chose {chosen.describe()} ({how}); exhaustive "
                  f"timed {len(full['timings'])} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    return out


def retime(points, rounds):
    """Chosen / best per point: each kernel over the chosen one, visit by visit in
    alternation (:func:`vkqlinear.measure.tuner.paired_visits`; this process is fresh), the points
    taking turns a round at a time: the host's states last seconds and can rank the
    kernels differently, so each point's rounds are spread over the whole re-timing."""
    dev = vq.Device()
    rng = np.random.default_rng(1)
    layers, jobs = {}, []
    for p in points:
        if (p["K"], p["N"]) not in layers:    # held: a DeviceLinear holds them weakly
            layers[(p["K"], p["N"])] = random_weights(rng, p["K"], p["N"], GROUP_SIZE)
        dl = vq.DeviceLinear.of(layers[(p["K"], p["N"])], dev)
        kernels = [kernel_from_config(c, p["T"], dl.kernel_group_size, False, dev.caps)
                   for c in p["configs"]]
        others_then_chosen = kernels[1:] + kernels[:1]
        jobs.append((p, Trials(dl, p["T"], rng), others_then_chosen,
                     [[] for _ in kernels]))
    with keeping_calls_of((point.dl, len(ks)) for _, point, ks, _ in jobs):
        for i in range(rounds):
            for _, point, kernels, seen in jobs:
                for j, r in enumerate(paired_visits(point, kernels, 1, VISIT_RUNS, first=i)):
                    seen[j] += r
    ratios = []
    for p, _, kernels, seen in jobs:
        rel = [float(np.median(r)) for r in seen]
        best = kernels[int(np.argmin(rel))]
        ratios.append(1 / min(rel))
        print(f"{p['K']}x{p['N']} T={p['T']}: search chose {kernels[-1].describe()}; best "
              f"of the exhaustive search's {p['timed']} after re-timing {best.describe()}: "
              f"chosen / best {ratios[-1]:.3f}", flush=True)
    print(f"worst chosen / best: {max(ratios):.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=shape_list, default=[(4096, 4096), (1536, 384)])
    ap.add_argument("--tokens", type=int_list, default=[1, 8, 512])
    ap.add_argument("--budget", type=float, default=15.0,
                    help="the search's seconds a point (default 15: the tuner's 600 s over "
                         "the quick benchmark's 40 points)")
    ap.add_argument("--rounds", type=int, default=15,
                    help="visits a kernel when re-timing the finalists, the points in "
                         "turn (default 15)")
    ap.add_argument("--exhaustive-rounds", type=int, default=5,
                    help="visits a candidate of the exhaustive search (default 5; 1 makes "
                         "T = 512 on 4096 x 4096 affordable: it only picks the finalists)")
    ap.add_argument("--finalists", type=int, default=4,
                    help="the exhaustive search's fastest, timed again with the choice")
    ap.add_argument("--save", type=Path, help="write the searched points (JSON) here")
    ap.add_argument("--load", type=Path,
                    help="re-time the points a run saved (--save) instead of searching")
    a = ap.parse_args(argv)
    if a.load:
        retime(json.loads(a.load.read_text()), a.rounds)
        return 0
    points = search(a)
    with tempfile.TemporaryDirectory() as tmp:
        path = a.save or Path(tmp) / "points.json"
        path.write_text(json.dumps(points))
        sys.stdout.flush()
        return subprocess.run([sys.executable, __file__, "--rounds", str(a.rounds),
                               "--load", str(path)]).returncode


if __name__ == "__main__":
    sys.exit(main())
