"""Quantization helpers against PyTorch's quantized_decomposed ops (identical integers and
scales) and against the contract's formulas; pack/unpack; round-trip error."""

import numpy as np
import pytest

import vkqlinear as vq

torch = pytest.importorskip("torch")
from torch.ao.quantization.fx import _decomposed  # noqa: E402,F401  (registers the ops)

qd = torch.ops.quantized_decomposed


def _torch_per_token(x):
    """PyTorch's two ops with the contract's float32 math. Note: torch 2.13's
    choose_qparams_per_token_asymmetric returns the (float32-computed) scale as float64, and
    quantize_per_token then multiplies in float64, which can round near-ties differently;
    the op documents float32 scales, which is what docs/spec.md specifies, so they are passed."""
    xt = torch.from_numpy(x)
    scale, zp = qd.choose_qparams_per_token_asymmetric(xt, torch.int8)
    q = qd.quantize_per_token(xt, scale.to(torch.float32), zp, -128, 127, torch.int8)
    return q.numpy(), scale.numpy().reshape(x.shape[:-1]), zp.numpy().reshape(x.shape[:-1])


@pytest.mark.parametrize("shape", [(1, 8), (7, 64), (3, 5, 33), (64, 1024)])
def test_per_token_matches_torch_exactly(shape, rng):
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 100, shape[:-1] + (1,))
         ).astype(np.float32)
    q, s, z = vq.quantize_per_token(x)
    tq, ts, tz = _torch_per_token(x)
    np.testing.assert_array_equal(q, tq)
    np.testing.assert_array_equal(s.view(np.int32), ts.astype(np.float32).view(np.int32))
    np.testing.assert_array_equal(z, tz.astype(np.int32))
    assert q.dtype == np.int8 and s.dtype == np.float32 and z.dtype == np.int32


def test_per_token_edge_rows_match_torch():
    x = np.array([[0, 0, 0, 0],            # all zero: scale = eps, zp = 127... per SPEC
                  [1, 2, 3, 4],            # all positive
                  [-1, -2, -3, -4],        # all negative
                  [5, 5, 5, 5],
                  [-0.5, 0.5, 0.25, -0.25],  # ties
                  [1e-30, -1e-30, 0, 0],
                  [3e4, -3e4, 1, 0]], dtype=np.float32)
    q, s, z = vq.quantize_per_token(x)
    tq, ts, tz = _torch_per_token(x)
    np.testing.assert_array_equal(q, tq)
    np.testing.assert_array_equal(s, ts.astype(np.float32))
    np.testing.assert_array_equal(z, tz.astype(np.int32))
    assert s[0] == np.finfo(np.float32).eps and z[0] == 127  # SPEC: all-zero row
    assert np.all(q[0] == 127)


def test_dequantize_per_token_matches_torch(rng):
    x = rng.standard_normal((6, 48)).astype(np.float32)
    q, s, z = vq.quantize_per_token(x)
    ref = qd.dequantize_per_token(torch.from_numpy(q), torch.from_numpy(s).reshape(-1, 1),
                                  torch.from_numpy(z).reshape(-1, 1), -128, 127, torch.int8,
                                  torch.float32).numpy()
    np.testing.assert_array_equal(vq.dequantize_per_token(q, s, z), ref)
    # and the round trip is within half a step (plus float rounding)
    assert np.all(np.abs(vq.dequantize_per_token(q, s, z) - x) <= s[:, None] * 0.5001)


def _spec_group_qparams_torch(w, g, symmetric):
    """the contract's group formulas written again with torch float32 ops."""
    wt = torch.from_numpy(w).reshape(w.shape[0], -1, g)
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        s = (wt.abs().amax(-1) / 7.5).clamp(min=eps)
        z = torch.zeros_like(s)
    else:
        mn = torch.clamp(wt.amin(-1), max=0)
        mx = torch.clamp(wt.amax(-1), min=0)
        s = ((mx - mn) / 15).clamp(min=eps)
        z = torch.clamp(torch.round(-8 - mn / s), -8, 7)
    return s, z


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("n,k,g", [(4, 32, 8), (16, 128, 32), (3, 256, 128), (5, 64, 64)])
def test_group_quantization_matches_torch(n, k, g, symmetric, rng):
    w = (rng.standard_normal((n, k)) * rng.uniform(0.001, 10, (n, 1))).astype(np.float32)
    w[0, :g] = 0.0                        # an all-zero group: s = eps
    packed, s, z = vq.quantize_weights(w, g, symmetric=symmetric)
    ts, tz = _spec_group_qparams_torch(w, g, symmetric)
    np.testing.assert_array_equal(s, ts.numpy())
    np.testing.assert_array_equal(z, tz.numpy().astype(np.int32))
    tq = qd.quantize_per_channel_group(torch.from_numpy(w), ts, tz.to(torch.int32), -8, 7,
                                       torch.int8, g).numpy()
    np.testing.assert_array_equal(vq.unpack_int4(packed), tq)
    tdq = qd.dequantize_per_channel_group(torch.from_numpy(tq), ts, tz.to(torch.int32), -8, 7,
                                          torch.int8, g, torch.float32).numpy()
    o = vq.offsets_from_zero_points(s, z)
    np.testing.assert_allclose(vq.dequantize_weights(packed, g, s, o), tdq, rtol=1e-6,
                               atol=1e-30)
    # round trip within half a step (plus float rounding)
    err = np.abs(tdq - w).reshape(n, k // g, g)
    assert np.all(err <= s[..., None] * 0.5 * (1 + 1e-5) + 1e-30)
    if symmetric:
        assert np.all(z == 0)


def test_pack_layout_is_spec():
    # element 2j -> high nibble of byte j, 2j+1 -> low nibble; u = q + 8
    q = np.array([[-8, 7, 0, -1]], dtype=np.int8)
    p = vq.pack_int4(q)
    assert p.dtype == np.uint8
    np.testing.assert_array_equal(p, [[(0 << 4) | 15, (8 << 4) | 7]])


def test_pack_unpack_round_trip(rng):
    q = rng.integers(-8, 8, size=(5, 7, 64), dtype=np.int8)
    np.testing.assert_array_equal(vq.unpack_int4(vq.pack_int4(q)), q)
    b = rng.integers(0, 256, size=(9, 16), dtype=np.uint8)
    np.testing.assert_array_equal(vq.pack_int4(vq.unpack_int4(b)), b)


def test_pack_rejects_out_of_range_and_odd():
    with pytest.raises(ValueError, match="q"):
        vq.pack_int4(np.array([[8, 0]]))
    with pytest.raises(ValueError, match="even"):
        vq.pack_int4(np.zeros((2, 3), np.int8))


def test_scales_and_zeros_round_trip(rng):
    s = rng.uniform(0.1, 1, (6, 4)).astype(np.float32)
    o = rng.standard_normal((6, 4)).astype(np.float32)
    sz = vq.offsets_to_scales_and_zeros(s, o)
    assert sz.shape == (4, 6, 2)
    np.testing.assert_array_equal(sz[2, 3], [s[3, 2], o[3, 2]])
    s2, o2 = vq.scales_and_zeros_to_offsets(sz)
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_array_equal(o2, o)


@pytest.mark.parametrize("bad", [5, 12, 0, -8])
def test_quantize_weights_bad_group_size(bad):
    with pytest.raises(ValueError, match="group_size"):
        vq.quantize_weights(np.zeros((2, 64), np.float32), bad)
