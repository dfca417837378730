"""The tuner: find the fastest kernel configuration for each layer shape and token bucket
on the device in front of it, and store it for ``algorithm="auto"`` (:mod:`vkqlinear.tuning`).

``python -m vkqlinear tune [--shapes KxN,...] [--tokens ...] [--group-sizes ...]
[--budget S] [--exhaustive] [--device N]``, or :func:`tune` from Python.

For each point (K, N, group size, T) the search space is every kernel the device can run
(:func:`vkqlinear.kernels.candidates`: both algorithms, every variant, tokens per
invocation, the workgroup's other axis). Every candidate is first checked against the
contract's tolerance on the point's inputs; a wrong one is excluded and reported (a bug to
fix). The search does not time everything: it times one representative of each
(algorithm, variant) briefly, keeps the best three, then runs successive halving over all
the configurations of those three (a third survives each round, each round with three
times the runs) until one is left or the point's share of the time budget is spent.
``exhaustive=True`` times every candidate instead, the yardstick of the search.

Progress is written to a state file beside the tuning file after every point, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from . import conformance, tuning
from .device import Device
from .device_linear import DeviceLinear
from .kernels import candidates, choose_kernel, kernel_config
from .model_bench import random_weights
from .quant import quantize_per_token

__all__ = ["tune", "search_point", "alternate", "Point", "QUICK_SHAPES", "TOKENS"]

QUICK_SHAPES = [(4096, 4096), (1536, 384)]
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
KEEP_VARIANTS = 3        # (algorithm, variant) pairs that reach successive halving


class Point:
    """One point's inputs, its expected result, and what the search learnt so far."""

    def __init__(self, dl, t, rng):
        self.dl = dl
        w = dl.weights
        self.x = quantize_per_token(rng.standard_normal((t, w.K)).astype(np.float32))
        self.spec = dict(x_q=self.x[0], x_scale=self.x[1], x_zero_point=self.x[2],
                         w_packed=w.w_packed, group_size=w.group_size, w_scales=w.w_scales,
                         w_offsets=w.w_offsets64, bias=None)
        self.expect = conformance.expected(self.spec)       # once: float64 at T x N x K
        self.period = dl.device.info.limits["timestamp_period_ns"] * 1e-9
        self.timings, self.excluded, self.right, self.wrong = {}, {}, set(), set()

    def time(self, kernel, runs):
        """Median device time of ``runs`` timed runs of ``kernel`` after one untimed run,
        checked against the contract first (``None``, and excluded, if it is wrong)."""
        name = kernel.describe()
        if kernel in self.wrong:
            return None
        if kernel not in self.right:
            try:
                out, _ = self.dl.run(kernel, *self.x)
                ok, msg = conformance.check(out, self.spec, self.expect)
            except (ValueError, RuntimeError) as e:
                ok, msg = False, f"{type(e).__name__}: {e}"
            if not ok:
                self.excluded[name] = msg
                self.wrong.add(kernel)
                return None
            self.right.add(kernel)
        self.dl.run(kernel, *self.x)
        times = []
        for _ in range(runs):
            _, call = self.dl.run(kernel, *self.x, timed=True)
            times.append(call.kernel_ns(1.0) * self.period)
        self.timings[name] = float(np.median(times))
        return self.timings[name]


def search_point(dl, t, budget_s, exhaustive=False, rng=None):
    """Search the kernels for ``dl``'s layer at ``t`` tokens (see the module doc):
    ``{"best": Kernel, "timings": {describe: seconds}, "excluded": {describe: why},
    "default": describe}``. Every candidate is checked before it is timed."""
    point = Point(dl, t, rng or np.random.default_rng(0))
    caps = dl.device.caps
    cands = []
    for alg in ("tiled", "cooperative"):
        cands += candidates(alg, t, dl.kernel_group_size, False, caps)
    default = choose_kernel("auto", t, dl.kernel_group_size, False, caps,
                            tuning.auto_threshold(dl.device.info))
    start = time.perf_counter()

    def over():
        return time.perf_counter() - start > budget_s

    point.time(default, 3)
    if exhaustive:
        for k in cands:
            point.time(k, 3)
    else:
        # one representative per (algorithm, variant): the first candidate of each
        reps = {}
        for k in cands:
            reps.setdefault((k.algorithm, k.variant), k)
        for k in reps.values():
            if not over():
                point.time(k, 1)
        timed = [av for av, k in reps.items() if k.describe() in point.timings]
        kept = sorted(timed, key=lambda av: point.timings[reps[av].describe()])
        pool = [k for k in cands if (k.algorithm, k.variant) in kept[:KEEP_VARIANTS]]
        runs, ranked = 1, None
        while len(pool) > 1 and not over():
            pool = [k for k in pool if point.time(k, runs) is not None]
            ranked = pool = sorted(pool, key=lambda k: point.timings[k.describe()])
            pool = pool[:max(1, -(-len(pool) // 3))]
            runs *= 3
        if ranked:                       # the leader of the last round
            return _result(point, ranked[0], default)
    ok = [k for k in cands + [default] if k.describe() in point.timings]
    return _result(point, min(ok, key=lambda k: point.timings[k.describe()]), default)


def alternate(point, kernels, rounds=5):
    """Time ``kernels`` in alternation, one run each a round (the order reversed every other
    round), so that the host's drifts hit them alike; their medians are the point's
    timings. Returns them, in the order given."""
    runs = {k: [] for k in kernels}
    for i in range(rounds):
        for k in (kernels if i % 2 else kernels[::-1]):
            runs[k].append(point.time(k, 1))
    for k, v in runs.items():
        point.timings[k.describe()] = float(np.median(v))
    return [point.timings[k.describe()] for k in kernels]


# A tuned choice replaces the default only when it is this much faster in alternation:
# on a noisy host a smaller lead is as likely a slow spell of the default as a gain.
MARGIN = 0.97


def _result(point, best, default):
    """The winner against the default choice, in alternation; the default stays unless
    the winner is clearly faster (:data:`MARGIN`)."""
    if best != default and default.describe() in point.timings:
        t_best, t_default = alternate(point, [best, default], rounds=7)
        if t_best > MARGIN * t_default:
            best = default
    return {"best": best, "timings": point.timings, "excluded": point.excluded,
            "default": default.describe()}


def tune_wait(dl, t=1, rounds=40):
    """How calls on ``dl``'s device should wait (:attr:`vkqlinear.Device.wait`): ``"block"``
    and ``"yield"`` timed end to end at ``t`` tokens in alternating rounds; returns
    ``(mode, {mode: median seconds})``. The device's mode is left as it was."""
    dev = dl.device
    before = dev.wait_setting
    x = quantize_per_token(np.random.default_rng(0).standard_normal(
        (t, dl.weights.K)).astype(np.float32))
    times = {"block": [], "yield": []}
    try:
        for mode in times:                    # record and warm
            dev.wait = mode
            dl.run("auto", *x)
        for i in range(rounds):
            for mode in (("block", "yield") if i % 2 else ("yield", "block")):
                dev.wait = mode
                if dev.wait != mode:          # a kp that cannot poll
                    return "block", {}
                t0 = time.perf_counter()
                dl.run("auto", *x)
                times[mode].append(time.perf_counter() - t0)
    finally:
        dev.wait = before
    med = {m: float(np.median(v)) for m, v in times.items()}
    return min(med, key=med.get), med


def _state_path():
    path = tuning.tuning_file()
    return path.with_name(path.name + ".progress")


def _load_state(path, plan):
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(state, dict) or state.get("plan") != plan:
        return {}
    return state.get("done", {})


def tune(shapes=None, tokens=None, group_sizes=(32, 128), budget_s=600.0,
         exhaustive=False, device=None, log=print, plot=None):
    """Tune every (shape, group size, T) point on ``device`` (default: the default
    device) and store the winners in the tuning file; returns the report (per point: the
    winner, every candidate's time, the excluded ones). ``budget_s`` is shared by the
    points; ``plot`` (a path) writes a PNG of what the search saw."""
    dev = device if isinstance(device, Device) else Device(device)
    shapes = list(shapes or QUICK_SHAPES)
    tokens = list(tokens or TOKENS)
    points = [(k, n, g, t) for k, n in shapes for g in group_sizes if k % g == 0
              for t in tokens]
    plan = {"device": tuning.device_key(dev.info), "points": [list(p) for p in points],
            "exhaustive": exhaustive}
    state_path = _state_path()
    done = _load_state(state_path, plan)
    rng = np.random.default_rng(0)
    report = {"device": dev.name, "exhaustive": exhaustive, "points": []}
    t0 = time.perf_counter()
    weights = {}
    for i, (k, n, g, t) in enumerate(points):
        key = tuning.point_key(k, n, g, False, t)
        if key in done:
            report["points"].append(done[key])
            continue
        left = max(1.0, budget_s - (time.perf_counter() - t0)) / (len(points) - i)
        qw = weights.get((k, n, g))
        if qw is None:
            weights.clear()
            qw = weights[(k, n, g)] = random_weights(rng, k, n, g)
        res = search_point(DeviceLinear.of(qw, dev), t, left, exhaustive, rng)
        best = res["best"]
        entry = {"key": key, "K": k, "N": n, "group_size": g, "T": t,
                 "config": kernel_config(best), "best": best.describe(),
                 "kernel_s": res["timings"][best.describe()], "default": res["default"],
                 "default_s": res["timings"].get(res["default"]),
                 "timings": res["timings"], "excluded": res["excluded"],
                 "candidates": len(res["timings"]) + len(res["excluded"])}
        tuning.store_configs(dev.info, {key: {"config": entry["config"],
                                              "kernel_s": entry["kernel_s"],
                                              "measured": time.strftime("%Y-%m-%d")}})
        done[key] = entry
        state_path.write_text(json.dumps({"plan": plan, "done": done}))
        report["points"].append(entry)
        if log:
            gain = (entry["default_s"] or entry["kernel_s"]) / entry["kernel_s"]
            log(f"[{i + 1}/{len(points)} {time.perf_counter() - t0:5.0f}s] {key}: "
                f"{entry['best']} {entry['kernel_s'] * 1e3:.3f} ms (default x{gain:.2f}; "
                f"{len(res['timings'])} timed, {len(res['excluded'])} excluded)")
    state_path.unlink(missing_ok=True)
    if points:                    # how calls wait, at the first shape's T = 1
        k, n, g, _ = points[0]
        qw = random_weights(rng, k, n, g)        # held: a DeviceLinear holds it weakly
        mode, med = tune_wait(DeviceLinear.of(qw, dev))
        tuning.store_wait(dev.info, mode)
        dev.wait = dev.wait_setting       # "auto" now follows the new measurement
        report["wait"] = {"chose": mode, "e2e_s": med}
        if log:
            log(f"calls wait: {mode} (end to end at T=1: " + ", ".join(
                f"{m} {v * 1e3:.3f} ms" for m, v in med.items()) + ")")
    report["seconds"] = time.perf_counter() - t0
    if plot:
        report["plot"] = plot_search(report, plot)
    return report


def plot_search(report, path):
    """A PNG of what the search saw: every timed candidate's time per point, the winner
    and the default marked. ``None`` without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    pts = report["points"]
    fig, ax = plt.subplots(figsize=(max(6, len(pts) * 0.35), 5))
    for i, p in enumerate(pts):
        times = [v * 1e3 for v in p["timings"].values()]
        ax.scatter([i] * len(times), times, s=8, color="grey", alpha=0.5)
        ax.scatter([i], [p["kernel_s"] * 1e3], marker="*", s=80, color="red")
        if p.get("default_s"):
            ax.scatter([i], [p["default_s"] * 1e3], marker="x", s=40, color="blue")
    ax.set_yscale("log")
    ax.set_xticks(range(len(pts)))
    ax.set_xticklabels([p["key"] for p in pts], rotation=90, fontsize=6)
    ax.set_ylabel("kernel time (ms)")
    ax.set_title(f"tuning on {report['device']}: candidates (grey), winner (*), "
                 "default (x)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return str(path)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="python -m vkqlinear tune",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", help="KxN list (default the quick benchmark's: "
                                     "4096x4096,1536x384)")
    ap.add_argument("--tokens", help=f"T list (default {','.join(map(str, TOKENS))})")
    ap.add_argument("--group-sizes", default="32,128")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds in all (default 600)")
    ap.add_argument("--exhaustive", action="store_true", help="time every candidate")
    ap.add_argument("--device", type=int, default=None)
    ap.add_argument("--out", default="bench-results", help="directory for JSON and PNG")
    a = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in a.shapes.split(",")] \
        if a.shapes else None
    tokens = [int(v) for v in a.tokens.split(",")] if a.tokens else None
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = tune(shapes, tokens, [int(g) for g in a.group_sizes.split(",")], a.budget,
                  a.exhaustive, a.device, plot=out / f"tune-{stamp}.png")
    path = out / f"tune-{stamp}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"{len(report['points'])} points in {report['seconds']:.0f} s; stored in "
          f"{tuning.tuning_file()}; JSON: {path}; plot: {report.get('plot')}")
    bad = sum(len(p["excluded"]) for p in report["points"])
    if bad:
        print(f"{bad} candidate(s) were wrong and excluded (see the JSON): a bug",
              file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
