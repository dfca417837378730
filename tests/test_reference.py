"""The CPU reference path against independent float64 evaluations of the contract's formula."""

import numpy as np
import pytest

import vkqlinear as vq
from vkqlinear import conformance as C
from vkqlinear import reference

from .conftest import make_layer

CASES = C.cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reference_conforms(case):
    ok, msg = C.run_case(case, "reference")
    assert ok, f"{case.name}: {msg}"


def _loop_reference(d, bias=None):
    """A third evaluation, element by element in Python float64 (tiny shapes only)."""
    xq, xs, xz = d["x_q"], d["x_scale"], d["x_zero_point"]
    q = vq.unpack_int4(d["w_packed"])
    s, z, g = d["w_scales"], d["w_zeros"], d["group_size"]
    t, k = xq.shape
    n = q.shape[0]
    y = np.zeros((t, n))
    for i in range(t):
        for j in range(n):
            acc = 0.0
            for kk in range(k):
                w = float(s[j, kk // g]) * (int(q[j, kk]) - int(z[j, kk // g]))
                acc += float(xs[i]) * (int(xq[i, kk]) - int(xz[i])) * w
            y[i, j] = acc + (float(bias[j]) if bias is not None else 0.0)
    return y


def test_reference_matches_elementwise_loop(rng):
    d = make_layer(rng, 3, 32, 5, 8)
    bias = rng.standard_normal(5).astype(np.float32)
    y = vq.linear_qta8a_qga4w(**d, bias=bias, algorithm="reference")
    np.testing.assert_allclose(y, _loop_reference(d, bias), rtol=1e-6, atol=1e-6)


def test_group_sums_are_exact_integers():
    # Large K and extreme values: the float64 group sums must stay exact integers.
    k, g = 8192, 8192
    xq = np.full((1, k), -128, np.int8)
    xz = np.array([127], np.int32)
    q = np.full((2, k), -8, np.int8)
    w_scales = np.ones((2, 1), np.float32)
    y = reference.linear_float64(xq, np.ones(1, np.float32), xz, q, g, w_scales,
                                 np.zeros((2, 1)))
    assert y[0, 0] == (-128 - 127) * -8 * k


def test_requantize_rounds_half_to_even_and_clamps():
    y = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0]])
    out = reference.requantize(y, np.array([1.0]), np.array([0]))
    np.testing.assert_array_equal(out, [[0, 2, 2, 0, -2, 127, -128]])
    out = reference.requantize(y, np.array([1.0]), np.array([10]))
    np.testing.assert_array_equal(out[0, :5], [10, 12, 12, 10, 8])


def test_checker_rejects_wrong_results(rng):
    """The conformance checker is a test too: it must fail on a slightly wrong answer."""
    case = C.Case("probe", (4,), 64, 16, 32)
    d = C.make_inputs(case)
    d_check = dict(d, w_offsets=None)
    y = vq.linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], d["w_packed"], 32,
                              d["w_scales"], d["w_zeros"], bias=d["bias"],
                              algorithm="reference")
    assert C.check(y, d_check)[0]
    bad = y.copy()
    bad[1, 3] *= 1.001
    assert not C.check(bad, d_check)[0]
    # a wrong zero-point convention (o = +s*z) is caught
    assert not C.check(y, dict(d_check, w_zeros=-d["w_zeros"]))[0] or not d["w_zeros"].any()
    assert not C.check(y.astype(np.float64), d_check)[0]   # wrong dtype
    assert not C.check(y[:2], d_check)[0]                  # wrong shape


def test_checker_rejects_wrong_int8(rng):
    case = C.Case("probe8", (8,), 64, 32, 32, out="int8")
    d = C.make_inputs(case)
    sz = vq.offsets_to_scales_and_zeros(d["w_scales"], -d["w_scales"] * d["w_zeros"])
    out = vq.linear_qta8a_qga4w_qta8o(d["x_q"], d["x_scale"], d["x_zero_point"], d["w_packed"],
                                      32, sz, d["out_scale"], d["out_zero_point"],
                                      bias=d["bias"], algorithm="reference")
    d_check = dict(d, w_offsets=None)
    assert C.check(out, d_check)[0]
    off_by_two = out.copy()
    off_by_two[0, 0] = np.clip(int(out[0, 0]) + 2 if out[0, 0] < 126 else int(out[0, 0]) - 2,
                               -128, 127)
    assert not C.check(off_by_two, d_check)[0]
    many_off = out.astype(np.int16)
    many_off[:, :4] += np.where(many_off[:, :4] < 127, 1, -1)
    assert not C.check(many_off.astype(np.int8), d_check)[0]   # > 1% not exact


def test_t_zero_and_batch_dims(rng):
    d = make_layer(rng, 6, 64, 8, 32)
    d3 = dict(d, x_q=d["x_q"].reshape(2, 3, 64), x_scale=d["x_scale"].reshape(2, 3),
              x_zero_point=d["x_zero_point"].reshape(2, 3))
    y2 = vq.linear_qta8a_qga4w(**d, algorithm="reference")
    y3 = vq.linear_qta8a_qga4w(**d3, algorithm="reference")
    assert y3.shape == (2, 3, 8)
    np.testing.assert_array_equal(y3.reshape(6, 8), y2)
    e = make_layer(rng, 0, 64, 8, 32)
    y0 = vq.linear_qta8a_qga4w(**e, algorithm="reference")
    assert y0.shape == (0, 8) and y0.dtype == np.float32
