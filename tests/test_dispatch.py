"""Dispatch: prepacked weights, caching (nothing re-recorded or re-allocated), split grids,
large shapes, buffer-range limits, threads."""

import dataclasses
import threading

import numpy as np
import pytest

import vkqlinear as vq
from vkqlinear import conformance as C
from vkqlinear import dispatch

from .conftest import make_layer


def _ref(d, **kw):
    return vq.linear_qta8a_qga4w(**d, algorithm="reference", **kw)


@pytest.fixture
def spy_recording(monkeypatch):
    """The RecordedCall constructions made while the test runs for the layers it makes (a
    kernel variant's first self-check on the device records a call of its own)."""
    made = []
    real = dispatch.RecordedCall.__init__
    from vkqlinear import selfcheck
    check = selfcheck.run_check

    def checking(*a, **k):
        made.append("self-check")
        try:
            return check(*a, **k)
        finally:
            made.remove("self-check")
    monkeypatch.setattr(selfcheck, "run_check", checking)

    def spy(self, *a, **k):
        if "self-check" not in made:
            made.append(a)
        real(self, *a, **k)
    monkeypatch.setattr(dispatch.RecordedCall, "__init__", spy)
    return made


def test_a_repeated_call_records_and_allocates_nothing(rng, device, spy_recording):
    d = make_layer(rng, 3, 128, 24, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"], device=device)
    x = (d["x_q"], d["x_scale"], d["x_zero_point"])
    y1 = vq.linear_qta8a_qga4w(*x, qw, algorithm="tiled", device=device)
    (call,) = vq.DeviceLinear.of(qw, device).calls
    tensors = (call.x, call.y, call.seq)
    for _ in range(3):
        np.testing.assert_array_equal(
            vq.linear_qta8a_qga4w(*x, qw, algorithm="tiled", device=device), y1)
    assert len(spy_recording) == 1
    assert vq.DeviceLinear.of(qw, device).calls == (call,)
    assert (call.x, call.y, call.seq) == tensors
    np.testing.assert_allclose(y1, _ref(d), rtol=1e-5, atol=1e-5)


def test_new_inputs_of_a_seen_shape_flow_through_the_same_call(rng, device, spy_recording):
    d = make_layer(rng, 3, 128, 24, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
    vq.linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], qw, algorithm="tiled",
                          device=device)
    e = make_layer(rng, 3, 128, 24, 32)
    y = vq.linear_qta8a_qga4w(e["x_q"], e["x_scale"], e["x_zero_point"], qw,
                              algorithm="tiled", device=device)
    assert len(spy_recording) == 1
    np.testing.assert_allclose(y, vq.linear_qta8a_qga4w(e["x_q"], e["x_scale"],
                                                        e["x_zero_point"], qw,
                                                        algorithm="reference"),
                               rtol=1e-5, atol=1e-5)


def test_bias_on_then_off_through_one_recorded_call(rng, device, spy_recording):
    d = make_layer(rng, 3, 128, 24, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
    x = (d["x_q"], d["x_scale"], d["x_zero_point"])
    y = vq.linear_qta8a_qga4w(*x, qw, algorithm="tiled", device=device)
    b = rng.standard_normal(24).astype(np.float32)
    yb = vq.linear_qta8a_qga4w(*x, qw, bias=b, algorithm="tiled", device=device)
    np.testing.assert_allclose(yb, y + b, rtol=1e-5, atol=1e-5)
    # the bias left on the device by the previous call must not leak into this one
    np.testing.assert_array_equal(vq.linear_qta8a_qga4w(*x, qw, algorithm="tiled",
                                                        device=device), y)
    assert len(spy_recording) == 1


def test_a_new_token_count_records_one_more_call(rng, device, spy_recording):
    d = make_layer(rng, 3, 128, 24, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
    for t in (3, 1, 3, 1):
        vq.linear_qta8a_qga4w(d["x_q"][:t], d["x_scale"][:t], d["x_zero_point"][:t], qw,
                              algorithm="tiled", device=device)
    assert [a[3] for a in spy_recording] == [3, 1]          # T of each recording
    assert len(vq.DeviceLinear.of(qw, device).calls) == 2


def test_call_cache_is_bounded(rng, device):
    d = make_layer(rng, 12, 64, 8, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"], device=device)
    for t in range(1, 13):
        vq.linear_qta8a_qga4w(d["x_q"][:t], d["x_scale"][:t], d["x_zero_point"][:t], qw,
                              algorithm="tiled", device=device)
    dl = vq.DeviceLinear.of(qw, device)
    assert len(dl.calls) == dl.MAX_CALLS


@pytest.mark.parametrize("algorithm", ["tiled", "cooperative"])
@pytest.mark.usefixtures("device")
def test_split_grid_is_correct(rng, algorithm):
    dev = vq.Device()
    lim = dict(dev.info.limits, max_workgroup_count=[65535, 2, 65535])
    dev.info = dataclasses.replace(dev.info, limits=lim)
    d = make_layer(rng, 300, 64, 16, 32)   # tiled: rows of 32 or 64 tokens, 2 a dispatch
    y = vq.linear_qta8a_qga4w(**d, algorithm=algorithm, device=dev)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
    vq.linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], qw, algorithm=algorithm,
                          device=dev)
    (call,) = vq.DeviceLinear.of(qw, dev).calls
    assert call.n_dispatch > 1
    np.testing.assert_allclose(y, _ref(d), rtol=1e-5, atol=1e-5)
    dev.close()


@pytest.mark.usefixtures("device")
def test_buffer_larger_than_a_binding_is_refused(rng, monkeypatch):
    """Activations larger than one binding (which are not split) are refused naming the
    limit: the device's own, or the smaller VKQLINEAR_MAX_BINDING_BYTES."""
    from vkqlinear import device as devmod
    info = vq.devices()[0]
    small_range = dataclasses.replace(info, limits=dict(info.limits,
                                                        max_storage_buffer_range=6000))
    monkeypatch.setattr(devmod, "devices", lambda: [small_range])
    # K = 32: a block of 8 x lanes channels' weights fits 6000 bytes at up to 16 lanes
    d = make_layer(rng, 256, 32, 8, 32)   # x_q is 8192 bytes
    small = make_layer(rng, 2, 32, 8, 32)
    with vq.Device() as dev:
        assert dev.max_binding == 6000
        with pytest.raises(ValueError, match="^x_q: .*6000"):
            vq.linear_qta8a_qga4w(**d, algorithm="tiled", device=dev)
        np.testing.assert_allclose(vq.linear_qta8a_qga4w(**small, algorithm="tiled",
                                                         device=dev),
                                   _ref(small), rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("VKQLINEAR_MAX_BINDING_BYTES", "4096")
    with vq.Device() as dev:
        assert dev.max_binding == 4096
        with pytest.raises(ValueError, match="^x_q: .*4096"):
            vq.linear_qta8a_qga4w(**d, algorithm="tiled", device=dev)


@pytest.mark.usefixtures("device")
@pytest.mark.parametrize("bad", ["12", "lots", "-1"])
def test_bad_binding_limit_setting_is_refused(monkeypatch, bad):
    monkeypatch.setenv("VKQLINEAR_MAX_BINDING_BYTES", bad)
    with pytest.raises(ValueError, match="VKQLINEAR_MAX_BINDING_BYTES"):
        vq.Device()


@pytest.mark.parametrize("t,k,n,g", [(2, 16384, 16, 128), (1, 64, 16384, 32),
                                     (3, 16384, 8, 16384)])
@pytest.mark.parametrize("algorithm", ["tiled", "cooperative"])
def test_large_k_and_n(t, k, n, g, algorithm, device):
    case = C.Case(f"large {t} {k} {n} {g}", (t,), k, n, g, bias=True, seed=k + n)
    ok, msg = C.run_case(case, algorithm, device)
    assert ok, msg


def _in_threads(check, n=4, repeat=10):
    """Run ``check(i)`` ``repeat`` times in each of ``n`` threads; re-raise any failure."""
    errors = []

    def work(i):
        try:
            for _ in range(repeat):
                check(i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors


def test_threads_share_a_device(rng, device):
    layers = [make_layer(rng, t, 64, n, 32) for t, n in ((1, 8), (3, 16), (6, 24), (9, 8))]
    refs = [_ref(d) for d in layers]

    def check(i):
        for alg in ("tiled", "cooperative"):
            y = vq.linear_qta8a_qga4w(**layers[i], algorithm=alg, device=device)
            np.testing.assert_allclose(y, refs[i], rtol=1e-5, atol=1e-5)
    _in_threads(check)


def test_threads_evict_recorded_calls(rng, device):
    """More token counts from several threads than a layer keeps recorded calls: calls are
    dropped (least recently used) while other threads look them up."""
    d = make_layer(rng, 1, 64, 16, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
    dl = vq.DeviceLinear.of(qw, device)
    inputs = [make_layer(np.random.default_rng(t), t, 64, 16, 32) for t in range(1, 13)]
    refs = [vq.linear_qta8a_qga4w(e["x_q"], e["x_scale"], e["x_zero_point"], qw,
                                  algorithm="reference") for e in inputs]
    assert len(inputs) > dl.MAX_CALLS

    def check(i):
        for j in range(len(inputs)):
            e = inputs[(i * 5 + j) % len(inputs)]
            y = vq.linear_qta8a_qga4w(e["x_q"], e["x_scale"], e["x_zero_point"], qw,
                                      algorithm="tiled", device=device)
            np.testing.assert_allclose(y, refs[(i * 5 + j) % len(inputs)], rtol=1e-5,
                                       atol=1e-5)
    _in_threads(check, repeat=3)
    assert len(dl.calls) <= dl.MAX_CALLS


def test_a_call_dropped_between_lookup_and_reuse_is_still_run(rng, device):
    """The interleaving the threads above may hit: the least-recently-used trim of another
    thread removes the entry right after this thread found it."""
    from collections import OrderedDict
    d = make_layer(rng, 2, 64, 16, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
    dl = vq.DeviceLinear.of(qw, device)
    args = (d["x_q"], d["x_scale"], d["x_zero_point"], qw)
    want = vq.linear_qta8a_qga4w(*args, algorithm="tiled", device=device)

    class TrimmedMeanwhile(OrderedDict):
        def get(self, key, default=None):
            hit = super().get(key, default)
            self.pop(key, None)             # another thread's trim, just now
            return hit
    dl._calls = TrimmedMeanwhile(dl._calls)
    np.testing.assert_array_equal(vq.linear_qta8a_qga4w(*args, algorithm="tiled",
                                                        device=device), want)


@pytest.mark.usefixtures("device")
def test_threads_on_two_device_objects(rng):
    """Two Device objects (here on the same physical device) used from 4 threads."""
    devs = [vq.Device(), vq.Device()]
    d = make_layer(rng, 5, 64, 16, 32)
    ref = _ref(d)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])

    def check(i):
        y = vq.linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], qw,
                                  algorithm=("tiled", "cooperative")[i % 2],
                                  device=devs[i % 2])
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    _in_threads(check)
    for dev in devs:                           # uploaded once per device
        assert len(vq.DeviceLinear.of(qw, dev).layouts) == 1
        dev.close()


def test_one_weights_alternating_shapes_algorithms_and_outputs(rng, device):
    """A call like one of the weights' last two reuses its recorded call: any change of
    T, algorithm, output type or device must not (including two kinds taking turns)."""
    big = make_layer(rng, 3, 64, 16, 32)
    qw = vq.prepack(big["w_packed"], 32, big["w_scales"], big["w_zeros"])
    for t, alg, int8 in [(1, "tiled", False), (1, "tiled", False), (2, "tiled", False),
                         (1, "cooperative", False), (1, "tiled", True), (1, "tiled", False),
                         (3, "auto", True), (3, "auto", False), (1, "tiled", False),
                         (2, "tiled", False), (1, "tiled", False), (2, "tiled", False),
                         (1, "cooperative", False), (2, "tiled", False), (1, "tiled", True),
                         (1, "cooperative", False), (1, "tiled", True)]:
        d = dict(big, x_q=big["x_q"][:t], x_scale=big["x_scale"][:t],
                 x_zero_point=big["x_zero_point"][:t])
        if int8:
            kw = dict(out_scale=np.full(t, 0.05, np.float32),
                      out_zero_point=np.arange(t, dtype=np.int32))
            y = vq.linear_qta8a_qga4w_qta8o(d["x_q"], d["x_scale"], d["x_zero_point"], qw,
                                            algorithm=alg, device=device, **kw)
            want = vq.linear_qta8a_qga4w_qta8o(d["x_q"], d["x_scale"], d["x_zero_point"], qw,
                                               algorithm="reference", **kw)
            assert y.dtype == np.int8 and y.shape == (t, 16)
            assert np.abs(y.astype(int) - want).max() <= 1, f"T={t} {alg} int8"
        else:
            y = vq.linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], qw,
                                      algorithm=alg, device=device)
            np.testing.assert_allclose(y, _ref(d), rtol=1e-5, atol=1e-5,
                                       err_msg=f"T={t} {alg}")


@pytest.mark.parametrize("eval_io,wait", [(True, "yield"), (True, "block"), (False, "block")],
                         ids=["eval_io-yield", "eval_io-block", "numpy-copies"])
def test_host_round_trip_paths(rng, device, monkeypatch, eval_io, wait):
    """A recorded call's round trip, in one call into the patched kp (Sequence.eval_io,
    waiting by yielding or blocking) or with numpy copies (stock kp): same results for
    float and int8 output, bias on and off, float activations quantized on the device,
    and N not a multiple of 8 (the output's rows are padded on the device)."""
    monkeypatch.setattr(dispatch, "EVAL_IO", eval_io)
    import kp
    if eval_io and getattr(kp, "vkqlinear_patch", 0) < 8:
        pytest.skip("kp without vkqlinear's patch")
    monkeypatch.setattr(device, "wait", wait)
    assert device.wait == wait
    d = make_layer(rng, 3, 64, 20, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])   # fresh calls
    x = (d["x_q"], d["x_scale"], d["x_zero_point"])
    b = rng.standard_normal(20).astype(np.float32)
    for alg in ("tiled", "cooperative"):
        for bias in (None, b, None):
            y = vq.linear_qta8a_qga4w(*x, qw, bias=bias, algorithm=alg, device=device)
            np.testing.assert_allclose(y, _ref(d, bias=bias), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{alg} bias={bias is not None}")
        out_scales, out_zps = np.full(3, 0.05, np.float32), np.array([-3, 0, 7], np.int32)
        y8 = vq.linear_qta8a_qga4w_qta8o(*x, qw, out_scale=out_scales, out_zero_point=out_zps,
                                         algorithm=alg, device=device)
        r8 = vq.linear_qta8a_qga4w_qta8o(*x, qw, out_scale=out_scales, out_zero_point=out_zps,
                                         algorithm="reference")
        assert y8.dtype == np.int8 and np.abs(y8.astype(int) - r8).max() <= 1, alg
    layer = vq.QLinear(qw, bias=b, device=device)
    xf = rng.standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_allclose(layer(xf), layer(xf, algorithm="reference"),
                               rtol=1e-4, atol=1e-4)
    calls = vq.DeviceLinear.of(qw, device).calls
    assert calls and all(c.uses_eval_io == eval_io for c in calls)


def test_eval_io_checks_its_arrays(device):
    """The patched kp's Sequence.eval_io copies only between arrays of one shape and
    dtype kind with contiguous rows, into writeable views; anything else is a ValueError
    before the device runs."""
    import kp
    if not hasattr(kp.Sequence, "eval_io"):
        pytest.skip("kp without vkqlinear's patch")
    mgr = device.manager
    t = mgr.tensor_t(np.zeros(12, np.float32))
    seq = mgr.sequence()
    seq.record(kp.OpTensorSyncDevice([t]))    # one upload: no hazard between commands
    view = t.data()
    padded = view.reshape(3, 4)[:, :3]              # rows with a stride, like a padded output
    src = np.arange(9, dtype=np.float32).reshape(3, 3)
    out = seq.eval_io([src], [padded], padded)
    np.testing.assert_array_equal(out, src)
    assert out.flags.c_contiguous and not np.shares_memory(out, view)
    np.testing.assert_array_equal(view.reshape(3, 4)[:, 3], 0)   # padding untouched
    assert seq.eval_io([], [], None) is None
    src2 = src + 1                                  # waiting by polling the fence
    np.testing.assert_array_equal(seq.eval_io([src2], [padded], padded, 10**9), src2)
    np.testing.assert_array_equal(seq.eval_io([src], [padded], padded, 1), src)  # then blocks
    assert not seq.is_running()
    ro = np.zeros(12, np.float32)
    ro.flags.writeable = False
    for srcs, views, output in [([np.zeros(11, np.float32)], [view], None),   # shape
                                ([np.zeros(12, np.int32)], [view], None),     # dtype kind
                                ([np.zeros(12, np.float64)], [view], None),   # item size
                                ([np.zeros(12, np.float32)], [ro], None),     # read-only
                                ([np.zeros((12, 2), np.float32)[:, 0]], [view], None),
                                ([np.zeros(12, np.float32)], [], None),       # lengths
                                ([], [], [1.0])]:                             # output
        with pytest.raises(ValueError):
            seq.eval_io(srcs, views, output)


def test_every_form_of_the_arguments_gives_the_same_result(rng, device):
    """Canonical numpy arrays and every other accepted form of the same arguments
    (converted by vkqlinear.args, never misread) give the same result."""
    d = make_layer(rng, 4, 64, 16, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
    x, x_scales, x_zps = d["x_q"], d["x_scale"], d["x_zero_point"]
    out_scales, out_zps = np.full(4, 0.05, np.float32), np.array([-3, 0, 7, 1], np.int32)

    def run(*a, **k):
        q8 = dict(out_scale=k.pop("out_scale", out_scales),
                  out_zero_point=k.pop("out_zero_point", out_zps))
        y = vq.linear_qta8a_qga4w(*a, qw, device=device, **k)
        y8 = vq.linear_qta8a_qga4w_qta8o(*a, qw, device=device, **q8, **k)
        return y, y8
    want, want8 = run(x, x_scales, x_zps)
    np.testing.assert_allclose(want, _ref(d), rtol=1e-5, atol=1e-5)
    big = np.dtype(">f4")
    for label, args, kw in [
            ("Fortran x_q", (np.asfortranarray(x), x_scales, x_zps), {}),
            ("strided x_scale", (x, np.repeat(x_scales, 2)[::2], x_zps), {}),
            ("int8 zero points", (x, x_scales, x_zps.astype(np.int8)), {}),
            ("big-endian scales", (x, x_scales.astype(big), x_zps), {}),
            ("lists", (x.tolist(), x_scales.tolist(), x_zps.tolist()), {}),
            ("3-D x_q", (x[None], x_scales[None], x_zps[None]), {}),
            ("algorithm", (x, x_scales, x_zps), {"algorithm": "tiled"}),
            ("int8 out_zero_point", (x, x_scales, x_zps),
             {"out_zero_point": out_zps.astype(np.int8)})]:
        y, y8 = run(*args, **kw)
        np.testing.assert_allclose(y.reshape(want.shape), want, rtol=1e-6, atol=1e-6,
                                   err_msg=label)
        np.testing.assert_array_equal(y8.reshape(want8.shape), want8, err_msg=label)
    for bad, match in [((x, np.array([1, np.nan, 1, 1], np.float32), x_zps), "x_scale"),
                       ((x, x_scales, np.array([0, 0, 300, 0], np.int32)), "x_zero_point")]:
        with pytest.raises(ValueError, match=match):
            vq.linear_qta8a_qga4w(*bad, qw, device=device)
    with pytest.raises(ValueError, match="out_scale"):
        vq.linear_qta8a_qga4w_qta8o(x, x_scales, x_zps, qw, out_scale=-out_scales,
                                    out_zero_point=out_zps,
                                    device=device)


def test_dropped_weights_release_what_was_made_of_them(rng, device):
    """The DeviceLinear (uploads, recorded calls) goes with its weights: a model that
    replaces its layers does not accumulate device memory."""
    import gc
    import weakref
    d = make_layer(rng, 2, 64, 16, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"], device=device)
    vq.linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], qw, device=device)
    owner = weakref.ref(vq.DeviceLinear.of(qw, device))
    (call,) = owner().calls
    call = weakref.ref(call)
    del qw
    gc.collect()
    assert owner() is None and call() is None


def _linear_pipelines(qw, device):
    return [p for c in vq.DeviceLinear.of(qw, device).calls for p in c.pipelines]


def test_calls_of_one_kernel_share_its_pipeline(rng, device, monkeypatch):
    """A new token count, or another layer with the kernel's configuration, binds its own
    tensors to the pipeline already compiled (kp patch item 10); the results are those of
    pipelines of their own, bit for bit."""
    import kp
    if getattr(kp, "vkqlinear_patch", 0) < 10:
        pytest.skip("needs the kp that tools/setup.sh builds")
    d = make_layer(rng, 7, 128, 24, 32)
    e = make_layer(rng, 7, 64, 40, 32)
    outs = {}
    for share in (True, False):
        monkeypatch.setattr(device, "_kp_shares", share)
        for name, lay in (("d", d), ("e", e)):
            qw = vq.prepack(lay["w_packed"], 32, lay["w_scales"], lay["w_zeros"])
            for t in (7, 5):      # the same kernel (4 tokens an invocation)
                outs[share, name, t] = vq.linear_qta8a_qga4w(
                    lay["x_q"][:t], lay["x_scale"][:t], lay["x_zero_point"][:t], qw,
                    algorithm="tiled", device=device)
            pipes = _linear_pipelines(qw, device)
            kernels = [c.kernel for c in vq.DeviceLinear.of(qw, device).calls]
            if share:     # the first call may share a pipeline of an earlier test's layer
                assert kernels[0] == kernels[1] and pipes[1].shared
                if name == "e":
                    assert pipes[0].shared
            else:
                assert not any(p.shared for p in pipes)
    for (_, name, t), y in outs.items():
        lay = d if name == "d" else e
        np.testing.assert_array_equal(y, outs[False, name, t])
        np.testing.assert_allclose(y, _ref({k: (v[:t] if k.startswith("x_") else v)
                                            for k, v in lay.items()}),
                                   rtol=1e-5, atol=1e-5)


def test_a_shared_pipeline_keeps_no_dropped_call_alive(rng, device):
    """The device's table of pipelines refers to them weakly: the weights and calls of a
    dropped layer go, and a later layer compiles its pipeline anew and is right."""
    import gc
    import weakref
    d = make_layer(rng, 2, 64, 16, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
    x = (d["x_q"], d["x_scale"], d["x_zero_point"])
    vq.linear_qta8a_qga4w(*x, qw, algorithm="cooperative", device=device)
    pipes = [weakref.ref(p) for p in _linear_pipelines(qw, device)]
    call = weakref.ref(vq.DeviceLinear.of(qw, device).calls[0])
    del qw
    gc.collect()
    assert call() is None and all(p() is None for p in pipes)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
    np.testing.assert_allclose(
        vq.linear_qta8a_qga4w(*x, qw, algorithm="cooperative", device=device), _ref(d),
        rtol=1e-5, atol=1e-5)


def test_a_pipeline_source_of_other_constants_is_refused(device):
    """kp checks what it is asked to share: other specialization constants raise, and the
    request does not outlive the failed algorithm."""
    import kp
    if getattr(kp, "vkqlinear_patch", 0) < 10:
        pytest.skip("needs the kp that tools/setup.sh builds")
    from vkqlinear.compiler import compile_shader
    # the quantizer's five bindings: x, packed x, scales, zero points, non-finite flag
    tensors = device.io_tensors([np.zeros(16, np.float32), np.zeros(4, np.uint32),
                                 np.zeros(1, np.float32), np.zeros(1, np.int32),
                                 np.zeros(1, np.uint32)], "test")
    spirv = compile_shader("quantize_tokens.comp", {})
    push = np.array([1, 16, 16, 0, 1, 1], np.uint32)
    source = device.algorithm(tensors, spirv, (1, 1, 1), dispatch.quantizer_constants("spec"),
                              push)
    other = dispatch.quantizer_constants("torchao")
    kp.Algorithm.set_next_pipeline_source(source.algo)
    with pytest.raises(RuntimeError, match="pipeline source"):
        device.manager.algorithm(tensors, spirv, (1, 1, 1), other, push)
    again = device.manager.algorithm(tensors, spirv, (1, 1, 1), other, push)
    assert not again.shares_pipeline()
    same = device.algorithm(tensors, spirv, (1, 1, 1), dispatch.quantizer_constants("spec"),
                            push)
    assert same.shared
