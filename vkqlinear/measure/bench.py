"""GEMM versus GEMV on a device: ``python -m vkqlinear bench`` (also ``bench/run.py``).

For each layer shape (K, N), group size and token count T it times the TILED and
COOPERATIVE kernels forced, and ``auto``:

* kernel time from Vulkan timestamps (converted with the device's timestamp period) and
  end-to-end call time (Python call to numpy result, weights prepacked), each as median and
  min of at least ``--runs`` runs (more where they fit ``--budget`` seconds a point), the
  kernels interleaved, after a warm-up of the device; every configuration is checked
  against the contract's tolerance before it is timed; the points take turns, each
  point's rounds spread over the whole sweep (:func:`take_turns`);
* ops/s counted as ``2*T*N*K``; effective bytes/s (what one call moves: packed weights,
  group data, activations, outputs); the fraction of the roofline, its binding limit:
  the fastest calibrated read of those bytes (storage or texel buffer, whichever the
  device reads faster; on a CPU device the host's memory bandwidth is reported beside it)
  or the calibrated multiply-add rate (two of the kernels' multiply-adds per int32 one),
  both measured in the same run (:mod:`vkqlinear.measure.calibrate`);
* the crossover T where TILED overtakes COOPERATIVE, and ``auto``'s regret (auto / best;
  where ``auto`` runs the very kernel of a forced algorithm, that kernel is timed once
  and ``same_as`` names it);
* baselines on the same shapes: numpy float32 matmul against the dequantized weights, the
  CPU int8 reference path, and PyTorch's dynamic int8 ``Linear`` when torch is installed.

Writes a table (stdout), a JSON file with every figure and the device, driver, library and
commit, and a PNG plot when matplotlib is installed. ``--tune`` first runs the tuner
(:mod:`vkqlinear.measure.tuner`) on the sweep's points, so that ``auto`` measures with the tuned
kernels, and stores the measured crossover as the fallback ``auto`` threshold.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .. import __version__, args, conformance, ops
from .._cli import parser
from ..device import WAITS, Device
from ..device_linear import DeviceLinear
from ..kernels import KERNEL_ALGORITHMS, kernel_config
from ..layout import call_bytes
from ..quant import dequantize_per_token, dequantize_weights, quantize_per_token, quantize_weights
from ..tuning import store_threshold
from ..weights import QuantizedWeights, prepack
from .calibrate import (
    SWAR_MACS_PER_MADD,
    fastest_alu,
    fastest_read,
    host_read_bandwidth,
    read_kernel,
)
from .common import (
    SHAPE_SETS,
    TOKENS,
    git_commit,
    int_list,
    provenance,
    pyplot,
    shape_list,
    stats,
    time_host,
    torch_linear,
)
from .model_bench import MODELS, run_model
from .tuner import check_points, keeping_calls_of, tune

KERNELS = KERNEL_ALGORITHMS + ("auto",)


def device_kernels(dev):
    """The kernel algorithms ``dev`` runs (those with a variant that passed its
    self-check), and ``"auto"``: what a point times."""
    return tuple(a for a in KERNEL_ALGORITHMS if dev.caps.variants(a)) + ("auto",)


def forced(kernels):
    """The forced algorithms a point's ``kernels`` (its dict) timed, in table order."""
    return [a for a in KERNEL_ALGORITHMS if a in kernels]


class Progress:
    def __init__(self, total):
        self.total, self.done, self.t0 = total, 0, time.time()

    def step(self, label):
        self.done += 1
        w = 30
        filled = int(w * self.done / self.total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (w - filled)}] {self.done}/{self.total} "
                         f"{time.time() - self.t0:5.0f}s {label[:50]:50s}")
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


def runs_for(rep_s, runs, budget_s):
    """Timed runs at a point whose one round (every kernel, timed and end to end) takes
    ``rep_s``: at least ``runs``, more while they fit in ``budget_s`` (at most 8x). lavapipe
    on a shared host has slow spells (about 1 call in 5 at 1.5x to 2x), so a median needs
    more than a handful of runs."""
    return max(runs, min(8 * runs, int(budget_s / max(rep_s, 1e-6))))


def warm_up(cal, seconds=1.0):
    """Keeps the device busy with calibration kernel ``cal`` for ``seconds`` before
    anything is timed: the first few hundred milliseconds of lavapipe work in a process
    run slower."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        cal.time(4)


def _inputs(qw, t, rng):
    x = rng.standard_normal((t, qw.K)).astype(np.float32)
    return quantize_per_token(x)


class PointTimer:
    """One point of the sweep: checked, warmed and sized when made, then timed a round
    at a time (:meth:`round`), its figures by :meth:`finish`. It runs :data:`CALLS`
    recorded calls on ``qw``'s layer (each kernel timed and plain): points that take turns
    on a layer keep theirs (:func:`vkqlinear.tuner.keeping_calls_of`).

    A round times every kernel once (device timestamps, after an untimed run) and end to
    end; ``calibrations`` (``{name: Calibration}``) are timed in every round too (the
    median of 3 warm dispatches each), so that the headline ratios can be taken round by
    round. ``symmetric`` (``qw.symmetric()``): its auto kernel is checked
    and timed in every round too (``point["symmetric"]``). ``rounds`` is how many the
    point wants: at least ``runs``, more while they fit ``budget_s`` seconds."""

    CALLS = 2 * len(KERNELS)

    def __init__(self, dev, qw, t, runs, rng, budget_s=2.0, calibrations=None,
                 symmetric=None):
        self.calibrations = calibrations = calibrations or {}
        k, n, g = qw.K, qw.N, qw.group_size
        self.qw, self.t, self.dev = qw, t, dev
        self.x = x_q, x_scale, x_zp = _inputs(qw, t, rng)
        self.x2d = args.activations(x_q, x_scale, x_zp)[:3]
        self.dl = dl = DeviceLinear.of(qw, dev)
        d = dict(x_q=x_q, x_scale=x_scale, x_zero_point=x_zp, w_packed=qw.w_packed,
                 group_size=g, w_scales=qw.w_scales, w_zeros=qw.w_zeros, w_offsets=None,
                 bias=None)
        self.point = point = {
            "T": t, "K": k, "N": n, "group_size": g, "kernels": {},
            "bytes": call_bytes(qw, t, dl.kernel("auto", t).layout),
            "calibration_runs": {c: [] for c in calibrations},
            "calibration_work": {c: cal.work for c, cal in calibrations.items()}}
        self.kernels = device_kernels(dev)
        for alg in self.kernels:   # correctness first, and the warm-up
            out, _ = dl.run(alg, *self.x2d, timed=True)
            ok, msg = conformance.check(out, d)
            if not ok:
                raise AssertionError(f"{alg} at T={t} K={k} N={n} g={g} is wrong: {msg}")
            point["kernels"][alg] = {"check": msg, "runs_kernel": [], "runs_e2e": []}
        self.sym, self.symmetric = None, symmetric    # (the layer holds its weights weakly)
        if symmetric is not None:
            self.sym = DeviceLinear.of(symmetric, dev)
            out, _ = self.sym.run("auto", *self.x2d, timed=True)
            ok, msg = conformance.check(out, dict(d, w_scales=symmetric.w_scales,
                                                  w_zeros=symmetric.w_zeros))
            if not ok:
                raise AssertionError(f"auto on symmetric weights at T={t} K={k} N={n} "
                                     f"g={g} is wrong: {msg}")
            point["symmetric"] = {"check": msg, "runs_kernel": [],
                                  "bytes": call_bytes(symmetric, t,
                                                      self.sym.kernel("auto", t).layout)}
        for alg in self.kernels:   # the plain calls' first run records their sequences
            self._e2e(alg)
        t0 = time.perf_counter()
        for alg in self.kernels:
            self._e2e(alg)
        rep_s = 3 * (time.perf_counter() - t0)
        if calibrations:      # the headline points: twice the runs
            runs, budget_s = 2 * runs, 2 * budget_s
        self.rounds = point["runs"] = runs_for(rep_s, runs, budget_s)
        self.done, self.round_s = 0, rep_s
        # auto running the very kernel of a forced algorithm is that kernel: timed once,
        # its runs are auto's too (timing it twice would report the host's noise as regret)
        self.same = next((a for a in self.kernels[:-1]
                          if dl.kernel("auto", t) == dl.kernel(a, t)), None)
        turns = tuple(a for a in self.kernels if a != "auto" or self.same is None)
        self.turns = turns + (("symmetric",) if symmetric is not None else ())

    def _e2e(self, alg):
        return ops.linear_qta8a_qga4w(*self.x, self.qw, algorithm=alg, device=self.dev)

    def round(self):
        """One round: the kernels interleaved, so that drifts of the (shared) host hit all
        of them alike, in an order rotated each round, so that a slow spell that starts
        mid-round does not always fall on the same kernel; the symmetric twin takes its
        turn too (it times no end-to-end call)."""
        point = self.point
        t_round = time.perf_counter()
        i = self.done % len(self.turns)
        for alg in self.turns[i:] + self.turns[:i]:
            # once untimed first: the kernels (and the points before) read other weights,
            # and a kernel that followed them would find its own out of the host's caches
            # (the timestamps of the call that ran: a layer keeps a few recorded calls,
            # and one dropped while other points ran is recorded anew)
            if alg == "symmetric":
                self.sym.run("auto", *self.x2d, timed=True)
                call = self.sym.run("auto", *self.x2d, timed=True)[1]
                point["symmetric"]["runs_kernel"].append(call.kernel_seconds())
                continue
            self.dl.run(alg, *self.x2d, timed=True)
            call = self.dl.run(alg, *self.x2d, timed=True)[1]
            point["kernels"][alg]["runs_kernel"].append(call.kernel_seconds())
            t0 = time.perf_counter()
            self._e2e(alg)
            point["kernels"][alg]["runs_e2e"].append(time.perf_counter() - t0)
        for c, cal in self.calibrations.items():
            point["calibration_runs"][c].append(cal.time(3).median)
        self.done += 1
        self.round_s = time.perf_counter() - t_round

    def regrets(self):
        """auto's time over the faster forced kernel's (by median so far), round by round;
        ``None`` where auto is a forced kernel (its regret is 1 by identity)."""
        return None if self.same is not None else auto_over_best(self.point["kernels"])[1]

    def finish(self):
        """The point's figures from its rounds."""
        point, t = self.point, self.t
        if self.same is not None:
            point["kernels"]["auto"].update(same_as=self.same, **{
                r: point["kernels"][self.same][r] for r in ("runs_kernel", "runs_e2e")})
        for alg in self.kernels:
            v = point["kernels"][alg]
            v["kernel_s"], v["e2e_s"] = stats(v["runs_kernel"]), stats(v["runs_e2e"])
            v["ops_per_s"] = 2 * t * self.qw.N * self.qw.K / v["kernel_s"]["median"]
            v["bytes_per_s"] = point["bytes"] / v["kernel_s"]["median"]
            chosen = self.dl.kernel(alg, t)
            v["chose"], v["config"] = chosen.describe(), kernel_config(chosen)
        if self.sym is not None:
            point["symmetric"]["kernel_s"] = stats(point["symmetric"]["runs_kernel"])
        return point


def point_bytes(qw, t):
    """About the device bytes a point of ``qw`` at ``t`` tokens holds while points take
    turns: its recorded calls' int8 activations and float outputs, and at ``t = 1`` its
    symmetric twin's weights."""
    return PointTimer.CALLS * t * (qw.K + 4 * qw.N) + (call_bytes(qw, 1) if t == 1 else 0)


def turn_groups(items, need, room):
    """``items`` in order, cut into groups whose ``need(item)`` add up to at most
    ``room`` (an item needing more than that is a group of its own)."""
    groups, total = [], 0
    for item in items:
        n = need(item)
        if not groups or total + n > room:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += n
    return groups


def take_turns(timers, step=None):
    """The rounds of every timer, the timers taking turns: in pass ``j`` of ``P`` (the
    most rounds any timer wants), a timer wanting ``r`` rounds runs until it has done
    ``r (j + 1) // P``, so that each point's rounds spread evenly over the whole sweep.
    A shared host can change state for seconds at a time, and a point timed in a few
    contiguous seconds measured one state: its ratios (auto's regret) drew a lottery.
    ``step(j, P)`` is called after each pass. The caller keeps the timers' recorded calls
    (:func:`vkqlinear.tuner.keeping_calls_of`)."""
    passes = max((tm.rounds for tm in timers), default=0)
    for j in range(passes):
        for tm in timers:
            while tm.done < tm.rounds * (j + 1) // passes:
                tm.round()
        if step:
            step(j, passes)


RESOLVE_WITHIN = 1.05     # the regret whose side the extra rounds decide


def median_regret(timer):
    """The median of ``timer``'s regrets so far (1 where auto is a forced kernel)."""
    r = timer.regrets()
    return 1.0 if r is None or len(r) == 0 else float(np.median(r))


def undecided(timer, within=RESOLVE_WITHIN):
    """Whether the 95% interval of ``timer``'s median regret holds ``within`` (from below
    it or at it, to above it): its rounds cannot tell which side of ``within`` it is on."""
    r = timer.regrets()
    if r is None or len(r) == 0:
        return False
    lo, hi = median_interval(r)
    return lo <= within < hi


def resolve(timers, budget_s, within=RESOLVE_WITHIN, step=None, clock=time.perf_counter):
    """More rounds where auto's regret is undecided, within ``budget_s`` seconds: the points
    where auto looks slower than the best forced kernel (median regret above 1) and
    :func:`undecided` are chosen once, the highest median first; in each pass every chosen
    point still undecided runs one round, until none is or the next round would not fit
    the budget. A point stays chosen when its median falls to 1 or below on the way (to
    stop there would be to sample until the answer looks good). A long kernel gets the
    fewest rounds from the sweep (7 at about a second each), and the interval of 7
    spans their extremes: a regret of 1.09 there is not a measurement. The rounds are
    added, not replaced: a point's figures are the median of them all. ``step(pass,
    points)`` is called after each pass. Returns the rounds added."""
    chosen = sorted((tm for tm in timers if median_regret(tm) > 1.0 and undecided(tm, within)),
                    key=median_regret, reverse=True)
    end, added, passes = clock() + budget_s, 0, 0
    while True:
        todo = [tm for tm in chosen if undecided(tm, within)]
        ran = 0
        for tm in todo:
            if clock() + tm.round_s > end:
                continue
            tm.round()
            tm.rounds = tm.point["runs"] = tm.done
            tm.point["extra_rounds"] = tm.point.get("extra_rounds", 0) + 1
            ran += 1
        added += ran
        if not ran:
            return added
        passes += 1
        if step:
            step(passes, len(todo))


def measure_baselines(qw, point, rng):
    """CPU baselines at one point. Run after all device timings: their worker threads
    (BLAS, OpenMP) may keep spinning for a while and would slow lavapipe's threads."""
    k, n, g, t, r = qw.K, qw.N, qw.group_size, point["T"], min(point["runs"], 15)
    x_q, x_scale, x_zp = _inputs(qw, t, rng)
    w_deq = dequantize_weights(qw.w_packed, g, qw.w_scales, qw.w_offsets)
    xf = dequantize_per_token(x_q, x_scale, x_zp)
    out = {"numpy_float32": time_host(lambda: xf @ w_deq.T, r),
           "reference_int8": time_host(lambda: ops.linear_qta8a_qga4w(
               x_q, x_scale, x_zp, qw, algorithm="reference"), r)}
    qlin = torch_linear(k, n, w_deq, dynamic_int8=True)
    if qlin is not None:
        import torch
        xt = torch.from_numpy(xf)
        with torch.no_grad():
            out["torch_dynamic_int8"] = time_host(lambda: qlin(xt), r)
    point["baselines"] = out


def median_interval(xs, level=0.95):
    """A distribution-free interval for the median of the population ``xs`` is drawn from:
    the order statistics ``x_(j)``, ``x_(n+1-j)`` with the largest ``j`` whose binomial
    tails, ``P(Bin(n, 1/2) < j)`` each, leave at least ``level`` between them; the whole
    range where ``n`` is too small for ``level`` (fewer than 6 values at 0.95)."""
    x = sorted(xs)
    n = len(x)
    tail, j = 0.0, 0
    while j < n // 2:
        p = math.comb(n, j) / 2.0 ** n
        if tail + p > (1 - level) / 2:
            break
        tail, j = tail + p, j + 1
    j = max(j, 1)
    return [float(x[j - 1]), float(x[n - j])]


def auto_over_best(kernels):
    """``(best, regrets)``: the forced algorithm with the lower median kernel time, and
    auto's kernel time over its, round by round (``kernels`` as in a point)."""
    best = min(forced(kernels), key=lambda a: np.median(kernels[a]["runs_kernel"]))
    return best, np.asarray(kernels["auto"]["runs_kernel"]) / np.asarray(
        kernels[best]["runs_kernel"])


def round_ratio(num, den):
    """Median over rounds of ``num[i] / den[i]``: the kernels (and calibrations) of one
    round ran back to back, so a slow spell of the host hits both sides of each ratio."""
    return float(np.median(np.asarray(num) / np.asarray(den)))


def calib_limits(calib, points, read_again, alu_again):
    """Raise ``calib``'s read and arithmetic rates to the fastest seen: the calibration
    before the sweep, ``read_again``/``alu_again`` (bytes and int32 multiply-adds a second,
    measured after it) and the in-round calibrations of ``points`` (reads of the same byte
    count only); the range of rates seen is kept in ``calib["seen"]``."""
    reads = [calib["read_bytes_per_s"], read_again]
    alus = [calib["alu_madd_per_s"], alu_again]
    for p in points:
        work = p.get("calibration_work", {})
        runs = p.get("calibration_runs", {})
        if abs(work.get("read", 0) - calib["read_bytes"]) < 16:   # the same bytes only
            reads += [work["read"] / t for t in runs.get("read", ())]
        alus += [work["alu"] / t for t in runs.get("alu", ())]
    calib["seen"] = {"read_bytes_per_s": [min(reads), max(reads)],
                     "alu_madd_per_s": [min(alus), max(alus)]}
    calib["read_bytes_per_s"] = max(reads)
    calib["alu_madd_per_s"] = max(alus)


def analyse(points, calib):
    """Roofline fraction, best kernel, ratios (auto's regret, cooperative / best,
    end-to-end / kernel, and against the in-round calibrations), baselines, crossovers.

    The roofline of a point is its binding limit: the time to read the bytes one call
    moves at the fastest calibrated read, or to do its ``T N K`` multiply-adds at the
    calibrated arithmetic rate (``SWAR_MACS_PER_MADD`` per int32 multiply-add), whichever
    is longer; the fraction is that time over the kernel's, and ``roofline_bound`` names
    the limit. ``read_plus_alu_fraction`` is the sum of both times over the kernel's: the
    bound where reads and arithmetic cannot overlap (above 1 where they do)."""
    bw = calib["read_bytes_per_s"]
    macs_per_s = calib["alu_madd_per_s"] * SWAR_MACS_PER_MADD
    for p in points:
        ks = p["kernels"]
        macs = p["T"] * p["N"] * p["K"]
        t_read, t_alu = p["bytes"] / bw, macs / macs_per_s
        for v in ks.values():
            t = v["kernel_s"]["median"]
            v["roofline_fraction"] = max(t_read, t_alu) / t
            v["roofline_bound"] = "read" if t_read >= t_alu else "arithmetic"
            # where the same cores both read and compute (a CPU device), the two limits
            # add up unless the loads hide under the arithmetic: near 1, neither does
            v["read_plus_alu_fraction"] = (t_read + t_alu) / t
        best, regrets = auto_over_best(ks)
        p["best"] = best
        rk = ks[best]["runs_kernel"]
        p["auto_regret"] = float(np.median(regrets))
        # how far a median of this point's rounds can be trusted on a host whose state
        # changes: a few rounds of a long kernel give a wide interval
        p["auto_regret_interval"] = median_interval(regrets)
        p["coop_over_best"] = round_ratio(ks["cooperative"]["runs_kernel"], rk)
        p["e2e_over_kernel"] = round_ratio(ks[best]["runs_e2e"], rk)
        if "symmetric" in p:     # the same kernel on the same nibbles, no zero points
            p["symmetric_over_auto"] = round_ratio(p["symmetric"]["runs_kernel"],
                                                   ks["auto"]["runs_kernel"])
        cr = p.get("calibration_runs", {})
        if cr.get("read"):
            # the best kernel over the fastest read of the bytes it moves, per round
            reads = np.asarray(cr["read"]) * p["bytes"] / p["calibration_work"]["read"]
            p["best_over_read"] = round_ratio(rk, reads)
        if cr.get("alu"):
            # the best kernel's multiply-adds per second over the arithmetic limit, per round
            rate = SWAR_MACS_PER_MADD * p["calibration_work"]["alu"] / np.asarray(cr["alu"])
            p["alu_fraction"] = float(np.median(macs / np.asarray(rk) / rate))
        if "baselines" in p:
            e2e = min(ks[a]["e2e_s"]["median"] for a in forced(ks))
            p["speedup_vs"] = {b: v["median"] / e2e for b, v in p["baselines"].items()}
    crossovers = {}
    for key in sorted({(p["K"], p["N"], p["group_size"]) for p in points}):
        ps = sorted((p for p in points if (p["K"], p["N"], p["group_size"]) == key),
                    key=lambda p: p["T"])
        cross = next((p["T"] for p in ps if p["best"] != "cooperative"), None)
        crossovers[f"{key[0]}x{key[1]} g{key[2]}"] = cross
    return crossovers


def headline(points, calib):
    """The headline ratios, where this run measured the points they need (the project's
    targets for them live with its benchmark docs, not here).

    GEMV and GEMM are given twice: against the calibration taken once before the sweep,
    and round by round against the same calibration kernels timed within the point's
    rounds. The other ratios are medians over rounds."""
    def find(t, k, n, g):
        return next((p for p in points if (p["T"], p["K"], p["N"], p["group_size"])
                     == (t, k, n, g)), None)
    out = {}
    p1 = find(1, 4096, 4096, 32)
    if p1:
        best = p1["kernels"][p1["best"]]["kernel_s"]["median"]
        out["gemv_T1_over_read"] = best / (p1["bytes"] / calib["read_bytes_per_s"])
        if "best_over_read" in p1:
            out["gemv_T1_over_read_in_round"] = p1["best_over_read"]
        if calib.get("host_read_bytes_per_s"):
            out["gemv_T1_over_host_read"] = best / (p1["bytes"] /
                                                    calib["host_read_bytes_per_s"])
        out["gemv_T1_read_plus_alu_fraction"] = \
            p1["kernels"][p1["best"]]["read_plus_alu_fraction"]
        out["coop_T1_over_best"] = p1["coop_over_best"]
        out["e2e_T1_over_kernel"] = p1["e2e_over_kernel"]
        if "symmetric_over_auto" in p1:
            out["symmetric_T1_over_asymmetric"] = p1["symmetric_over_auto"]
    for t in (64, 512):     # the two GEMMs, where both ran
        p = find(t, 4096, 4096, 32)
        if p and {"shared", "tiled"} <= set(p["kernels"]):
            out[f"shared_over_tiled_T{t}"] = round_ratio(p["kernels"]["shared"]["runs_kernel"],
                                                         p["kernels"]["tiled"]["runs_kernel"])
    p512 = find(512, 4096, 4096, 32)
    if p512:
        best = p512["kernels"][p512["best"]]["kernel_s"]["median"]
        out["gemm_T512_alu_fraction"] = 4096 * 4096 * 512 / best / (
            SWAR_MACS_PER_MADD * calib["alu_madd_per_s"])
        if "alu_fraction" in p512:
            out["gemm_T512_alu_fraction_in_round"] = p512["alu_fraction"]
    if points:
        out["auto_regret_max"] = max(p["auto_regret"] for p in points)
    return out


def print_table(points, crossovers, calib, figures):
    host = calib.get("host_read_bytes_per_s")
    print(f"\ncalibration: fastest read {calib['read_bytes_per_s'] / 1e9:.2f} GB/s "
          f"({calib['read_how']}, over {calib['read_bytes'] / 2**20:.1f} MiB)"
          + (f", the host's memory {host / 1e9:.2f} GB/s" if host else "")
          + f"; int32 multiply-add {calib['alu_madd_per_s'] / 1e9:.2f} G/s "
          f"({SWAR_MACS_PER_MADD}x as the kernels' multiply-adds)")
    seen = calib.get("seen")
    if seen:
        r, m = seen["read_bytes_per_s"], seen["alu_madd_per_s"]
        print(f"(the fastest seen: reads ranged {r[0] / 1e9:.2f} to {r[1] / 1e9:.2f} GB/s, "
              f"multiply-adds {m[0] / 1e9:.2f} to {m[1] / 1e9:.2f} G/s in this run)")
    algs = [a for a in KERNELS if any(a in p["kernels"] for p in points)]
    hdr = (f"{'K x N':>12s} {'g':>4s} {'T':>4s} | "
           + " ".join(f"{a[:6] + ' ms':>9s}" for a in algs)
           + f" | {'best':>6s} {'GOPS':>7s} {'roof':>5s} {'regret':>6s} "
           f"{'e2e/k':>5s} | {'x np32':>6s} {'x ref':>6s} {'x torch':>7s}")
    print(hdr)
    print("-" * len(hdr))
    for p in points:
        ks = p["kernels"]
        b = ks[p["best"]]
        sp = p.get("speedup_vs", {})
        times = " ".join(f"{ks[a]['kernel_s']['median'] * 1e3:9.3f}" if a in ks else
                         f"{'-':>9s}" for a in algs)
        print(f"{p['K']:>5d}x{p['N']:<6d} {p['group_size']:4d} {p['T']:4d} | {times} | "
              f"{p['best'][:6]:>6s} {b['ops_per_s'] / 1e9:7.2f} "
              f"{b['roofline_fraction']:5.2f} {p['auto_regret']:6.2f} "
              f"{p['e2e_over_kernel']:5.2f} | "
              f"{sp.get('numpy_float32', float('nan')):6.2f} "
              f"{sp.get('reference_int8', float('nan')):6.2f} "
              f"{sp.get('torch_dynamic_int8', float('nan')):7.2f}")
    print("\ncrossover T (a GEMM overtakes the cooperative GEMV): " +
          ", ".join(f"{k}: {v}" for k, v in crossovers.items()))
    print("x np32 / x ref / x torch: baseline end-to-end time / best kernel end-to-end time")
    sym = [p for p in points if "symmetric_over_auto" in p]
    if sym:
        print("symmetric weights (no zero points), auto's time over the asymmetric "
              "layer's: " + ", ".join(f"{p['K']}x{p['N']} g{p['group_size']} T{p['T']} "
                                      f"{p['symmetric_over_auto']:.3f}" for p in sym))
    if points:
        worst = max(points, key=lambda p: p["auto_regret"])
        lo, hi = worst["auto_regret_interval"]
        print(f"auto's largest regret {worst['auto_regret']:.3f} at {worst['K']}x{worst['N']} "
              f"g{worst['group_size']} T{worst['T']}: the median of "
              f"{len(worst['kernels']['auto']['runs_kernel'])} rounds, 95% interval of the "
              f"median {lo:.3f} to {hi:.3f}")
        extra = [p for p in points if p.get("extra_rounds")]
        if extra:
            print("extra rounds where auto's regret was undecided: " + ", ".join(
                f"{p['K']}x{p['N']} g{p['group_size']} T{p['T']} +{p['extra_rounds']} "
                f"({p['auto_regret']:.3f}, {p['auto_regret_interval'][0]:.3f} to "
                f"{p['auto_regret_interval'][1]:.3f})" for p in extra))
    for k, v in figures.items():
        print(f"{k}: {v:.3f}")


def plot(points, crossovers, path):
    plt = pyplot()
    if plt is None:
        return None
    keys = sorted({(p["K"], p["N"], p["group_size"]) for p in points})
    fig, axes = plt.subplots(2, len(keys), figsize=(5 * len(keys), 8), squeeze=False)
    for j, key in enumerate(keys):
        ps = sorted((p for p in points if (p["K"], p["N"], p["group_size"]) == key),
                    key=lambda p: p["T"])
        ts = [p["T"] for p in ps]
        for alg, style in zip(KERNELS, ("-o", "-^", "-s", "--")):
            if alg not in ps[0]["kernels"]:
                continue
            axes[0][j].plot(ts, [p["kernels"][alg]["kernel_s"]["median"] * 1e3 for p in ps],
                            style, label=alg)
            axes[1][j].plot(ts, [p["kernels"][alg]["roofline_fraction"] for p in ps], style,
                            label=alg)
        cross = crossovers.get(f"{key[0]}x{key[1]} g{key[2]}")
        for ax in axes[:, j]:
            ax.set_xscale("log", base=2)
            if cross:
                ax.axvline(cross, color="grey", linestyle=":", label=f"crossover T={cross}")
            ax.legend(fontsize=8)
            ax.set_xlabel("T (tokens)")
        axes[0][j].set_yscale("log")
        axes[0][j].set_title(f"K={key[0]} N={key[1]} g={key[2]}")
        axes[0][j].set_ylabel("kernel time (ms)")
        axes[1][j].set_ylabel("fraction of roofline")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


DESCRIPTION = (
    "Times the kernels on a device: the TILED GEMM and the COOPERATIVE GEMV forced, and "
    "auto, over layer shapes, group sizes and token counts T = 1 ... 512, each point "
    "checked first; kernel time from device timestamps, end to end from Python. Prints a "
    "table (each point against its roofline: the calibrated read bandwidth and int32 "
    "multiply-add rate of the same run, and against CPU baselines) and writes JSON and a "
    "plot. --model runs the decoder benchmark instead.")
EXAMPLES = [("--quick", "4096x4096 and 1536x384, group sizes 32 and 128 (a few minutes)"),
            ("--shapes 4096x4096 --tokens 1,8,512 --no-baselines", "a few points only"),
            ("--tune --quick", "tune the device first, then benchmark auto with it"),
            ("--model llama-3.2-1b --big-layer", "every layer of a 1B decoder, resident")]


def _parser():
    ap = parser("bench", DESCRIPTION, EXAMPLES)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="shapes 'quick' (default), group sizes 32 and 128, at least 7 runs")
    mode.add_argument("--full", action="store_true",
                      help="llama-7b and minilm shapes, group sizes 32 and 128, at least 9 runs")
    ap.add_argument("--shapes", type=lambda s: shape_list(s, SHAPE_SETS),
                    help="KxN list or set names (quick, llama-7b, minilm)")
    ap.add_argument("--tokens", type=int_list,
                    help=f"T list (default {','.join(map(str, TOKENS))})")
    ap.add_argument("--group-sizes", type=int_list, help="group sizes (default 32,128)")
    ap.add_argument("--runs", type=int,
                    help="timed runs per point at least (more where they fit the budget)")
    ap.add_argument("--budget", type=float,
                    help="seconds of timed runs per point (default 2, --full 4)")
    ap.add_argument("--resolve", type=float, metavar="S",
                    help="seconds of extra rounds at the points where auto's regret is "
                         f"undecided against {RESOLVE_WITHIN} (default 60 x --budget)")
    ap.add_argument("--warm-up", type=float, default=1.0,
                    help="seconds of device work before calibrating (default 1)")
    ap.add_argument("--device", type=int, default=None, help="device index (see info)")
    ap.add_argument("--wait", choices=WAITS, default="auto",
                    help="how calls wait for the device (vkqlinear.Device's wait; default "
                         "auto: yield on a CPU device, block on a GPU)")
    ap.add_argument("--out", default="bench-results", help="directory for JSON and PNG")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--tune", action="store_true",
                    help="first tune this device on the sweep's shapes, tokens and group "
                         "sizes (vkqlinear.tuner; its budget: --tune-budget), then measure; "
                         "also store the measured crossover as the auto threshold")
    ap.add_argument("--tune-budget", type=float, default=600.0,
                    help="seconds for the tuner (default 600)")
    ap.add_argument("--model", choices=sorted(MODELS),
                    help="instead of the kernel sweep: every Linear of this decoder resident "
                         "on the device, decode (T=1) and prefill (T=128) throughput "
                         "(vkqlinear.model_bench)")
    ap.add_argument("--big-layer", action="store_true",
                    help="with --model: also time one layer larger than a binding "
                         "(4096 x 128256)")
    return ap


def main(argv=None):
    ap = _parser()
    a = ap.parse_args(argv)
    if a.model:
        return model_main(a)
    shapes, tokens, gsizes, runs, budget, resolve_s = _settings(ap, a)
    dev = Device(a.device, wait=a.wait)
    rng = np.random.default_rng(0)
    print(f"device {dev.index}: {dev.name} ({dev.info.driver_name} {dev.info.driver_info}); "
          f"vkqlinear {__version__} {git_commit()}; calls wait: {dev.wait}")
    read_bytes = _read_bytes(shapes, gsizes)
    if a.tune:                       # first: the calibration belongs with the sweep
        tuned = tune(shapes, tokens, gsizes, a.tune_budget, device=dev)
        print(f"tuned {len(tuned['points'])} points in {tuned['seconds']:.0f} s")
    calib, alu, read_cal = _calibrate(dev, read_bytes, a.warm_up)
    weights, points = _sweep(dev, shapes, tokens, gsizes, runs, budget, resolve_s, rng, alu,
                             read_cal)
    # The limits are the fastest the device (and the host) was seen to go: calibrated again
    # after the sweep, and the headline points' in-round calibrations count too (a
    # calibration of a fraction of a second can fall in one of the host's slow spells)
    alu_again, at_again = fastest_alu(dev)
    calib_limits(calib, points, fastest_read(dev, read_bytes, 20)[0],
                 alu_again.work / at_again.median)
    if "host_read_bytes_per_s" in calib:
        calib["host_read_bytes_per_s"] = max(calib["host_read_bytes_per_s"],
                                             host_read_bandwidth(read_bytes))
    if not a.no_baselines:
        prog = Progress(len(points))
        for p in points:
            prog.step(f"baselines K={p['K']} N={p['N']} g={p['group_size']} T={p['T']}")
            measure_baselines(weights[(p["K"], p["N"], p["group_size"])], p, rng)
    crossovers = analyse(points, calib)
    figures = headline(points, calib)
    print_table(points, crossovers, calib, figures)
    doc = _write_report(a.out, dev, calib, crossovers, figures, points)
    if a.tune:
        vals = [v for v in crossovers.values() if v is not None]
        # auto uses the cooperative kernel for T <= threshold: just below the crossover.
        threshold = int(np.median([v - 1 for v in vals])) if vals else max(tokens)
        path = store_threshold(dev.info, threshold, {"measured": doc["date"],
                                                     "crossovers": crossovers})
        print(f"tuned: auto threshold T <= {threshold} -> cooperative, stored in {path}")
    return 0


def _settings(ap, a):
    """``(shapes, tokens, group sizes, runs, budget, resolve seconds)`` from the command
    line and the defaults of ``--quick`` / ``--full``."""
    shapes = a.shapes or (
        SHAPE_SETS["llama-7b"] + SHAPE_SETS["minilm"] if a.full else SHAPE_SETS["quick"])
    tokens = a.tokens or TOKENS
    gsizes = a.group_sizes or [32, 128]
    try:
        check_points(shapes, gsizes)
    except ValueError as e:
        ap.error(str(e))
    # At least 7 rounds a point: auto and tiled replay one recorded sequence at most
    # points, and with 5 rounds the host's bursts (15% or more in 1 round in 5 to 10 here)
    # took the median of their ratio past 1.1 at single points.
    runs = a.runs or (9 if a.full else 7)
    budget = a.budget if a.budget is not None else (4.0 if a.full else 2.0)
    resolve_s = a.resolve if a.resolve is not None else 60 * budget
    for name, v in (("--budget", budget), ("--resolve", resolve_s)):
        if v < 0:
            ap.error(f"{name} is seconds, at least 0 (got {v})")
    return shapes, tokens, gsizes, runs, budget, resolve_s


def _read_bytes(shapes, gsizes):
    """The bytes the read calibration covers: what one call moves at the headline point
    (4096 x 4096, g = 32, T = 1) when it is in the sweep, else at the biggest layer's
    T = 1."""
    k0, n0 = (4096, 4096) if (4096, 4096) in shapes else max(shapes, key=lambda s: s[0] * s[1])
    g0 = 32 if k0 % 32 == 0 else gsizes[0]
    # integer zero points and float32 scales (not float16 values), as the sweep's weights
    # (quantize_weights) have them
    scales = np.full((n0, k0 // g0), 1.1, np.float32)
    return call_bytes(QuantizedWeights(np.zeros((n0, k0 // 2), np.uint8), g0, scales,
                                       -scales.astype(np.float64)), 1)


def _calibrate(dev, read_bytes, warm_up_s):
    """The device's read and arithmetic rates before the sweep: ``(calibration record,
    the fastest arithmetic kernel, read kernels by byte count)``."""
    warm_up(read_kernel(dev, read_bytes), warm_up_s)
    bw, how = fastest_read(dev, read_bytes, 20)
    # read calibration kernels of the fastest kind, by byte count, made once
    read_cal = functools.cache(
        lambda nbytes: read_kernel(dev, nbytes, texel=how == "texel buffer"))
    alu, at = fastest_alu(dev)
    calib = {"read_bytes": read_bytes, "read_how": how, "read_bytes_per_s": bw,
             "alu_s": {"median": at.median, "min": at.min},
             "alu_madd_per_s": alu.work / at.median}
    if dev.info.type == "cpu":       # the physical limit under a CPU device
        calib["host_read_bytes_per_s"] = host_read_bandwidth(read_bytes)
    return calib, alu, read_cal


def _sweep(dev, shapes, tokens, gsizes, runs, budget, resolve_s, rng, alu, read_cal):
    """Every point timed, in turns: ``({(K, N, g): weights}, [point records])``."""
    configs = [(k, n, g) for k, n in shapes for g in gsizes if k % g == 0]
    weights = {}
    for k, n, g in configs:      # every layer stays resident: the points take turns
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        w_packed, w_scales, w_zeros = quantize_weights(w, g)
        weights[(k, n, g)] = prepack(w_packed, g, w_scales, w_zeros, device=dev)
    # the points take turns in groups whose recorded calls fit half the device memory
    # left (the rest for the kernels' other weight layouts)
    room = max(0, dev.memory_budget - dev.memory_used()) // 2
    groups = turn_groups([(qw, t) for qw in weights.values() for t in tokens],
                         lambda s: point_bytes(*s), room)
    points = []
    for i, group in enumerate(groups):
        of = f" (group {i + 1} of {len(groups)})" if len(groups) > 1 else ""
        prog = Progress(len(group))
        timers = []
        with keeping_calls_of((DeviceLinear.of(qw, dev), PointTimer.CALLS) for qw, _ in group):
            for qw, t in group:
                prog.step(f"checking K={qw.K} N={qw.N} g={qw.group_size} T={t}{of}")
                # the headline calibrations, timed again in each round of their points
                cals = {"read": read_cal(call_bytes(qw, 1))} if t == 1 else \
                    {"alu": alu} if t == 512 else {}
                timers.append(PointTimer(dev, qw, t, runs, rng, budget, cals,
                                         qw.symmetric() if t == 1 else None))
            prog = Progress(max(tm.rounds for tm in timers))
            label = f"rounds of {len(timers)} points{of}"
            take_turns(timers, lambda j, n, prog=prog, label=label: prog.step(label))
            share = resolve_s * len(group) / sum(map(len, groups))
            t0 = time.perf_counter()
            added = resolve(timers, share, step=lambda j, n, t0=t0, s=share: sys.stderr.write(
                f"\rextra rounds: pass {j}, {n} points undecided, "
                f"{time.perf_counter() - t0:4.0f}s of {s:.0f}s   "))
            if added:
                sys.stderr.write("\n")
        points += [tm.finish() for tm in timers]
    return weights, points


def _write_report(out_dir, dev, calib, crossovers, figures, points):
    """The sweep's JSON and plot in ``out_dir``; returns the JSON document."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc = {**provenance(),
           "device": {"index": dev.index, "name": dev.name, "type": dev.info.type,
                      "driver": f"{dev.info.driver_name} {dev.info.driver_info}",
                      "api_version": dev.info.api_version, "wait": dev.wait},
           "calibration": calib, "crossovers": crossovers, "headline": figures,
           "points": points}
    jpath = out / f"bench-{stamp}.json"
    jpath.write_text(json.dumps(doc, indent=1))
    print(f"\nJSON: {jpath}")
    ppath = plot(points, crossovers, out / f"bench-{stamp}.png")
    print(f"plot: {ppath}" if ppath else "plot: skipped (pip install matplotlib)")
    return doc


def model_main(a):
    """``bench --model``: the decoder benchmark, its report as JSON beside the sweep's."""
    dev = Device(a.device, wait=a.wait)
    print(f"device {dev.index}: {dev.name} ({dev.info.driver_name} {dev.info.driver_info}); "
          f"vkqlinear {__version__} {git_commit()}; calls wait: {dev.wait}")
    report = run_model(dev, a.model, baselines=not a.no_baselines, big_layer=a.big_layer)
    report.update(provenance())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"model-{a.model}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
