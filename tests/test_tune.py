"""The tuner: a tiny tune writes entries that auto then uses; a wrong candidate is
excluded and reported; an interrupted run resumes; the command line works."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

import vkqlinear as vq
from vkqlinear import kernels, policy, tuning
from vkqlinear.measure import tuner
from vkqlinear.measure.model_bench import random_weights


def search_space(dl, t, out_int8=False):
    """How many kernels the tuner's search may visit at ``t`` tokens on ``dl``'s device (it
    visits as many as its budget allows: fewer where pipelines compile slowly)."""
    units = policy.parallel_units(dl.device.info)
    default = tuner.default_kernel(dl, t, out_int8)
    return len({k for alg in kernels.KERNEL_ALGORITHMS
                for k in kernels.candidates(alg, t, dl.kernel_group_size, out_int8,
                                            dl.device.caps, dl.N)
                if k == default or tuner.balanced(k, t, dl.weights.N, units)})


def test_a_tiny_tune_writes_entries_that_auto_uses(tfile, device):
    report = tuner.tune([(256, 128)], [1, 4], [32], budget_s=30, device=device, log=None)
    assert [p["key"] for p in report["points"]] == ["256x128 g32 float T1",
                                                    "256x128 g32 float T4"]
    entries = tuning.device_entries(device.info)
    assert set(entries) == {p["key"] for p in report["points"]}
    rng = np.random.default_rng(1)
    qw = random_weights(rng, 256, 128)
    dl = vq.DeviceLinear.of(qw, device)
    units = policy.parallel_units(device.info)
    for p in report["points"]:
        assert 1 < p["candidates"] <= search_space(dl, p["T"]) and not p["excluded"]
        # decided by the paired comparison: tuned only where clearly faster in it
        assert p["ratio"] == 1.0 if p["best"] == p["default"] else p["ratio"] <= tuner.MARGIN
        t = p["T"]
        if units and units > 1:           # no grid that leaves a CPU's cores unevenly busy
            uneven = {k.describe() for alg in kernels.KERNEL_ALGORITHMS
                      for k in kernels.candidates(alg, t, 32, False, device.caps, 128)
                      if not tuner.balanced(k, t, 128, units)} - {p["default"]}
            assert uneven and not uneven & set(p["timings"])
        want = kernels.kernel_from_config(entries[p["key"]]["config"], t, 32, False,
                                          device.caps)
        assert dl.kernel("auto", t) == want
        # and an untuned token count takes the nearest tuned bucket's choice
        x_q, xs, xz = vq.quantize_per_token(rng.standard_normal((t, 256)).astype(np.float32))
        y = vq.linear_qta8a_qga4w(x_q, xs, xz, qw, device=device)
        np.testing.assert_allclose(y, vq.linear_qta8a_qga4w(x_q, xs, xz, qw,
                                                            algorithm="reference"),
                                   rtol=1e-4, atol=1e-4)
    nearest = kernels.kernel_from_config(entries["256x128 g32 float T4"]["config"], 3, 32,
                                         False, device.caps)
    assert dl.kernel("auto", 3) == nearest
    # a forced variant still wins over the tuned choice
    assert dl.kernel("auto", 1, variant="portable").variant == kernels.Variant()


def test_int8_output_points_are_tuned_and_used(tfile, device):
    """An int8-output layer takes the float entry's kernel until it has its own; tuning
    int8 outputs checks every candidate against the int8 contract and stores its own."""
    qw = random_weights(np.random.default_rng(2), 128, 64)
    dl = vq.DeviceLinear.of(qw, device)
    report = tuner.tune([(128, 64)], [2], [32], budget_s=10, device=device, log=None)
    float_config = report["points"][0]["config"]
    assert dl.kernel("auto", 2, out_int8=True) == kernels.kernel_from_config(
        float_config, 2, 32, True, device.caps)
    report = tuner.tune([(128, 64)], [2], [32], budget_s=10, device=device, log=None,
                        outputs=["int8"])
    (p,) = report["points"]
    assert p["key"] == "128x64 g32 int8 T2" and p["output"] == "int8"
    assert not p["excluded"] and 1 < p["candidates"] <= search_space(dl, 2, True)
    entries = tuning.device_entries(device.info)
    assert set(entries) == {"128x64 g32 float T2", "128x64 g32 int8 T2"}
    kernel = dl.kernel("auto", 2, out_int8=True)
    assert kernel == kernels.kernel_from_config(p["config"], 2, 32, True, device.caps)
    assert kernel.out_int8
    x = vq.quantize_per_token(np.random.default_rng(3).standard_normal((2, 128))
                              .astype(np.float32))
    oq = (np.full(2, 0.05, np.float32), np.zeros(2, np.int32))
    got = vq.linear_qta8a_qga4w_qta8o(*x, qw, out_scale=oq[0], out_zero_point=oq[1],
                                      device=device)
    want = vq.linear_qta8a_qga4w_qta8o(*x, qw, out_scale=oq[0], out_zero_point=oq[1],
                                       algorithm="reference")
    assert got.dtype == np.int8 and np.abs(got.astype(int) - want).max() <= 1
    with pytest.raises(ValueError, match="outputs"):
        tuner.tune([(128, 64)], [2], [32], device=device, outputs=["int4"])


def test_candidates_that_spill_are_dropped_untimed(tfile, device, monkeypatch):
    """On a device whose driver reports pipeline statistics, the candidates it reports as
    spilling registers are never timed nor chosen, and the report names them (here the
    device is made to report, and every tiled candidate with more than one channel block
    an invocation to spill)."""
    import dataclasses

    from vkqlinear.measure import shader_stats
    asked = []

    def reasons(index, kernels):
        asked.append(len(kernels))
        return ["3 VGPRs, 0 SGPRs spilled" if k.cb > 1 else "" for k in kernels]
    monkeypatch.setattr(shader_stats, "spill_reasons", reasons)
    monkeypatch.setattr(tuner, "_spill_memo", {})
    info = dataclasses.replace(device.info, extensions=list(device.info.extensions) +
                               ["VK_KHR_pipeline_executable_properties"])
    monkeypatch.setattr(device, "info", info)
    report = tuner.tune([(256, 1024)], [8], [32], budget_s=15, device=device, log=None)
    (p,) = report["points"]
    assert p["spilling"] and all("cb=" in k for k in p["spilling"])
    assert not set(p["spilling"]) & set(p["timings"]) and "cb=" not in p["best"]
    assert asked and sum(asked) >= len(p["spilling"])
    monkeypatch.setattr(device, "info", dataclasses.replace(info, extensions=[]))
    (p,) = tuner.tune([(256, 1024)], [8], [32], budget_s=5, device=device,
                      log=None)["points"]
    assert p["spilling"] == {}                  # no statistics: nothing dropped untimed


def test_a_wrong_candidate_is_excluded_and_reported(tfile, device, monkeypatch):
    """A candidate that computes the wrong result (here: told the wrong group size) is
    caught by the check before it is timed, and never chosen."""
    real = kernels.candidates

    # a few TILED candidates only: the search visits them all however long pipelines take
    # to build (on a cold shader cache, seconds each on some lavapipes)
    def with_a_wrong_one(algorithm, t, group_size, out_int8, caps, n=None):
        if algorithm != "tiled":
            return []
        bad = kernels.choose_kernel(algorithm, t, group_size * 2, out_int8, caps)
        return [bad] + real(algorithm, t, group_size, out_int8, caps, n)[:3]
    monkeypatch.setattr(tuner, "candidates", with_a_wrong_one)
    # N wide enough that the wrong one's grid keeps a CPU device's cores evenly busy
    report = tuner.tune([(256, 1024)], [2], [32], budget_s=20, device=device, log=None)
    (p,) = report["points"]
    assert len(p["excluded"]) == 1
    (why,) = p["excluded"].values()
    assert "out of tolerance" in why
    assert p["config"]["tm"] and p["best"] not in p["excluded"]


def test_a_wrong_default_is_excluded_and_the_search_goes_on(tfile, device, monkeypatch):
    """The default kernel itself computing the wrong result (a bug) is excluded and
    reported like any other; the search sizes its visits by a right one instead."""
    real = kernels.choose_kernel

    def wrong_default(algorithm, t, group_size, out_int8, caps, threshold=None, n=None):
        return real(algorithm, t, group_size * 2, out_int8, caps, threshold, n=n)
    monkeypatch.setattr(tuner, "choose_kernel", wrong_default)
    report = tuner.tune([(256, 64)], [2], [32], budget_s=10, device=device, log=None)
    (p,) = report["points"]
    assert p["default"] in p["excluded"] and p["best"] not in p["excluded"]
    assert p["default_s"] is None and p["kernel_s"] > 0


def test_the_final_comparison_confirms_the_search_fastest_few():
    """CPU only: the search's finalists are timed against the default on the layer; the
    fastest of them wins only when clearly faster than the default."""

    class K(str):
        def describe(self):
            return str(self)

    def final(layer_times):
        point = SimpleNamespace(wrong=set(), excluded={}, timings={},
                                check=lambda k: True)

        def visit(k, runs):
            point.timings[k] = layer_times[k]
            return layer_times[k]
        point.time = point.visit = visit
        point.timings[K("default")] = layer_times["default"]
        return tuner._result(point, [K("a"), K("b"), K("c")], K("default"), point, None,
                             K("default"))["best"]
    # the search ranked a first, but on the layer b is the fastest
    assert final({"a": 0.99, "b": 0.5, "c": 0.9, "default": 1.0}) == "b"
    assert final({"a": 1.0, "b": 0.98, "c": 1.2, "default": 1.0}) == "default"


def test_the_final_comparison_pairs_visits_of_one_round():
    """CPU only: the host's slow spells (2x here, several rounds long) hit whichever
    kernels are visited in them. The search timed the default only in one (its pooled
    median 2.0) and the finalist outside (1.0); in the final comparison the finalist is
    5% slower than the default in every round: the default stays."""
    class K(str):
        def describe(self):
            return str(self)
    slow = iter([2.0] * 4 + [1.0] * 4 + [2.0] * 4 + [1.0] * 100)   # a factor a visit
    samples = {"a": [1.0] * 40, "default": [2.0] * 10}
    point = SimpleNamespace(wrong=set(), excluded={}, check=lambda k: True,
                            timings={K(k): float(np.median(v)) for k, v in samples.items()})

    def visit(k, runs):
        v = {"a": 1.05, "default": 1.0}[k] * next(slow)
        samples[k].append(v)
        point.timings[k] = float(np.median(samples[k]))
        return v
    point.visit = visit
    res = tuner._result(point, [K("a")], K("default"), point, None, K("default"))
    assert res["best"] == "default" and res["ratio"] == 1.0
    assert point.timings["a"] < point.timings["default"]     # what pooling would have chosen
    assert tuner.compare(point, [K("a"), K("default")], 3) == [pytest.approx(1.05), 1.0]


def _tuned_entry(device, rng, t, first):
    """A report entry of a 128 x 64 layer at ``t`` tokens whose search chose a kernel other
    than the default, with ``first``: its final comparison's tuned / default ratios."""
    dl = vq.DeviceLinear.of(random_weights(rng, 128, 64), device)
    default = tuner.default_kernel(dl, t)
    other = next(k for k in kernels.candidates("tiled", t, 32, False, device.caps)
                 if k != default)
    key = tuning.point_key(128, 64, 32, False, t)
    tuning.store_configs(device.info, {key: {"config": kernels.kernel_config(other),
                                             "kernel_s": 0.9e-3}})
    return {"key": key, "K": 128, "N": 64, "group_size": 32, "T": t, "output": "float",
            "config": kernels.kernel_config(other), "best": other.describe(),
            "kernel_s": 0.9e-3, "default": default.describe(), "default_s": 1e-3,
            "ratio": float(np.median(first)), "visits": list(first)}, other, default


@pytest.mark.parametrize("first,again,kept", [
    ([0.8] * 5, [0.5], True), ([0.8] * 5, [1.1], False), ([0.8] * 5, [1.02], False),
    ([0.8] * 5, [0.5, 1.2, 1.2, 1.2], False), ([0.8] * 5, [0.5, 0.5, 1.3], True),
    ([0.8] * 15, [0.99], True), ([0.6] * 15, [1.01], False)])
def test_a_tuned_choice_stays_only_if_faster_when_timed_again(tfile, device, monkeypatch,
                                                              first, again, kept):
    """The recheck after all searches: a tuned choice faster in its final comparison's
    visits (``first``) stays only where it is faster in the recheck's 15 visits (the
    pattern ``again`` repeated; their median) and the median over both is 3% faster;
    else the default is back, in the report and the tuning file."""
    rng = np.random.default_rng(6)
    entry, other, default = _tuned_entry(device, rng, 2, first)
    pattern = iter(again * 15)
    timed = []

    def paired(point, ks, rounds, runs, first=0):
        timed.append(([x.describe() for x in ks], first))
        return [[next(pattern) for _ in range(rounds)], [1.0] * rounds]
    monkeypatch.setattr(tuner, "paired_visits", paired)
    tuner.recheck(device, [entry], rng)
    rounds = tuner.final_rounds(1e-3)
    assert timed == [([other.describe(), default.describe()], i) for i in range(rounds)]
    assert entry["recheck_visits"] == (again * 15)[:rounds]
    assert entry["recheck"] == pytest.approx(np.median(entry["recheck_visits"]))
    want = other if kept else default
    assert entry["best"] == want.describe() and entry["ratio"] == (first[0] if kept else 1.0)
    qw = random_weights(np.random.default_rng(4), 128, 64)
    assert vq.DeviceLinear.of(qw, device).kernel("auto", 2) == want
    tuner.recheck(device, [entry], rng)       # once only
    assert len(timed) == rounds


def test_the_recheck_spreads_each_points_visits_over_its_whole_time(tfile, device,
                                                                   monkeypatch):
    """The points take turns a visit at a time, and visits go on until the deadline: a
    host state of a few seconds falls on a few of each point's visits, not on all of
    one point's."""
    rng = np.random.default_rng(6)
    entries = [_tuned_entry(device, rng, t, [0.8] * 5)[0] for t in (2, 3)]
    order = []

    def paired(point, ks, rounds, runs, first=0):
        order.append(point.t)
        return [[0.5] * rounds, [1.0] * rounds]
    monkeypatch.setattr(tuner, "paired_visits", paired)
    clock = iter(range(10**6))
    monkeypatch.setattr(tuner.time, "perf_counter", lambda: next(clock) * 0.01)
    tuner.recheck(device, entries, rng, deadline=2.0)
    rounds = len(order) // 2
    assert order == [2, 3] * rounds and rounds > tuner.final_rounds(1e-3)
    assert [len(e["recheck_visits"]) for e in entries] == [rounds, rounds]


def test_a_recheck_that_finds_the_tuned_kernel_wrong_gives_the_default_back(
        tfile, device, monkeypatch):
    rng = np.random.default_rng(6)
    entry, _, default = _tuned_entry(device, rng, 2, [0.5] * 5)
    monkeypatch.setattr(tuner, "paired_visits",
                        lambda point, ks, rounds, runs, first=0: [[], [1.0] * rounds])
    tuner.recheck(device, [entry], rng)
    assert entry["best"] == default.describe() and entry["recheck"] is None


def test_grids_that_leave_cores_idle_are_not_candidates_on_a_cpu(monkeypatch):
    """CPU only: on a CPU device of 2 cores a grid of 3, 5 or 1 workgroups leaves a core
    idle in its last round; 6, 7 (at most one core in eight idle) or many do not; a GPU's
    units are unknown, so nothing is left out there."""

    def grid_of(w):
        return SimpleNamespace(lanes=8, grid=lambda t, n_padded: (w, 1, 1))
    assert [tuner.balanced(grid_of(w), 1, 64, 2) for w in (1, 3, 5, 6, 7, 64)] == \
        [False, False, False, True, True, True]
    assert tuner.balanced(grid_of(3), 1, 64, None) and tuner.balanced(grid_of(3), 1, 64, 1)
    assert policy.parallel_units(SimpleNamespace(type="discrete-gpu")) is None
    monkeypatch.setenv("LP_NUM_THREADS", "3")
    assert policy.parallel_units(SimpleNamespace(type="cpu")) == 3
    monkeypatch.delenv("LP_NUM_THREADS")
    assert policy.parallel_units(SimpleNamespace(type="cpu")) >= 1


def test_a_long_point_is_searched_on_a_proxy_layer(tfile, device, monkeypatch):
    """Where a run of the layer is long, the search times a narrower layer of the same K
    and T; the winner and the default are then timed (and checked) on the layer itself."""
    assert tuner.proxy_channels(4096, 0.5) == tuner.PROXY_MIN_N
    assert tuner.proxy_channels(4096, 0.04) == 2048
    assert tuner.proxy_channels(4096, tuner.PROXY_RUN_S) is None
    assert tuner.proxy_channels(384, 1.0) is None       # never wider than the layer
    monkeypatch.setattr(tuner, "PROXY_RUN_S", 0.0)
    monkeypatch.setattr(tuner, "PROXY_MIN_N", 64)
    seen = []
    real = tuner.Trials

    def spy(dl, *a, **k):
        seen.append(dl.weights.N)
        return real(dl, *a, **k)
    monkeypatch.setattr(tuner, "Trials", spy)
    report = tuner.tune([(128, 512)], [2], [32], budget_s=10, device=device, log=None)
    (p,) = report["points"]
    assert p["proxy_N"] == 64 and seen[:2] == [512, 64]   # then the recheck's, if any
    assert not p["excluded"] and len(p["timings"]) > 10
    assert p["kernel_s"] <= p["default_s"]
    entry = tuning.device_entries(device.info)[p["key"]]
    qw = random_weights(np.random.default_rng(4), 128, 512)
    assert vq.DeviceLinear.of(qw, device).kernel("auto", 2) == kernels.kernel_from_config(
        entry["config"], 2, 32, False, device.caps)


def test_an_interrupted_tune_resumes(tfile, device, monkeypatch):
    calls, interrupted = [], []
    real = tuner.search_point

    def flaky(dl, t, *a, **k):
        calls.append(t)
        if len(calls) == 2 and not interrupted:
            interrupted.append(t)
            raise KeyboardInterrupt
        return real(dl, t, *a, **k)
    monkeypatch.setattr(tuner, "search_point", flaky)
    with pytest.raises(KeyboardInterrupt):
        tuner.tune([(128, 64)], [1, 2], [32], budget_s=10, device=device, log=None)
    progress = tfile.with_name("tuning.json.progress")
    assert progress.is_file()
    first = json.loads(progress.read_text())["seconds"]
    saved = progress.read_text()
    calls.clear()
    report = tuner.tune([(128, 64)], [1, 2], [32], budget_s=10, device=device, log=None)
    assert calls == [2]                       # T = 1 was done: not searched again
    assert len(report["points"]) == 2 and report["resumed"] == 1
    assert report["seconds"] > first > 0      # the interrupted run's seconds count
    assert not progress.exists()
    # another plan (here another kernel generation) does not resume: its results differ
    progress.write_text(saved)
    monkeypatch.setattr(tuner, "KERNEL_GENERATION", tuner.KERNEL_GENERATION + 1)
    calls.clear()
    report = tuner.tune([(128, 64)], [1, 2], [32], budget_s=10, device=device, log=None)
    assert calls == [1, 2] and report["resumed"] == 0


def test_an_interrupted_recheck_resumes_with_the_visits_it_made(tfile, device,
                                                                monkeypatch):
    """Interrupted in the recheck: the resumed run searches nothing and goes on with the
    visits the interrupted one saved, each point to its number of visits."""
    def tuned_everywhere(dl, t, *a, **k):     # a tuned choice (not the default) each
        default = tuner.default_kernel(dl, t)
        other = next(c for c in kernels.candidates("tiled", t, dl.kernel_group_size, False,
                                                   device.caps) if c != default)
        return {"best": other, "kernel_s": 0.5e-3, "default": default.describe(),
                "default_s": 1e-3, "ratio": 0.5, "visits": [0.5] * 3, "proxy_n": None,
                "timings": {}, "excluded": {}}
    visits, interrupted = [], []

    def paired(point, ks, rounds, runs, first=0):
        visits.append((point.t, first))
        if len(visits) == 20 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return [[0.5] * rounds, [1.0] * rounds]
    monkeypatch.setattr(tuner, "search_point", tuned_everywhere)
    monkeypatch.setattr(tuner, "paired_visits", paired)
    clock = iter(range(10**6))                  # 6 s a visit: saved after each round
    monkeypatch.setattr(tuner.time, "perf_counter", lambda: next(clock) * 6.0)
    with pytest.raises(KeyboardInterrupt):
        tuner.tune([(128, 64)], [1, 2, 3], [32], budget_s=10, device=device, log=None)
    progress = json.loads(tfile.with_name("tuning.json.progress").read_text())
    saved = [len(e["recheck_visits"]) for e in progress["done"].values()]
    assert saved == [6, 6, 6]             # the rounds before the interrupted one
    visits.clear()
    report = tuner.tune([(128, 64)], [1, 2, 3], [32], budget_s=10, device=device, log=None)
    assert report["resumed"] == 3 and visits[:3] == [(1, 6), (2, 6), (3, 6)]
    rounds = tuner.final_rounds(1e-3)
    assert [len(p["recheck_visits"]) for p in report["points"]] == [rounds] * 3
    assert all(p["recheck"] == pytest.approx(0.5) for p in report["points"])
    assert all(p["visits"] == [0.5] * 3 for p in report["points"])   # the search's


def test_exhaustive_times_every_right_candidate(tfile, device):
    report = tuner.tune([(128, 64)], [1], [32], budget_s=60, exhaustive=True, device=device,
                       log=None)
    (p,) = report["points"]
    assert len(p["timings"]) == p["candidates"] - len(p["excluded"])


def test_tune_command_line(tfile, tmp_path, device, capsys):
    from vkqlinear.__main__ import main
    assert main(["tune", "--shapes", "128x64", "--tokens", "1", "--group-sizes", "32",
                 "--budget", "10", "--out", str(tmp_path)]) == 0
    doc = json.loads(next(tmp_path.glob("tune-*.json")).read_text())
    assert doc["points"][0]["key"] == "128x64 g32 float T1"
    assert doc["host"]["cpus"] >= 1 and "simd" in doc["host"]
    assert main(["info"]) == 0
    assert "128x64 g32 float T1" in capsys.readouterr().out


def test_tuned_wait_is_what_auto_uses(tfile, device):
    """The tuner measures how calls wait best and stores it; Device(wait="auto") then
    follows the measurement rather than the device's kind."""
    report = tuner.tune([(128, 64)], [1], [32], budget_s=5, device=device, log=None)
    assert report["wait"]["chose"] in ("block", "yield")
    assert set(report["wait"]["e2e_s"]) == {"block", "yield"}
    assert tuning.tuned_wait(device.info) == report["wait"]["chose"]
    for mode in ("block", "yield"):
        tuning.store_wait(device.info, mode)
        with vq.Device(device.index) as dev:
            assert dev.wait == mode


@pytest.mark.parametrize("setting", ["auto", "block", "yield"])
def test_tuning_keeps_a_wait_the_caller_chose(tfile, device, monkeypatch, setting):
    """After a tune, a device set to "block" or "yield" still waits that way; one set to
    "auto" follows the new measurement, whichever way it went."""
    other = {"auto": "block", "block": "yield", "yield": "block"}[setting]
    measured = other if setting != "auto" else "block"
    monkeypatch.setattr(tuner, "tune_wait", lambda dl: (measured, {measured: 1e-3}))
    before = device.wait_setting
    try:
        device.wait = setting
        tuner.tune([(128, 64)], [1], [32], budget_s=2, device=device, log=None)
        assert device.wait_setting == setting
        assert device.wait == (measured if setting == "auto" else setting)
    finally:
        device.wait = before


@pytest.mark.parametrize("argv, named", [
    (["--shapes", "40x"], "--shapes"), (["--shapes", "4096"], "--shapes"),
    (["--tokens", "0"], "--tokens"), (["--tokens", "1,a"], "--tokens"),
    (["--group-sizes", "12"], "group_sizes"),
    (["--shapes", "64x48", "--group-sizes", "128"], "group_sizes")])
@pytest.mark.parametrize("command", ["bench", "tune"])
def test_bad_command_lines_name_the_argument(command, argv, named, capsys):
    """CPU only: the command lines refuse bad lists before opening a device."""
    from vkqlinear.__main__ import main
    with pytest.raises(SystemExit) as e:
        main([command] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_tune_refuses_bad_group_sizes_before_opening_a_device():
    with pytest.raises(ValueError, match="group_sizes"):
        tuner.tune([(64, 48)], [1], [20], device=-1)
    with pytest.raises(ValueError, match="group_sizes"):
        tuner.check_points([(64, 48)], [True])


@pytest.mark.parametrize("costs, chosen", [({"yield": 1.0, "block": 0.98}, "yield"),
                                           ({"yield": 1.0, "block": 0.90}, "block"),
                                           ({"yield": 0.9, "block": 1.0}, "yield")])
def test_the_wait_mode_changes_only_when_clearly_faster(monkeypatch, costs, chosen):
    """CPU only, on a fake clock: the built-in mode stays unless the other is 3% faster;
    the device's setting is restored."""
    clock = SimpleNamespace(now=0.0)

    class FakeDevice:
        builtin_wait = "yield"
        wait = wait_setting = "auto"

    class FakeLinear:
        device = FakeDevice()
        weights = SimpleNamespace(K=8)

        def run(self, algorithm, *x):
            clock.now += costs[self.device.wait]
    monkeypatch.setattr(tuner, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    dl = FakeLinear()
    mode, med = tuner.tune_wait(dl, rounds=4)
    assert mode == chosen and med == pytest.approx(costs)
    assert dl.device.wait == "auto"


def test_short_kernels_get_more_final_rounds():
    rounds = [tuner.final_rounds(s) for s in (1e-5, 1e-3, 5e-3, 2e-2, 1.0)]
    assert rounds == sorted(rounds, reverse=True)
    assert rounds[0] == 15 and rounds[-1] == 3 and 3 < rounds[2] < 15
    assert tuner.visit_runs(1e-3) == tuner.VISIT_RUNS and tuner.visit_runs(1.0) == 1
    assert tuner.visit_warm(1e-3) == tuner.VISIT_WARM >= 1 and tuner.visit_warm(1.0) == 0


def test_a_visit_warms_the_timed_call_and_keeps_every_run(monkeypatch):
    """CPU only: each visit runs the timed call untimed first, and a kernel's timing
    is the median of all its timed runs so far."""
    calls, times = [], iter([5.0, 1.0, 3.0, 9.0])

    class FakeLinear:
        def run(self, kernel, *x, timed=False):
            calls.append(timed)
            return None, SimpleNamespace(kernel_seconds=lambda: next(times))
    p = tuner.Trials.__new__(tuner.Trials)
    p.dl, p.x, p.warm = FakeLinear(), (), tuner.visit_warm(1e-3)
    p.timings, p.samples, p.excluded = {}, {}, {}
    p.right, p.wrong = set(), set()
    class Kernel:
        def describe(self):
            return "k"
    kernel = Kernel()
    p.right.add(kernel)
    assert p.time(kernel, 2) == 3.0                # untimed runs, then 5 and 1
    assert p.time(kernel, 2) == 4.0                # then 3 and 9: median of all four
    assert calls == [True] * (2 * (tuner.VISIT_WARM + 2))
    assert p.samples[kernel] == [5.0, 1.0, 3.0, 9.0]


def test_keeping_calls_holds_more_recorded_calls_for_a_block(device):
    """The search visits more kernels than a layer keeps recorded calls; inside
    keeping_calls none is made anew, and the usual bound is back after it."""
    qw = random_weights(np.random.default_rng(5), 128, 64)
    dl = vq.DeviceLinear.of(qw, device)
    cands = kernels.candidates("tiled", 2, 32, False, device.caps)
    assert len(cands) > dl.MAX_CALLS
    with dl.keeping_calls(len(cands)):
        first = [dl.recorded_call(k, 2) for k in cands]
        assert [dl.recorded_call(k, 2) for k in cands] == first     # all kept
    assert len(dl.calls) == vq.DeviceLinear.MAX_CALLS
    assert dl.MAX_CALLS == vq.DeviceLinear.MAX_CALLS
    assert tuner.keep_calls(100, 512, 4096, 4096) < 100 <= tuner.keep_calls(100, 1, 4096, 4096)


class FakeKernel(SimpleNamespace):
    def describe(self):
        return f"{self.variant} {self.config}"

    def __hash__(self):
        return hash(self.describe())


def fake_space(variants=5):
    """Candidates of 5 variants x 60 configurations (tm, cb, workgroup axis)."""
    return [FakeKernel(algorithm="tiled", variant=v, config=c, tm=1 << c % 4,
                       cb=1 << c // 4 % 3, local_size=(8, 1 << c // 12))
            for v in range(variants) for c in range(60)]


def fake_search(monkeypatch, seconds, build=lambda first: 1.0):
    """A search point on a fake clock: a kernel's time is ``seconds(kernel)``, a check
    costs ``build(first check?)`` seconds, a timed run 0.01 s."""
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(tuner, "time", SimpleNamespace(perf_counter=lambda: clock.now))

    class Search:
        def __init__(self):
            self.timings, self.samples, self.check_walls = {}, {}, []

        def check_wall(self, otherwise):
            return float(np.mean(self.check_walls)) if self.check_walls else otherwise

        def time(self, k, runs):
            if k not in self.samples:
                wall = build(not self.samples)
                clock.now += wall
                self.check_walls.append(wall)
            clock.now += 0.01 * runs
            self.samples.setdefault(k, []).append(seconds(k))
            self.timings[k] = float(np.median(self.samples[k]))
            return self.timings[k]
    return Search(), clock


@pytest.mark.parametrize("first_check", [1.0, 0.01])
def test_halving_counts_the_cost_of_building_pipelines(monkeypatch, first_check):
    """CPU only: where checking a candidate (its pipeline built) costs a hundred visits,
    the search keeps to its deadline by checking fewer candidates, not all of them, also
    when the first check (the default's) was cheap and misled its estimate."""
    cands = fake_space()
    search, clock = fake_search(monkeypatch, lambda k: 1 + k.variant + 0.01 * k.config,
                                lambda first: first_check if first else 1.0)
    search.time(cands[0], 1)              # as search_point does: the default first
    ranked = tuner.halving(search, cands, cands[0], 1, 0.01, 31.0)
    assert 10 < len(search.samples) < 40 and clock.now < 34.0
    assert ranked and ranked[0].variant == 0


def test_halving_narrows_one_axis_at_a_time(monkeypatch):
    """CPU only: with time to check a fifth of the space, the search finds the one fastest
    configuration, a tile and workgroup shape that is not the default's, by narrowing
    variant, then tile, then workgroup shape (an even sample of the space misses it)."""
    cands = fake_space()
    best = (1, 4, 2, 8)                      # variant, tm, cb, workgroup axis

    def seconds(k):
        tile = abs(math.log2(k.tm / best[1])) + abs(math.log2(k.cb / best[2]))
        return (1 + 0.5 * abs(k.variant - best[0]) + 0.2 * tile
                + 0.05 * abs(math.log2(k.local_size[1] / best[3])))
    search, clock = fake_search(monkeypatch, seconds)
    search.time(cands[0], 1)
    ranked = tuner.halving(search, cands, cands[0], 1, 0.01, 70.0)
    assert (ranked[0].variant, ranked[0].tm, ranked[0].cb, ranked[0].local_size[1]) == best
    assert len(search.samples) < len(cands) / 4 and clock.now < 72.0
