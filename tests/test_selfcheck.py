"""Kernels that check themselves (vkqlinear.selfcheck): the known answer is exact, a variant
that answers wrong is never used, verdicts are kept per driver, and conformance reports
them."""

import json
import warnings

import numpy as np
import pytest

import vkqlinear as vq
from vkqlinear import selfcheck, tuning
from vkqlinear.kernels import KERNEL_ALGORITHMS


@pytest.mark.parametrize("t, k, n, g", [(1, 64, 13, 32), (8, 256, 61, 128),
                                        (4, 8752, 509, 4376)])
def test_the_known_answer_is_what_the_reference_computes(t, k, n, g):
    x_q, xs, xz, wp, ws, wz, bias, want = selfcheck.known_answer(t, k, n, g)
    y = vq.linear_qta8a_qga4w(x_q, xs, xz, wp, g, ws, wz, bias=bias, algorithm="reference")
    np.testing.assert_array_equal(y, want)


@pytest.fixture
def fresh(device, tfile, monkeypatch):
    """A device opened anew on an empty tuning file (no verdicts yet)."""
    monkeypatch.delenv(selfcheck.WRONG_ENV, raising=False)
    monkeypatch.delenv(selfcheck.SELF_CHECK_ENV, raising=False)
    opened = []

    def make():
        dev = vq.Device(device.index)
        opened.append(dev)
        return dev
    yield make
    for dev in opened:
        dev.close()


def _layer(rng, t, k=256, n=96, g=32):
    x = rng.standard_normal((t, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) * 0.1).astype(np.float32)
    x_q, xs, xz = vq.quantize_per_token(x)
    wp, ws, wz = vq.quantize_weights(w, g)
    return x_q, xs, xz, vq.prepack(wp, g, ws, wz)


@pytest.mark.parametrize("t", [1, 16])
def test_a_variant_that_answers_wrong_is_never_used(fresh, monkeypatch, rng, t):
    dev = fresh()
    algorithm = "cooperative" if t <= tuning.auto_threshold(dev.info) else "tiled"
    best = dev.caps.variants(algorithm)[0]
    key = selfcheck.variant_key(algorithm, best)
    monkeypatch.setenv(selfcheck.WRONG_ENV, key)
    x_q, xs, xz, qw = _layer(rng, t)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        y = vq.linear_qta8a_qga4w(x_q, xs, xz, qw, device=dev)
        y2 = vq.linear_qta8a_qga4w(x_q, xs, xz, qw, device=dev)
    ours = [w for w in seen if "self-check" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in seen]
    message = str(ours[0].message)
    assert best.name in message and dev.info.driver_info in message
    assert ours[0].filename == __file__          # pointed at the caller
    used = vq.DeviceLinear.of(qw, dev).kernel("auto", t)
    assert used.variant != best and used.variant == dev.caps.variants(algorithm)[0]
    assert key in dev.wrong_variants() and best not in dev.caps.variants(algorithm)
    ref = vq.linear_qta8a_qga4w(x_q, xs, xz, qw, algorithm="reference")
    for out in (y, y2):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())
    # a verdict of the test hook stays in the process
    assert key not in tuning.self_checks(dev.info)
    # forcing the wrong variant is refused by name, and the next valid call is right
    with pytest.raises(ValueError, match="self-check"):
        vq.linear_qta8a_qga4w(x_q, xs, xz, qw, algorithm=algorithm, variant=best.name,
                              device=dev)
    np.testing.assert_array_equal(vq.linear_qta8a_qga4w(x_q, xs, xz, qw, device=dev), y)


def test_verdicts_are_kept_per_driver_and_read_back(fresh, monkeypatch, rng, tfile):
    dev = fresh()
    x_q, xs, xz, qw = _layer(rng, 16)
    vq.linear_qta8a_qga4w(x_q, xs, xz, qw, algorithm="tiled", device=dev)
    best = dev.caps.variants("tiled")[0]
    stored = json.loads(tfile.read_text())["devices"][tuning.device_key(dev.info)]
    assert stored["self_check"][f"tiled/{best.name}"] == {"ok": True, "detail": "exact"}

    def no_check(*a, **k):
        raise AssertionError("checked again although the tuning file has the verdict")
    run_check = selfcheck.run_check
    monkeypatch.setattr(selfcheck, "run_check", no_check)
    again = fresh()
    x_q, xs, xz, qw = _layer(rng, 16)
    vq.linear_qta8a_qga4w(x_q, xs, xz, qw, algorithm="tiled", device=again)
    monkeypatch.setattr(selfcheck, "run_check", run_check)
    # a stored wrong verdict takes the variant away as soon as a device opens
    tuning.store_self_check(again.info, f"tiled/{best.name}", {"ok": False, "detail": "t"})
    third = fresh()
    assert best not in third.caps.variants("tiled")
    assert third.wrong_variants() == {f"tiled/{best.name}": "t"}
    assert vq.DeviceLinear.of(qw, third).kernel("tiled", 16).variant != best


def test_a_limit_met_by_the_check_is_an_error_not_a_verdict(fresh, monkeypatch, rng, tfile):
    """A check that cannot run for a reason that is not the variant's (here a binding
    limit smaller than its one block of weights) raises that error, naming the argument,
    and leaves no verdict: the variant stays usable once the limit allows it."""
    dev = fresh()
    monkeypatch.setattr(dev, "max_binding", 64)
    x_q, xs, xz, qw = _layer(rng, 16)
    with pytest.raises(ValueError, match="w_packed|x_q"):
        vq.linear_qta8a_qga4w(x_q, xs, xz, qw, algorithm="tiled", device=dev)
    assert dev.wrong_variants() == {} and dev.caps.variants("tiled")
    stored = json.loads(tfile.read_text())["devices"] if tfile.exists() else {}
    assert not stored.get(tuning.device_key(dev.info), {}).get("self_check")
    again = fresh()                                  # the device's own binding limit
    x_q, xs, xz, qw = _layer(rng, 16)
    y = vq.linear_qta8a_qga4w(x_q, xs, xz, qw, algorithm="tiled", device=again)
    assert y.shape == (16, 96) and again.wrong_variants() == {}


@pytest.mark.parametrize("algorithm", ["tiled", "cooperative"])
def test_a_first_call_with_int8_output_is_checked_and_right(fresh, rng, algorithm):
    """The first call of a variant on a device asking for int8 output: the check runs the
    variant's float-output kernel, then the call's result is the reference's."""
    dev = fresh()
    args = _layer(rng, 5)
    out_s, out_z = np.full(5, 0.05, np.float32), np.arange(5, dtype=np.int32)
    y = vq.linear_qta8a_qga4w_qta8o(*args, out_scale=out_s, out_zero_point=out_z,
                                    algorithm=algorithm, device=dev)
    ref = vq.linear_qta8a_qga4w_qta8o(*args, out_scale=out_s, out_zero_point=out_z,
                                      algorithm="reference")
    assert y.dtype == np.int8 and np.abs(y.astype(int) - ref).max() <= 1   # rounding ties


def test_the_self_check_can_be_turned_off(fresh, monkeypatch):
    monkeypatch.setenv(selfcheck.SELF_CHECK_ENV, "0")
    dev = fresh()
    monkeypatch.setattr(selfcheck, "run_check", lambda *a: pytest.fail("ran"))
    kernel = vq.DeviceLinear.of(_layer(np.random.default_rng(0), 1)[3], dev).kernel("auto", 1)
    assert dev.verify(kernel)
    monkeypatch.setenv(selfcheck.SELF_CHECK_ENV, "maybe")
    with pytest.raises(ValueError, match=selfcheck.SELF_CHECK_ENV):
        fresh()


def test_every_variant_the_device_allows_passes_its_self_check(fresh):
    from vkqlinear import conformance
    dev = fresh()
    rows = conformance.self_checked_variants(dev)
    assert {a for a, _, _ in rows} == set(KERNEL_ALGORITHMS)
    assert [(a, v.name, w) for a, v, w in rows if w is not None] == []


def test_conformance_reports_and_stops_a_failing_variant(fresh, monkeypatch, capsys):
    from vkqlinear import conformance
    from vkqlinear.__main__ import main
    dev = fresh()
    bad = ("tiled", dev.caps.variants("tiled")[-1])
    dropped = selfcheck.variant_key("cooperative", dev.caps.variants("cooperative")[0])
    monkeypatch.setenv(selfcheck.WRONG_ENV, dropped)
    real, all_cases = conformance.run_case, conformance.cases
    calls = []

    def run_case(case, algorithm, device, variant):
        if (algorithm, variant) == bad:
            calls.append(case.name)
            return False, "made to fail"
        return real(case, algorithm, device, variant)
    monkeypatch.setattr(conformance, "run_case", run_case)
    monkeypatch.setattr(conformance, "cases", lambda quick=False: all_cases(quick=True)[:4])
    with pytest.warns(RuntimeWarning, match="self-check"):
        assert main(["conformance", "--device", str(dev.index)]) == 1
    out = capsys.readouterr().out
    assert len(calls) == conformance.MAX_FAILURES
    table = out[out.index("algorithm "):]
    assert f"tiled        {bad[1].name:22s}        0     3      4  FAIL" in table
    assert "stopped after 3 failures" in table
    assert "NOT USED" in table and "self-check answered wrong" in table
    row = next(line for line in table.splitlines() if "NOT USED" in line)
    assert row.split()[:2] == dropped.split("/")
    assert table.count("PASS") == len(conformance.kernel_variants(dev)) - 2


RAW_DRIVER = """
import os, sys
import vkqlinear as vq
from vkqlinear import conformance as C
dev = vq.Device(int(sys.argv[1]))
variants = [v for v in dev.caps.variants("tiled") if v.texel]
if sys.argv[2] == "self-check":
    verdicts = [v for a, v, wrong in C.self_checked_variants(dev) if v.texel and wrong]
    print("wrong" if verdicts else "right")
else:
    cases = [c for c in C.cases(quick=True) if c.out == "float"][:6]
    ok = all(C.run_case(c, "tiled", dev, v)[0] for v in variants for c in cases)
    print("right" if ok else "wrong")
"""


def _raw_driver(device, mode, **env):
    import os
    import subprocess
    import sys
    environ = dict(os.environ, VKQLINEAR_DRIVER_QUIRKS="ignore", **env)
    proc = subprocess.run([sys.executable, "-c", RAW_DRIVER, str(device.index), mode],
                          capture_output=True, text=True, timeout=600, env=environ)
    if proc.returncode < 0:               # a faulty driver may crash the process
        return "wrong"
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()[-1]


def test_the_self_check_catches_what_conformance_finds_on_the_raw_driver(device, tmp_path):
    """With the quirk table off, the texel variants' self-check and their conformance
    cases agree: on Mesa 25's lavapipe both find them wrong at some vector widths (the
    quirk of vkqlinear.policy), on other drivers both find them right."""
    import kp
    if not (device.info.supports("texelBufferLoads") and device.enabled("shaderInt64")
            and hasattr(kp.Algorithm, "set_next_texel_formats")):
        pytest.skip("no texel variants on this device")
    checked = _raw_driver(device, "self-check",
                          VKQLINEAR_TUNING_FILE=str(tmp_path / "tuning.json"))
    cases = _raw_driver(device, "cases", VKQLINEAR_SELF_CHECK="0")
    assert checked == cases
