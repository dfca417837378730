"""The tuner: find the fastest kernel configuration for each layer shape and token bucket
on the device in front of it, and store it for ``algorithm="auto"`` (:mod:`vkqlinear.tuning`).

``python -m vkqlinear tune [--shapes KxN,...] [--tokens ...] [--group-sizes ...]
[--outputs float,int8] [--budget S] [--exhaustive] [--device N]``, or :func:`tune` from
Python.

For each point (K, N, group size, output kind, T) the search space is every kernel the
device can run (:func:`vkqlinear.kernels.candidates`: both algorithms, every variant,
tokens per invocation, the workgroup's other axis). Every candidate is first checked against the
contract's tolerance on the point's inputs; a wrong one is excluded and reported (a bug to
fix). The search runs successive halving (:func:`halving`: every candidate a few runs, in
alternation, then the fastest third with three times the runs, and so on) until one is left
or the point's share of the time budget is spent; where a first round over every candidate
would not fit the share, it narrows the pool first, one axis at a time, timing one
representative of each variant, then of each tile of the best three variants, and halves
over the workgroup shapes of the best three tiles only. A candidate's time is the
median of its runs (:func:`statistic`). Where a run of the layer is long (large T), the
search times a proxy layer with fewer output channels instead (:func:`proxy_channels`);
either way the search's fastest few (:data:`CONFIRM`) are then timed against the default
on the layer itself, in alternation, and the fastest of them replaces the default only when
clearly faster.
``exhaustive=True`` times every candidate on the layer instead, the yardstick of the
search. After the last point, every tuned choice is timed against its default once more
(:func:`recheck`) and kept only if still clearly faster.

Progress is written to a state file beside the tuning file after every point, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from .. import conformance, policy, tuning
from .._cli import parser
from ..device import Device
from ..device_linear import DeviceLinear
from ..kernels import (
    KERNEL_ALGORITHMS,
    KERNEL_GENERATION,
    candidates,
    choose_kernel,
    kernel_config,
    kernel_from_config,
)
from ..layout import padded_channels
from ..quant import quantize_per_token
from .common import (
    OUTPUTS,
    QUICK_SHAPES,
    TOKENS,
    int_list,
    output_list,
    provenance,
    pyplot,
    shape_list,
)
from .model_bench import random_weights

__all__ = ["tune", "search_point", "alternate", "compare", "Trials", "check_points"]

KEEP_VARIANTS = 3        # (algorithm, variant) pairs that reach successive halving
KEEP_TILES = 3           # of their (tokens, channel blocks) per invocation, where too many
VISIT_RUNS = 3           # timed runs a visit to a candidate, after VISIT_WARM untimed
VISIT_WARM = 1           # (none where a run is long: one run is its own warm-up)
CONFIRM = 3              # the search's fastest, timed again on the layer against the default
KEEP_CALLS_BYTES = 512 << 20   # device memory the recorded calls of a search may hold
FIRST_ROUND_VISITS = 2   # at most this many visits a candidate in halving's first round
EXHAUSTIVE_ROUNDS = 5    # visits a candidate of the exhaustive search, in alternation
# A point whose default kernel runs longer than this is searched on a proxy layer of fewer
# output channels (at least PROXY_MIN_N), sized to run about this long: at T = 512 a 4096 x
# 4096 layer takes 0.5 s a run on lavapipe, and a budget of seconds would time a few
# candidates once each.
PROXY_RUN_S = 0.02
PROXY_MIN_N = 512


class Trials:
    """The trials of kernels at one tuning point: its inputs, its expected result, and what
    the search learnt so far (timings by :class:`~vkqlinear.kernels.Kernel`)."""

    def __init__(self, dl, t, rng, out_int8=False):
        self.dl, self.t = dl, t
        w = dl.weights
        x = quantize_per_token(rng.standard_normal((t, w.K)).astype(np.float32))
        self.spec = dict(x_q=x[0], x_scale=x[1], x_zero_point=x[2],
                         w_packed=w.w_packed, group_size=w.group_size, w_scales=w.w_scales,
                         w_offsets=w.w_offsets64, bias=None)
        self.expect = conformance.expected(self.spec)       # once: float64 at T x N x K
        self.x = x
        if out_int8:
            out_q = conformance.covering_qparams(self.expect[0])
            self.spec["out_scale"], self.spec["out_zero_point"] = out_q
            self.x = x + (None,) + out_q
        self.timings, self.samples = {}, {}
        self.excluded, self.right, self.wrong = {}, set(), set()
        self.warm = VISIT_WARM     # untimed runs a visit (:func:`visit_warm`)
        self.check_walls = []      # wall seconds of each check: a pipeline built, one run

    def check(self, kernel):
        """Run ``kernel`` once and check it against the contract (once per kernel): whether
        it is right; a wrong one is excluded, with why."""
        if kernel in self.right:
            return True
        if kernel in self.wrong:
            return False
        wall = time.perf_counter()
        try:
            out, _ = self.dl.run(kernel, *self.x, timed=True)   # the call visits time
            ok, msg = conformance.check(out, self.spec, self.expect)
        except (ValueError, RuntimeError) as e:
            ok, msg = False, f"{type(e).__name__}: {e}"
        self.check_walls.append(time.perf_counter() - wall)
        if not ok:
            self.excluded[kernel] = msg
            self.wrong.add(kernel)
            return False
        self.right.add(kernel)
        return True

    def check_wall(self, otherwise):
        """Wall seconds a check has taken on average (``otherwise`` before the first):
        building a kernel's pipeline can cost more than many runs of it."""
        return float(np.mean(self.check_walls)) if self.check_walls else otherwise

    def time(self, kernel, runs):
        """A visit to ``kernel`` (:meth:`visit`); returns its timing: :func:`statistic` of
        all its timed runs so far (``None`` if it is wrong)."""
        if self.visit(kernel, runs) is None:
            return None
        return self.timings[kernel]

    def visit(self, kernel, runs):
        """:attr:`warm` untimed runs of ``kernel``, then ``runs`` timed ones (checked
        first: ``None``, and excluded, if it is wrong); updates its timing and returns
        this visit's own :func:`statistic`. The untimed run warms the very call the timed
        ones use (the search keeps every candidate's call:
        :meth:`~vkqlinear.DeviceLinear.keeping_calls`)."""
        if not self.check(kernel):
            return None
        samples = self.samples.setdefault(kernel, [])
        for _ in range(self.warm):
            self.dl.run(kernel, *self.x, timed=True)
        for _ in range(runs):
            _, call = self.dl.run(kernel, *self.x, timed=True)
            samples.append(call.kernel_seconds())
        self.timings[kernel] = statistic(samples)
        return statistic(samples[-runs:])


def statistic(samples):
    """A kernel's time from its timed runs: their median (on a CPU device it ranked the
    candidates more consistently between two halves of the same runs than the minimum)."""
    return float(np.median(samples))


def proxy_channels(n, run_s):
    """Output channels of the proxy layer a point's search times instead of its own (the
    same K, group size and T; kernel time grows with N), or ``None`` when a run of the
    real layer (``run_s`` seconds) is short enough to search on it."""
    if run_s <= PROXY_RUN_S:
        return None
    m = max(PROXY_MIN_N, -(-int(n * PROXY_RUN_S / run_s) // 256) * 256)
    return m if m < n else None


def search_point(dl, t, budget_s, exhaustive=False, rng=None, out_int8=False,
                 exhaustive_rounds=EXHAUSTIVE_ROUNDS):
    """Search the kernels for ``dl``'s layer at ``t`` tokens, float or int8 output (see
    the module doc): ``{"best": Kernel, "kernel_s", "default": describe, "default_s",
    "ratio", "timings": {describe: seconds}, "excluded": {describe: why}, "proxy_n",
    "spilling": {Kernel: why}}`` (``spilling``: candidates dropped untimed because the
    driver's pipeline statistics say they spill registers)
    (``ratio``: best / default in the final comparison, :func:`compare`, which decides;
    ``kernel_s`` and ``default_s`` are medians over all of a kernel's runs in the search,
    visited in different host states, so they can disagree with ``ratio``). Every
    candidate is checked before it is timed. Where a run of the layer is long
    (:data:`PROXY_RUN_S`) the search times a proxy layer of ``proxy_n`` channels (its
    timings are those), and only its finalists and the default are timed on the layer.
    ``exhaustive`` visits every candidate ``exhaustive_rounds`` times, in alternation."""
    rng = rng or np.random.default_rng(0)
    point = Trials(dl, t, rng, out_int8)
    caps = dl.device.caps
    cands = []
    for alg in KERNEL_ALGORITHMS:
        cands += candidates(alg, t, dl.kernel_group_size, out_int8, caps, dl.N)
    default = default_kernel(dl, t, out_int8)
    units = policy.parallel_units(dl.device.info)
    cands = [k for k in cands if k == default or balanced(k, t, dl.weights.N, units)]
    # where the driver reports registers, candidates that spill are dropped untimed
    spilling = spilling_kernels(dl.device, [k for k in cands if k != default])
    cands = [k for k in cands if k not in spilling]
    # every candidate's recorded call kept, memory allowing: one made anew is slow in its
    # first runs
    calls = len(cands) + 2
    with ExitStack() as keep:
        keep.enter_context(dl.keeping_calls(keep_calls(calls, t, dl.weights.K, dl.weights.N)))
        start = time.perf_counter()
        # the default sizes the visits; a wrong default (a bug, reported) is replaced
        ref = next((k for k in [default] + cands if point.check(k)), None)
        if ref is None:
            raise RuntimeError(f"no candidate kernel computes {dl.weights.K} x "
                               f"{dl.weights.N} at T={t} right: "
                               + "; ".join(f"{k.describe()}: {v}"
                                           for k, v in point.excluded.items()))
        layer_s = point.time(ref, 1)
        point.warm = visit_warm(layer_s)
        if exhaustive:
            alternate(point, cands, exhaustive_rounds, visit_runs(layer_s))
            best = min((k for k in cands + [default] if k in point.timings),
                       key=lambda k: point.timings[k])
            return dict(_result(point, [best], default, point, None, ref),
                        spilling=spilling)
        search, proxy_n = point, proxy_channels(dl.weights.N, layer_s)
        if proxy_n:
            w = dl.weights
            proxy = random_weights(rng, w.K, proxy_n, w.group_size)
            search = Trials(DeviceLinear.of(proxy, dl.device), t, rng, out_int8)
            search.weights = proxy                 # held: a DeviceLinear holds it weakly
            keep.enter_context(search.dl.keeping_calls(keep_calls(calls, t, w.K, proxy_n)))
            search.warm = visit_warm(search.time(ref, 1) or layer_s)
        runs = visit_runs(search.timings.get(ref, layer_s))
        wall = time.perf_counter()
        search.time(ref, runs)
        visit_wall = time.perf_counter() - wall       # with the submissions and waits
        # the final comparison on the layer, with as many finalists as half the share allows
        build_s = max(0.0, point.check_wall(layer_s) - layer_s)
        confirm = next((n for n in range(CONFIRM, 1, -1)
                        if final_cost(layer_s, n + 1, build_s) <= budget_s / 2), 1)
        spend = budget_s - (time.perf_counter() - start) - final_cost(layer_s, confirm + 1,
                                                                      build_s)
        ranked = halving(search, cands, default, runs, visit_wall, time.perf_counter() + spend)
        return dict(_result(point, ranked[:confirm], default, search, proxy_n, ref),
                    spilling=spilling)


_spill_memo = {}   # (device key, Kernel) -> why it spills, or ""


def spilling_kernels(device, kernels):
    """``{describe: why}`` of the ``kernels`` that spill registers on ``device``, as its
    driver's pipeline statistics say (:mod:`.shader_stats`); ``{}`` where the driver
    reports none (lavapipe). Each configuration is compiled once a process."""
    if "VK_KHR_pipeline_executable_properties" not in device.info.extensions or not kernels:
        return {}
    from .shader_stats import spill_reasons
    dkey = tuning.device_key(device.info)
    todo = [k for k in kernels if (dkey, k) not in _spill_memo]
    if todo:
        try:
            reasons = spill_reasons(device.index, todo)
        except RuntimeError as e:      # the statistics could not be had: time them all
            warnings.warn(f"vkqlinear tune: no pipeline statistics ({e}); spilling "
                          "candidates are timed like the others", RuntimeWarning,
                          stacklevel=2)
            return {}
        for k, why in zip(todo, reasons):
            _spill_memo[(dkey, k)] = why
    return {k: _spill_memo[(dkey, k)] for k in kernels if _spill_memo[(dkey, k)]}


def balanced(kernel, t, n, units):
    """Whether ``kernel``'s grid at ``t`` tokens and ``n`` channels keeps ``units``
    parallel units evenly busy: in its last round of workgroups at most one unit in eight
    idle (:data:`BALANCE`; always true where ``units`` is unknown). On a 2-core host an
    uneven grid (three workgroups, say) wins only while a core is taken by something else,
    and loses by up to a third when both are free."""
    if not units or units < 2:
        return True
    gx, gy, _ = kernel.grid(t, padded_channels(n, kernel.lanes))
    w = gx * gy
    return w / (-(-w // units) * units) >= BALANCE


def default_kernel(dl, t, out_int8=False):
    """The kernel ``dl``'s layer runs at ``t`` tokens untuned: the tuner's yardstick."""
    return choose_kernel("auto", t, dl.kernel_group_size, out_int8, dl.device.caps,
                         tuning.auto_threshold(dl.device.info), n=dl.N)


def keep_calls(calls, t, k, n):
    """Recorded calls a search keeps for a layer of ``k`` x ``n`` at ``t`` tokens: ``calls``
    if their activations and outputs fit :data:`KEEP_CALLS_BYTES`, fewer otherwise."""
    return int(min(calls, max(1, KEEP_CALLS_BYTES // (t * (k + 4 * n)))))


def halving(search, cands, default, runs, visit_wall, deadline):
    """Successive halving over ``cands`` on ``search`` (a :class:`Trials`) until one is left
    or ``deadline`` (``time.perf_counter()``) passes: each round visits the pool in
    alternation (:func:`alternate`, ``runs`` timed runs a visit), as many visits a
    candidate as the time left allows (``visit_wall`` seconds each; at most
    :data:`FIRST_ROUND_VISITS` in the first round, three times more each round after), and
    keeps the fastest third. A new candidate costs a check besides its visits (its
    pipeline built: :meth:`Trials.check_wall`). Where a first round over every candidate
    would not fit, it narrows the pool one axis at a time (:data:`LEVELS`): one
    representative of each (algorithm, variant) visited, the configurations of the
    :data:`KEEP_VARIANTS` best kept; then, if those do not fit either, one of each tile
    (tokens x channel blocks per invocation) of those, the :data:`KEEP_TILES` best kept; an
    even sample of what is left if that still does not fit. Returns the last round's
    candidates, fastest first (``[default]`` if nothing was timed)."""
    def left():
        return deadline - time.perf_counter()

    def rounds_left(n):
        return max(1, math.ceil(math.log(max(n, 2), 3)))

    def cost(n):        # n new candidates: checked, then a visit a round at least
        return n * (search.check_wall(visit_wall) + visit_wall * rounds_left(n))

    def fastest(kernels):
        return sorted((k for k in kernels if k in search.timings),
                      key=lambda k: search.timings[k])

    pool = list(cands)
    anchors = {}                      # each algorithm's default: its first candidate
    for k in cands:
        anchors.setdefault(k.algorithm, k)
    for level, keep in LEVELS:
        if cost(len(pool)) <= left():
            break
        groups = {}
        for k in pool:
            groups.setdefault(level(k), []).append(k)
        reps = [min(g, key=lambda k: likeness(k, anchors[k.algorithm]))
                for g in groups.values()]
        alternate(search, reps, 1, runs, deadline)
        kept = {level(k) for k in fastest(reps)[:keep]}
        pool = [k for k in pool if level(k) in kept]
    # still too many to check: an even sample of the configurations, the timed kept
    fit = max(1, int(left() / max(cost(1), 1e-9)))
    if len(pool) > fit:
        step = len(pool) / fit
        sample = {pool[int(i * step)] for i in range(fit)}
        pool = [k for k in pool if k in sample or k in search.timings]
    cap, ranked = FIRST_ROUND_VISITS, []
    while len(pool) > 1 and left() > 0:
        new = sum(k not in search.samples for k in pool)
        share = (left() / rounds_left(len(pool))
                 - new * search.check_wall(visit_wall)) / len(pool)
        alternate(search, pool, max(1, min(cap, int(share / visit_wall))), runs, deadline)
        ranked = fastest(pool)
        pool = ranked[:max(1, -(-len(ranked) // 3))]
        cap *= 3
    return ranked or fastest(cands + [default]) or [default]


# Where a first round over every candidate would not fit, halving narrows the pool one
# axis at a time: (key of a group of candidates, groups kept), each group timed through one
# representative (:func:`likeness`). The variant (code shape) matters most, then the tile
# an invocation computes (tokens x channel blocks), then the workgroup's other axis.
LEVELS = ((lambda k: (k.algorithm, k.variant), KEEP_VARIANTS),
          (lambda k: (k.algorithm, k.variant, k.tm, k.cb), KEEP_TILES))


def likeness(kernel, anchor):
    """How far ``kernel``'s configuration is from ``anchor``'s (its algorithm's default),
    tokens per invocation first, then channel blocks, then the workgroup's other axis: the
    representative of a group is its member nearest the default."""
    return tuple(abs(math.log2(a / b)) for a, b in
                 ((kernel.tm, anchor.tm), (kernel.cb, anchor.cb),
                  (kernel.local_size[1], anchor.local_size[1])))


def round_order(items, i):
    """The order of round ``i`` of an alternation: as given, reversed every other round."""
    return items if i % 2 else items[::-1]


def alternate(point, kernels, rounds=5, runs=1, deadline=None):
    """Time ``kernels`` in alternation, a visit of ``runs`` timed runs each a round (the
    order reversed every other round), so that the host's drifts hit them alike; no visit
    starts after ``deadline`` (``time.perf_counter()``), if given. Returns their timings
    (over all their runs on ``point`` so far), in the order given; ``None`` for a wrong
    or unvisited one."""
    for i in range(rounds):
        for k in round_order(kernels, i):
            if deadline is not None and time.perf_counter() > deadline:
                break
            point.time(k, runs)
    return [point.timings.get(k) for k in kernels]


def paired_visits(point, kernels, rounds=5, runs=1, first=0):
    """Visit ``kernels`` in alternation as :func:`alternate` does (rounds numbered from
    ``first``, whose parity orders a round); returns, per kernel, its visit time over the
    last kernel's in the same round, a list over the rounds (empty for a wrong one), or
    ``None`` if the last kernel is wrong."""
    seen = [[] for _ in kernels]
    for i in range(first, first + rounds):
        visit = {j: point.visit(kernels[j], runs)
                 for j in round_order(range(len(kernels)), i)}
        if visit[len(kernels) - 1] is None:
            return None
        for j, v in visit.items():
            if v is not None:
                seen[j].append(v / visit[len(kernels) - 1])
    return seen


def compare(point, kernels, rounds=5, runs=1):
    """Each of ``kernels`` against the last, in alternation (:func:`paired_visits`): the
    median over rounds of a kernel's visit time over the last one's in the same round
    (``None`` for a wrong one; 1 for the last). The host's slow spells last seconds,
    longer than a round: a ratio within a round cancels them, where timings pooled over a
    search would carry whichever spells each kernel happened to be visited in."""
    seen = paired_visits(point, kernels, rounds, runs)
    if seen is None:
        return [None] * len(kernels)            # the reference is wrong
    return [float(np.median(r)) if r else None for r in seen]


# A tuned choice replaces the default only when it is this much faster in alternation:
# on a noisy host a smaller lead is as likely a slow spell of the default as a gain.
MARGIN = 0.97
BALANCE = 0.875          # of a CPU device's cores a grid's last round keeps busy, at least
RECHECK_SHARE = 0.1      # of the budget, kept for timing the tuned choices again (recheck)


def final_rounds(run_s):
    """Rounds (visits) of the final comparison for kernels of about ``run_s`` seconds: at
    least 3, more for short kernels (up to 15, about a quarter of a second of runs a
    kernel), whose timings the host's bursts disturb the most."""
    runs = 2 * visit_length(run_s)
    return int(min(15, max(3, 0.5 / max(run_s, 1e-9) / runs)))


def final_cost(run_s, kernels=CONFIRM + 1, build_s=0.0):
    """Seconds the final comparison of ``kernels`` (the default and finalists) on a layer
    of ``run_s`` seconds a run takes: the finalists' checks (a pipeline built in
    ``build_s``, one run), then :func:`final_rounds` visits each."""
    visits = kernels * final_rounds(run_s) * visit_length(run_s)
    return (kernels - 1) * (build_s + run_s) + visits * run_s


def visit_length(run_s):
    """Runs, timed and untimed, of a visit to a kernel of about ``run_s`` seconds."""
    return visit_runs(run_s) + visit_warm(run_s)


def visit_runs(run_s):
    """Timed runs a visit for kernels of about ``run_s`` seconds: :data:`VISIT_RUNS`, one
    where a run is long enough to average the host's noise itself."""
    return VISIT_RUNS if run_s <= PROXY_RUN_S else 1


def visit_warm(run_s):
    """Untimed runs a visit for kernels of about ``run_s`` seconds: :data:`VISIT_WARM`,
    none where a run is long (:data:`PROXY_RUN_S`): a slow first run of a call costs about
    a millisecond, and the check already ran it."""
    return VISIT_WARM if run_s <= PROXY_RUN_S else 0


def _result(point, finalists, default, search, proxy_n, ref):
    """The search's ``finalists`` (fastest first) against the default choice on the layer
    itself, in alternation; the fastest of them replaces the default only when clearly
    faster (:data:`MARGIN`). A finalist right on the proxy and wrong on the layer is
    excluded (a bug to report). A wrong default (a bug too) gives way to the first right
    finalist, else to ``ref``, the right kernel the search was sized by."""
    finalists = [k for k in finalists if k != default and point.check(k)]
    visits = []
    if default in point.wrong:
        best, ratio = (finalists + [ref])[0], None
        if best not in point.timings:
            point.time(best, visit_runs(point.timings[ref]))
    else:
        best, ratio = default, 1.0
        if finalists:
            run_s = point.timings[default]
            seen = paired_visits(point, finalists + [default], final_rounds(run_s),
                                 visit_runs(run_s))[:-1]
            ratios = [float(np.median(r)) if r else None for r in seen]
            i = min((j for j, r in enumerate(ratios) if r is not None),
                    key=ratios.__getitem__, default=None)
            if i is not None and ratios[i] <= MARGIN:
                best, ratio, visits = finalists[i], ratios[i], seen[i]
    excluded = {k.describe(): why for k, why in {**search.excluded, **point.excluded}.items()}
    default_s = point.timings.get(default)
    return {"best": best, "kernel_s": point.timings[best], "ratio": ratio,
            "visits": visits,
            "default": default.describe(), "default_s": default_s,
            "timings": {k.describe(): v for k, v in search.timings.items()},
            "excluded": excluded, "proxy_n": proxy_n}


def _store(dev, entry):
    """A point's tuned configuration (a tuner report entry) into the tuning file."""
    tuning.store_configs(dev.info, {entry["key"]: {"config": entry["config"],
                                                   "kernel_s": entry["kernel_s"],
                                                   "measured": time.strftime("%Y-%m-%d")}})


def _layer_weights(cache, rng, k, n, g):
    """Random weights of a ``k`` x ``n`` layer, group size ``g``, made once while the
    points of that layer follow each other (``cache`` holds the last layer's only)."""
    qw = cache.get((k, n, g))
    if qw is None:
        cache.clear()
        qw = cache[(k, n, g)] = random_weights(rng, k, n, g)
    return qw


def recheck(dev, entries, rng, log=None, saved=None, deadline=None):
    """Time each point's tuned kernel against its default once more, in alternation, now
    that the other points' searches have run, and decide on all its paired visits. The
    host has states lasting seconds in which workgroup shapes rank differently
    (docs/benchmarks.md), so a lead measured in one state can be that state's: the
    points take turns, one paired visit each a round, in rounds while another fits
    before ``deadline`` (``time.perf_counter()``; at least :func:`final_rounds` a point),
    so that each point's visits spread over the whole recheck. A tuned choice stays only
    where it is faster in the recheck (the median of its tuned / default ratios there: its
    final comparison's visits came in one stretch of seconds, these from all of the
    recheck) and, over the visits of both, clearly faster (:data:`MARGIN`); else the point
    gets its default back, as it does where the tuned kernel is now wrong. Updates
    ``entries`` (the tuner's report entries: ``"recheck"``, the median of the new ratios,
    ``None`` where the tuned kernel was wrong) and the tuning file; calls ``saved()``
    every few seconds and at the end (the tuner saves its progress: an interrupted
    recheck resumes with the visits it made)."""
    weights, items = {}, []
    for e in entries:
        if e["best"] == e["default"] or "recheck" in e or e["default_s"] is None:
            continue                    # untuned, rechecked, or the default is wrong
        k, n, g, t, out_int8 = e["K"], e["N"], e["group_size"], e["T"], e["output"] == "int8"
        if (k, n, g) not in weights:    # every layer held: the points take turns
            weights[(k, n, g)] = random_weights(rng, k, n, g)
        dl = DeviceLinear.of(weights[(k, n, g)], dev)
        default = default_kernel(dl, t, out_int8)
        tuned = kernel_from_config(e["config"], t, dl.kernel_group_size, out_int8, dev.caps)
        if tuned is None or default.describe() != e["default"]:
            continue                    # another device's or generation's entry
        e.setdefault("recheck_visits", [])
        items.append((e, Trials(dl, t, rng, out_int8), tuned, default))
    if not items:
        return
    last_save = time.perf_counter()
    with keeping_calls_of((p.dl, 2) for _, p, _, _ in items):
        while items:
            start = time.perf_counter()
            for item in list(items):
                e, point, tuned, default = item
                run_s = e["default_s"]
                seen = paired_visits(point, [tuned, default], 1, visit_runs(run_s),
                                     first=len(e["recheck_visits"]))
                if seen is None:            # the default is wrong now: the tuned one stays
                    e.pop("recheck_visits")
                    items.remove(item)
                elif not seen[0]:           # the tuned kernel is wrong now
                    e["recheck"] = None
                    _default_back(dev, e, default, log)
                    items.remove(item)
                else:
                    e["recheck_visits"] += seen[0]
            # over when another round like this one would end past the deadline
            now = time.perf_counter()
            over = deadline is None or 2 * now - start >= deadline
            for item in list(items):
                e, _, _, default = item
                if over and len(e["recheck_visits"]) >= final_rounds(e["default_s"]):
                    e["recheck"] = float(np.median(e["recheck_visits"]))
                    pooled = (e.get("visits") or [e.get("ratio") or e["kernel_s"]
                                                  / e["default_s"]]) + e["recheck_visits"]
                    if e["recheck"] > 1 or float(np.median(pooled)) > MARGIN:
                        _default_back(dev, e, default, log)
                    items.remove(item)
            if saved and (not items or time.perf_counter() - last_save > 5):
                saved()
                last_save = time.perf_counter()


def _default_back(dev, e, default, log=None):
    """A rechecked entry (``"recheck"`` set) gives its point the default kernel back, in
    the entry and the tuning file."""
    e.update(config=kernel_config(default), best=default.describe(),
             kernel_s=e["default_s"], ratio=1.0)
    _store(dev, e)
    if log:
        how = ("wrong when timed again" if e["recheck"] is None else
               f"tuned / default {e['recheck']:.2f} when timed again")
        log(f"{e['key']}: the default again ({how})")


@contextmanager
def keeping_calls_of(uses):
    """Each layer of ``uses`` (``(DeviceLinear, calls)`` pairs, a layer in several of
    them) keeps as many recorded calls as its pairs add up to, inside the block
    (:meth:`~vkqlinear.DeviceLinear.keeping_calls`): points that take turns on one layer
    each keep their kernels' calls warm."""
    need = {}
    for dl, n in uses:
        need[id(dl)] = (dl, need.get(id(dl), (dl, 0))[1] + n)
    with ExitStack() as keep:
        for dl, n in need.values():
            keep.enter_context(dl.keeping_calls(n))
        yield


def tune_wait(dl, t=1, rounds=40):
    """How calls on ``dl``'s device should wait (:attr:`vkqlinear.Device.wait`): ``"block"``
    and ``"yield"`` timed end to end at ``t`` tokens in alternating rounds; the other mode
    replaces the device's built-in one only when :data:`MARGIN` faster. Returns ``(mode,
    {mode: median seconds})``. The device's mode is left as it was."""
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
    builtin = dev.builtin_wait
    other = "block" if builtin == "yield" else "yield"
    return (other if med[other] < MARGIN * med[builtin] else builtin), med


def _state_path():
    path = tuning.tuning_file()
    return path.with_name(path.name + ".progress")


def _load_state(path, plan):
    """The points an interrupted run of the same ``plan`` finished, and the seconds it
    spent; nothing from another plan (other points, budget, device or kernel generation:
    its results would not be this run's)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}, 0.0
    if not isinstance(state, dict) or state.get("plan") != plan:
        return {}, 0.0
    done, spent = state.get("done"), state.get("seconds")
    if not isinstance(done, dict) or not isinstance(spent, (int, float)):
        return {}, 0.0
    return done, float(spent)


def check_points(shapes, group_sizes):
    """``ValueError`` naming the argument unless every group size is a multiple of 8 and
    divides the K of at least one shape."""
    for g in group_sizes:
        if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 8 or g % 8:
            raise ValueError(f"group_sizes: expected positive multiples of 8, got {g!r}")
        if not any(k % g == 0 for k, _ in shapes):
            raise ValueError(f"group_sizes: {g} divides the K of none of the shapes "
                             f"{', '.join(f'{k}x{n}' for k, n in shapes)}")


def tune(shapes=None, tokens=None, group_sizes=(32, 128), budget_s=600.0,
         exhaustive=False, device=None, log=print, plot=None, outputs=("float",)):
    """Tune every (shape, group size, output kind, T) point on ``device`` (default: the
    default device) and store the winners in the tuning file; returns the report (per
    point: the winner, every candidate's time, the excluded ones). ``outputs``: output
    kinds to tune, ``"float"`` and/or ``"int8"`` (an int8-output layer with no entry of
    its own uses the nearest float entry's kernel). ``budget_s`` is shared by the points;
    ``plot`` (a path) writes a PNG of what the search saw."""
    shapes = list(shapes or QUICK_SHAPES)
    tokens = list(tokens or TOKENS)
    check_points(shapes, group_sizes)
    outputs = list(outputs)
    if not outputs or set(outputs) - set(OUTPUTS):
        raise ValueError(f"outputs: expected 'float' and/or 'int8', got {outputs!r}")
    dev = device if isinstance(device, Device) else Device(device)
    points = [(k, n, g, out == "int8", t) for k, n in shapes for g in group_sizes
              if k % g == 0 for out in outputs for t in tokens]
    plan = {"device": tuning.device_key(dev.info), "points": [list(p) for p in points],
            "exhaustive": exhaustive, "budget_s": budget_s,
            "generation": KERNEL_GENERATION}
    state_path = _state_path()
    done, spent = _load_state(state_path, plan)
    rng = np.random.default_rng(0)
    report = {"device": dev.name, "exhaustive": exhaustive, "points": [],
              "resumed": len(done)}
    t0 = time.perf_counter() - spent          # a resumed run's clock goes on
    weights = {}

    def save():                 # the report's entries are done's: rechecks are saved too
        state_path.write_text(json.dumps({"plan": plan, "done": done,
                                          "seconds": time.perf_counter() - t0}))
    for i, (k, n, g, out_int8, t) in enumerate(points):
        key = tuning.point_key(k, n, g, out_int8, t)
        if key in done:
            report["points"].append(done[key])
            continue
        left = max(1.0, budget_s * (1 - RECHECK_SHARE) - (time.perf_counter() - t0)) / (
            len(points) - i)
        qw = _layer_weights(weights, rng, k, n, g)
        res = search_point(DeviceLinear.of(qw, dev), t, left, exhaustive, rng, out_int8)
        best = res["best"]
        entry = {"key": key, "K": k, "N": n, "group_size": g, "T": t,
                 "output": "int8" if out_int8 else "float",
                 "config": kernel_config(best), "best": best.describe(),
                 "kernel_s": res["kernel_s"], "default": res["default"],
                 "default_s": res["default_s"], "ratio": res["ratio"],
                 "visits": res.get("visits", []),
                 "proxy_N": res["proxy_n"],
                 "timings": res["timings"], "excluded": res["excluded"],
                 "spilling": {kern.describe(): why
                              for kern, why in res.get("spilling", {}).items()},
                 "candidates": len(res["timings"]) + len(res["excluded"])}
        _store(dev, entry)
        done[key] = entry
        save()
        report["points"].append(entry)
        if log:
            gain = 1 / (entry["ratio"] or 1.0)
            proxy = f" at N={res['proxy_n']}" if res["proxy_n"] else ""
            log(f"[{i + 1}/{len(points)} {time.perf_counter() - t0:5.0f}s] {key}: "
                f"{entry['best']} {entry['kernel_s'] * 1e3:.3f} ms (default x{gain:.2f}; "
                f"{len(res['timings'])} timed{proxy}, {len(res['excluded'])} excluded"
                + (f", {len(entry['spilling'])} spilling (untimed)" if entry["spilling"]
                   else "")
                + ")")
    # the recheck's share, or less if the searches overran (an exhaustive one ignores it)
    recheck(dev, report["points"], rng, log, save, deadline=min(
        t0 + budget_s, time.perf_counter() + RECHECK_SHARE * budget_s))
    state_path.unlink(missing_ok=True)
    if points:                    # how calls wait, at the first shape's T = 1
        k, n, g, _, _ = points[0]
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
    plt = pyplot()
    if plt is None:
        return None
    pts = report["points"]
    fig, ax = plt.subplots(figsize=(max(6, len(pts) * 0.35), 5))
    for i, p in enumerate(pts):
        scale = p["N"] / p["proxy_N"] if p.get("proxy_N") else 1.0   # proxy: scaled to N
        times = [v * 1e3 * scale for v in p["timings"].values()]
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


DESCRIPTION = (
    "Searches, per layer shape, group size and token count, every kernel configuration "
    "the device can run (algorithm, variant, tokens per invocation, workgroup shape), "
    "each checked first, and stores the fastest where it clearly beats the default in "
    "the tuning file that algorithm='auto' reads. An interrupted run of the same plan "
    "resumes.")
EXAMPLES = [("", "the quick benchmark's points, 600 s in all"),
            ("--shapes 4096x4096,4096x11008 --tokens 1,8,64 --budget 300",
             "a model's layers"),
            ("--outputs float,int8", "int8-output layers too")]


def main(argv=None):
    ap = parser("tune", DESCRIPTION, EXAMPLES)
    ap.add_argument("--shapes", type=shape_list,
                    help="KxN list (default the quick benchmark's: 4096x4096,1536x384)")
    ap.add_argument("--tokens", type=int_list,
                    help=f"T list (default {','.join(map(str, TOKENS))})")
    ap.add_argument("--group-sizes", type=int_list, default=[32, 128],
                    help="group sizes (default 32,128)")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds in all (default 600)")
    ap.add_argument("--outputs", type=output_list, default=["float"],
                    help="output kinds to tune: float, int8 or float,int8 (default float; "
                         "an int8-output layer without entries of its own uses the float "
                         "ones)")
    ap.add_argument("--exhaustive", action="store_true", help="time every candidate")
    ap.add_argument("--device", type=int, default=None, help="device index (see info)")
    ap.add_argument("--out", default="bench-results", help="directory for JSON and PNG")
    a = ap.parse_args(argv)
    try:
        check_points(a.shapes or QUICK_SHAPES, a.group_sizes)
    except ValueError as e:
        ap.error(str(e))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = tune(a.shapes, a.tokens, a.group_sizes, a.budget,
                  a.exhaustive, a.device, plot=out / f"tune-{stamp}.png", outputs=a.outputs)
    report.update(provenance())
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
