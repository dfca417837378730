"""Property tests (hypothesis): random valid shapes and values, including the extremes,
every GPU algorithm against the contract's tolerance; random invalid inputs raise only the
documented exception types."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vkqlinear as vq
from vkqlinear import conformance as C

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@st.composite
def problems(draw):
    g = draw(st.sampled_from([8, 16, 32, 64]))
    k = g * draw(st.integers(1, 4))
    t = draw(st.integers(0, 9))
    n = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    xmode = draw(st.sampled_from(["random", "-128", "127"]))
    if xmode == "random":
        x_q = rng.integers(-128, 128, (t, k), dtype=np.int8)
    else:
        x_q = np.full((t, k), int(xmode), np.int8)
    zmode = draw(st.sampled_from(["random", "-128", "127"]))
    x_zp = (rng.integers(-128, 128, t).astype(np.int32) if zmode == "random"
            else np.full(t, int(zmode), np.int32))
    e_x = draw(st.integers(-30, 30))
    e_w = draw(st.integers(-30, 30))
    if abs(e_x + e_w) > 30:   # keep the result finite in float32
        e_w = -e_x
    x_scale = (rng.uniform(0.5, 2, t) * 10.0 ** e_x).astype(np.float32)
    w_packed = rng.integers(0, 256, (n, k // 2), dtype=np.uint8)
    if draw(st.booleans()):
        w_packed[:] = draw(st.sampled_from([0x00, 0x88, 0xFF]))
    w_scales = (rng.uniform(-2, 2, (n, k // g)) * 10.0 ** e_w).astype(np.float32)
    w_zeros = rng.integers(-128, 128, (n, k // g)).astype(np.int32)
    bias = (rng.standard_normal(n).astype(np.float32) * 10.0 ** (e_x + e_w)
            if draw(st.booleans()) else None)
    return dict(x_q=x_q, x_scale=x_scale, x_zero_point=x_zp, w_packed=w_packed, group_size=g,
                w_scales=w_scales, w_zeros=w_zeros, bias=bias)


@SETTINGS
@given(d=problems())
@pytest.mark.parametrize("algorithm,variant", [("tiled", None), ("cooperative", "portable"),
                                               ("cooperative", "subgroup"),
                                               ("reference", None)])
def test_random_valid_inputs_conform(d, algorithm, variant, device):
    if variant and (algorithm, vq.Variant.parse(variant)) not in C.kernel_variants(device):
        pytest.skip(f"{variant} not supported by {device.name}")
    y = vq.linear_qta8a_qga4w(**d, algorithm=algorithm, device=device, variant=variant)
    ok, msg = C.check(y, dict(d, w_offsets=None))
    assert ok, f"[{algorithm}] T={d['x_q'].shape[0]} K={d['x_q'].shape[1]} " \
               f"N={d['w_packed'].shape[0]} g={d['group_size']}: {msg}"


def _mutations():
    bad_values = st.one_of(
        st.none(), st.integers(-1000, 1000), st.floats(allow_nan=True), st.text(max_size=3),
        st.just(np.zeros((2, 2), np.float64)), st.just(np.zeros((3,), np.int64)),
        st.just(np.full((3,), np.nan, np.float32)), st.just(np.zeros((0,), np.int8)),
        st.just([[1, 2], [3]]), st.just(np.ones((3, 64), np.uint8)))
    return st.tuples(st.sampled_from(["x_q", "x_scale", "x_zero_point", "w_packed",
                                      "group_size", "w_scales", "w_zeros", "bias",
                                      "algorithm"]), bad_values)


def _still_valid(name, value):
    """Whether the mutation leaves a valid call (the base call below has K=64, N=8, T=3,
    group size 32): every other one must raise TypeError or ValueError."""
    if name == "bias":
        return value is None
    if name == "group_size":
        return type(value) is int and value == 32
    if name == "x_zero_point":       # int64 zero points are accepted and converted
        return isinstance(value, np.ndarray) and value.dtype == np.int64 and \
            value.shape == (3,)
    return False


@SETTINGS
@given(m=_mutations())
def test_random_invalid_inputs_raise_documented_errors(m, device):
    rng = np.random.default_rng(0)
    x_q, xs, xz = vq.quantize_per_token(rng.standard_normal((3, 64)).astype(np.float32))
    wp, ws, wz = vq.quantize_weights(rng.standard_normal((8, 64)).astype(np.float32), 32)
    args = dict(x_q=x_q, x_scale=xs, x_zero_point=xz, w_packed=wp, group_size=32,
                w_scales=ws, w_zeros=wz, bias=None, algorithm="tiled")
    name, value = m
    args[name] = value
    if _still_valid(name, value):
        y = vq.linear_qta8a_qga4w(**args, device=device)
        ref = vq.linear_qta8a_qga4w(**dict(args, algorithm="reference"))
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    else:
        with pytest.raises((TypeError, ValueError), match=f"^{name}|^w_|^group_size|^x_"):
            vq.linear_qta8a_qga4w(**args, device=device)
    # and the device is still right afterwards
    y = vq.linear_qta8a_qga4w(x_q, xs, xz, wp, 32, ws, wz, algorithm="tiled", device=device)
    r = vq.linear_qta8a_qga4w(x_q, xs, xz, wp, 32, ws, wz, algorithm="reference")
    np.testing.assert_allclose(y, r, rtol=1e-5, atol=1e-5)
