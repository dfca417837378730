"""Float in, float out: the on-device quantizer (bit for bit against the CPU helper and
PyTorch), QLinear (both constructors, int8 output, batch dims, torch tensors, errors),
chaining through DeviceTensor, no re-recording, and the better-weights search."""

import dataclasses

import numpy as np
import pytest

import vkqlinear as vq

from .conftest import make_layer


def _device_quantize(device, x, act_quant="spec", g=8):
    """Quantize ``x [T, K]`` with the on-device quantizer; its (x_q, scale, zp). With a
    group size the kernels pad (not a multiple of 8), the padding is checked to be the
    zero point and left out."""
    t, k = x.shape
    w = vq.QuantizedWeights(np.zeros((8, k // 2), np.uint8), g,     # (g = 12 as ExecuTorch)
                            np.ones((8, k // g), np.float32), np.zeros((8, k // g)))
    _, call = vq.DeviceLinear.of(w, device).run_float("tiled", t, x, act_quant=act_quant)
    q, s, z = call.quantized_activations()
    if g % 8:
        q = q.reshape(t, k // g, -1)
        assert (q[:, :, g:] == z[:, None, None]).all()
        q = q[:, :, :g].reshape(t, k)
    return q, s, z


def _other_reductions(device):
    """Devices on which the quantizer reduces another way than on ``device``: told no
    subgroup arithmetic (shared memory), and twice and half the real subgroup size (a
    workgroup of two subgroups, or part of one)."""
    real = device.caps.subgroup_size
    yield "shared", dict(subgroup_arithmetic=False)
    if device.caps.subgroup_reduce:
        yield "two subgroups", dict(subgroup_size=2 * real)
        if real > 4:
            yield "half a subgroup", dict(subgroup_size=real // 2)


def _adversarial_rows(rng, k):
    rows = [np.zeros(k),                                   # all zero: eps, 127
            np.full(k, 3.0), np.full(k, -7.25),              # constant, one sign
            np.linspace(-100, 155, k),                      # scale exactly 1, zp -28
            (np.arange(k) % 9 - 4) + 0.5,                   # ties everywhere
            np.r_[-100, 155, (np.arange(k - 2) % 40) - 20.5],  # ties with scale 1
            np.r_[-1.0, 1.0, rng.integers(-255, 256, k - 2) / 255.0],  # exact multiples
            rng.standard_normal(k) * 1e-30,                  # tiny
            np.r_[1e-40, -3e-41, np.zeros(k - 2)],           # subnormal
            rng.standard_normal(k) * 1e30,                   # huge
            np.r_[1e6, rng.standard_normal(k - 1)],          # one outlier
            rng.uniform(0, 1, k), -rng.uniform(0, 1, k)]
    for e in range(-20, 21, 4):                             # every magnitude
        rows.append(rng.standard_normal(k) * 10.0 ** e)
    for _ in range(40):                                     # random, with ties planted
        s = 2.0 ** rng.integers(-10, 10)
        r = rng.standard_normal(k) * s * 60
        r[: k // 4] = (rng.integers(-60, 60, k // 4) + 0.5) * s
        rows.append(r)
    return np.array(rows, dtype=np.float32)


def _check_quantizer(device, x, act_quant="spec", g=8, what=""):
    q, s, z = _device_quantize(device, x, act_quant, g)
    rq, rs, rz = vq.quantize_per_token(x, act_quant)
    bad = np.nonzero((q != rq).any(axis=1) | (s != rs) | (z != rz))[0]
    assert bad.size == 0, f"{what}: rows {bad.tolist()} differ, first: scale " \
                          f"{s[bad[0]]!r} vs {rs[bad[0]]!r}, zp {z[bad[0]]} vs {rz[bad[0]]}"


@pytest.mark.parametrize("act_quant", ["spec", "torchao"])
@pytest.mark.parametrize("k,g", [(8, 8), (64, 8), (1000, 8), (996, 12)])
def test_device_quantizer_is_bit_identical(device, rng, k, g, act_quant):
    _check_quantizer(device, _adversarial_rows(rng, k), act_quant, g)


def test_device_quantizer_reduces_right_every_way(device, rng):
    """The subgroup reduction, and the shared-memory one it falls back to when the
    workgroup is not one subgroup or the device has no subgroup arithmetic."""
    x = _adversarial_rows(rng, 1000)
    for what, caps in _other_reductions(device):
        with vq.Device() as dev:
            dev.caps = dataclasses.replace(dev.caps, **caps)
            for act_quant in ("spec", "torchao"):
                _check_quantizer(dev, x, act_quant, what=f"{what}, {act_quant}")


def test_device_quantizer_matches_torch(device, rng):
    torch = pytest.importorskip("torch")
    from torch.ao.quantization.fx import _decomposed  # noqa: F401
    qd = torch.ops.quantized_decomposed
    x = _adversarial_rows(rng, 64)
    xt = torch.from_numpy(x)
    ts, tz = qd.choose_qparams_per_token_asymmetric(xt, torch.int8)
    # float32 scales: the contract's float32 math (see tests/test_quant.py:_torch_per_token)
    tq = qd.quantize_per_token(xt, ts.to(torch.float32), tz, -128, 127, torch.int8)
    q, s, z = _device_quantize(device, x)
    np.testing.assert_array_equal(q, tq.numpy())
    np.testing.assert_array_equal(s, ts.numpy().reshape(-1).astype(np.float32))
    np.testing.assert_array_equal(z, tz.numpy().reshape(-1).astype(np.int32))


def _layer(rng, n=40, k=64, g=32, bias=True, **kw):
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return vq.QLinear.from_float(w, b, group_size=g, **kw), w, b


@pytest.mark.parametrize("algorithm", ["tiled", "cooperative", "auto"])
def test_qlinear_equals_the_op_on_quantized_activations(device, rng, algorithm):
    layer, _, b = _layer(rng)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    y = layer(x, algorithm=algorithm)
    xq, xs, xz = vq.quantize_per_token(x)
    w = layer.weights
    want = vq.linear_qta8a_qga4w(xq, xs, xz, w, bias=b, algorithm=algorithm, device=device)
    assert y.shape == (2, 3, 40) and y.dtype == np.float32
    np.testing.assert_array_equal(y, want)        # same integers in, same kernel: same bits
    ref = layer(x, algorithm="reference")
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_qlinear_int8_output_and_constructors(device, rng):
    n, k, g = 24, 64, 16
    w = rng.standard_normal((n, k)).astype(np.float32)
    wp, s, z = vq.quantize_weights(w, g)
    o = vq.offsets_from_zero_points(s, z)
    layers = [vq.QLinear.from_quantized(wp, g, s, z),
              vq.QLinear.from_quantized(wp, g, s, w_offsets=o),
              vq.QLinear.from_quantized(
                  wp, g, scales_and_zeros=vq.offsets_to_scales_and_zeros(s, o)),
              vq.QLinear(vq.prepack(wp, g, s, z))]
    x = rng.standard_normal((5, k)).astype(np.float32)
    ys = [layer(x) for layer in layers]
    for y in ys[1:]:
        np.testing.assert_allclose(y, ys[0], rtol=1e-5, atol=1e-5)
    os_, oz = np.full(5, 0.2, np.float32), np.arange(5, dtype=np.int32) - 2
    y8 = layers[0](x, out_scale=os_, out_zero_point=oz)
    r8 = layers[0](x, out_scale=os_, out_zero_point=oz, algorithm="reference")
    assert y8.dtype == np.int8 and np.abs(y8.astype(int) - r8).max() <= 1
    assert layers[0].in_features == k and layers[0].out_features == n


def test_qlinear_torch_in_torch_out(device, rng):
    torch = pytest.importorskip("torch")
    layer, _, _ = _layer(rng)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    y = layer(torch.from_numpy(x))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    np.testing.assert_array_equal(y.numpy(), layer(x))


def test_qlinear_empty_and_errors(device, rng):
    layer, _, _ = _layer(rng)
    assert layer(np.zeros((0, 64), np.float32)).shape == (0, 40)
    with pytest.raises(ValueError, match="^x: expected last dimension K=64"):
        layer(np.zeros((2, 32), np.float32))
    with pytest.raises(ValueError, match="^x: expected finite"):
        layer(np.full((1, 64), np.nan, np.float32))
    with pytest.raises(TypeError, match="^x"):
        layer(np.zeros((1, 64), np.float64))
    with pytest.raises(ValueError, match="^output"):
        layer(np.zeros((1, 64), np.float32), output="gpu")
    with pytest.raises(ValueError, match="^output"):
        layer(np.zeros((1, 64), np.float32), out_scale=[1.0], out_zero_point=[0],
              output="device")
    with pytest.raises(ValueError, match="^out_scale"):
        layer(np.zeros((1, 64), np.float32), out_scale=[-1.0], out_zero_point=[0])
    with pytest.raises(ValueError, match="^algorithm"):
        layer(np.zeros((1, 64), np.float32), algorithm="fast")
    with pytest.raises(ValueError, match="^method"):
        vq.QLinear.from_float(np.ones((8, 64), np.float32), method="gptq")
    with pytest.raises(ValueError, match="^bias"):
        vq.QLinear.from_float(np.ones((8, 64), np.float32), bias=np.ones(9, np.float32))
    with pytest.raises(TypeError, match="^weights"):
        vq.QLinear(np.ones((8, 32), np.uint8))


def test_chaining_stays_on_the_device(device, rng):
    l1, _, _ = _layer(rng, n=64, k=32, g=32)
    l2, _, _ = _layer(rng, n=16, k=64, g=16)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    h = l1(x, output="device")
    assert isinstance(h, vq.DeviceTensor) and h.shape == (3, 64)
    y = l2(h)
    host = l1(x)
    np.testing.assert_array_equal(h.numpy(), host)
    np.testing.assert_array_equal(y, l2(host))
    # the chained call is recorded once: calling it again records nothing new
    h = l1(x, output="device")
    calls = vq.DeviceLinear.of(l2.weights, h.device).calls
    l2(h)
    assert set(vq.DeviceLinear.of(l2.weights, h.device).calls) == set(calls)
    # a handle overwritten by a later call of its producer is refused, not misread
    l1(2 * x, output="device")
    with pytest.raises(ValueError, match="overwritten"):
        l2(h)
    with pytest.raises(ValueError, match="^x: expected last dimension"):
        l1(l1(x, output="device"))


@pytest.mark.parametrize("algorithm", ["tiled", "cooperative", "reference"])
def test_non_finite_activations_are_refused_wherever_they_are(device, rng, algorithm):
    layer, _, _ = _layer(rng, n=40, k=1024, g=32)
    for t in (1, 5):
        x = rng.standard_normal((t, 1024)).astype(np.float32)
        want = layer(x, algorithm=algorithm)
        for bad in (np.nan, np.inf, -np.inf):
            for tok, k in ((0, 0), (t - 1, 1023), (t // 2, 517)):
                xb = x.copy()
                xb[tok, k] = bad
                with pytest.raises(ValueError, match="^x: expected finite values"):
                    layer(xb, algorithm=algorithm)
                if algorithm != "reference":
                    with pytest.raises(ValueError, match="^x: expected finite values"):
                        layer(xb, algorithm=algorithm, output="device")
                # the next valid call is right (the flag does not stick)
                np.testing.assert_array_equal(layer(x, algorithm=algorithm), want)


@pytest.mark.parametrize("algorithm", ["tiled", "cooperative"])
def test_a_device_tensor_that_overflowed_is_refused(device, rng, algorithm):
    big = vq.QLinear.from_float(np.full((64, 32), 1e30, np.float32))
    l2, _, _ = _layer(rng, n=16, k=64, g=16)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    x[1] = 1e10                                        # row 1 overflows float32: inf
    h = big(x, algorithm=algorithm, output="device")
    assert np.isinf(h.numpy()[1]).all() and np.isfinite(h.numpy()[[0, 2]]).all()
    with pytest.raises(ValueError, match="^x: the DeviceTensor holds values that are not "
                                         "finite"):
        l2(h, algorithm=algorithm)
    x[1] = 1.0
    h = big(x, algorithm=algorithm, output="device")
    np.testing.assert_array_equal(l2(h, algorithm=algorithm),
                                  l2(h.numpy(), algorithm=algorithm))


def test_staged_memory_gives_the_same_results(rng, device, monkeypatch):
    """A device without unified memory (a discrete GPU): inputs and outputs go through
    staging copies; every path gives the same numbers as host-visible buffers."""
    l1, _, _ = _layer(rng, n=64, k=32, g=32)
    l2, _, _ = _layer(rng, n=16, k=64, g=16)
    x = rng.standard_normal((3, 32)).astype(np.float32)
    d = make_layer(rng, 3, 64, 40, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
    xq = (d["x_q"], d["x_scale"], d["x_zero_point"])
    os_, oz = np.full(3, 0.05, np.float32), np.arange(3, dtype=np.int32)

    def run(dev):
        out = []
        for algorithm in ("tiled", "cooperative"):
            kw = dict(algorithm=algorithm, device=dev)
            out += [vq.linear_qta8a_qga4w(*xq, qw, **kw),
                    vq.linear_qta8a_qga4w_qta8o(*xq, qw, out_scale=os_, out_zero_point=oz,
                                                **kw)]
            a1 = vq.QLinear(l1.weights, l1.bias, dev)
            a2 = vq.QLinear(l2.weights, l2.bias, dev)
            out += [a1(x, algorithm=algorithm), a2(a1(x, algorithm=algorithm,
                                                      output="device"), algorithm=algorithm)]
            with pytest.raises(ValueError, match="^x: expected finite values"):
                a1(np.full((3, 32), np.nan, np.float32), algorithm=algorithm)
            out.append(a1(x, algorithm=algorithm))
        return out

    with vq.Device() as dev:
        unified = run(dev)
    monkeypatch.setattr(vq.Device, "unified_memory", property(lambda self: False))
    with vq.Device() as dev:
        staged = run(dev)
        import kp
        calls = vq.DeviceLinear.of(qw, dev).calls + vq.DeviceLinear.of(l1.weights, dev).calls
        assert calls and all(c.x.tensor_type() == kp.TensorTypes.device for c in calls)
    for a, b in zip(unified, staged):
        np.testing.assert_array_equal(a, b)


def test_repeated_calls_record_nothing_new(device, rng):
    layer, _, _ = _layer(rng)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    layer(x)
    dl = vq.DeviceLinear.of(layer.weights, vq.default_device())
    before = [(c, c.seq) for c in dl.calls]
    for _ in range(3):
        layer(x * 1.5)
    assert [(c, c.seq) for c in dl.calls] == before and len(before) == 1


@pytest.mark.usefixtures("device")
def test_device_tensor_after_close(rng):
    with vq.Device() as dev:
        layer = vq.QLinear.from_float(rng.standard_normal((16, 32)).astype(np.float32),
                                      device=dev)
        h = layer(np.ones((1, 32), np.float32), output="device")
    with pytest.raises(vq.DeviceClosedError):
        h.numpy()


def test_search_never_worse_than_minmax(rng):
    w = (rng.standard_normal((48, 256)) * rng.uniform(0.01, 1, (48, 1))).astype(np.float32)
    w[0, :32] = 0.5                      # a constant group
    w[1, 5] = 40.0                       # an outlier
    for g in (32, 128):
        wp, s, z = vq.quantize_weights(w, g)
        e0 = (vq.dequantize_weights(wp, g, s, vq.offsets_from_zero_points(s, z)) - w) ** 2
        wp2, s2, o2 = vq.quantize_weights_search(w, g)
        e1 = (vq.dequantize_weights(wp2, g, s2, o2) - w) ** 2
        per0 = e0.reshape(48, -1, g).sum(-1)
        per1 = e1.reshape(48, -1, g).sum(-1)
        assert np.all(per1 <= per0 * (1 + 1e-6) + 1e-12)
        assert e1[2:].sum() < 0.9 * e0[2:].sum()  # and clearly better on ordinary rows
        assert np.all(s2 > 0) and np.all(np.isfinite(o2))
