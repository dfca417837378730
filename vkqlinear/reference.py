"""The CPU int8 reference path (numpy), the contract's executable form.

For token ``t``, channel ``n`` and weight group ``g`` it forms the two exact integer sums of
docs/spec.md::

    A[t, n, g] = sum_{k in g} (x_q[t, k] - zp[t]) * q[n, k]
    S[t, g]    = sum_{k in g} (x_q[t, k] - zp[t])

then the float epilogue ``y = x_scale[t] * sum_g (s[n, g] * A + o[n, g] * S) + bias[n]``
and, for int8 output, ``clamp(round_half_to_even(y / out_scale) + out_zp, -128, 127)``.

The integer sums are computed as float64 matrix products (BLAS): every product and partial
sum is an integer below 2**53, so they are exact. The epilogue runs in float64 and is
rounded once to float32. Work is split into token chunks to bound memory.
"""

from __future__ import annotations

import numpy as np

from .quant import unpack_int4

# Bytes of float64 scratch per chunk of tokens ([G, T_chunk, N] group sums).
_CHUNK_BYTES = 64 << 20




def linear_float64(x_q, x_scale, x_zero_point, q, group_size, w_scales, w_offsets,
                   bias=None):
    """``y [T, N]`` in float64 from exact integer group sums (2-D canonical inputs)."""
    t, k = x_q.shape
    n = q.shape[0]
    g = k // group_size
    y = np.empty((t, n), dtype=np.float64)
    if t == 0:
        return y
    s = np.asarray(w_scales, np.float64)          # [N, G]
    o = np.asarray(w_offsets, np.float64)         # [N, G]
    qg = q.astype(np.float64).reshape(n, g, group_size).transpose(1, 2, 0)  # [G, gs, N]
    chunk = max(1, _CHUNK_BYTES // (8 * g * n))
    for t0 in range(0, t, chunk):
        xc = x_q[t0:t0 + chunk]
        xd = (xc.astype(np.float64) - x_zero_point[t0:t0 + chunk, None].astype(np.float64))
        xd = xd.reshape(xc.shape[0], g, group_size).transpose(1, 0, 2)  # [G, Tc, gs]
        a = np.matmul(xd, qg)                      # [G, Tc, N]: exact integers
        ssum = xd.sum(axis=2)                      # [G, Tc]: exact integers
        acc = np.einsum("gtn,ng->tn", a, s) + ssum.T @ o.T
        y[t0:t0 + chunk] = acc * np.asarray(x_scale[t0:t0 + chunk], np.float64)[:, None]
    if bias is not None:
        y += np.asarray(bias, np.float64)[None, :]
    return y


def requantize(y, out_scale, out_zero_point):
    """Per-token int8: ``clamp(round_half_to_even(y / out_scale) + out_zp, -128, 127)``."""
    y = np.asarray(y, np.float64)
    v = np.rint(y / np.asarray(out_scale, np.float64)[:, None])
    v = v + np.asarray(out_zero_point, np.float64)[:, None]
    return np.clip(v, -128, 127).astype(np.int8)


def run(x_q, x_scale, x_zero_point, weights, bias=None, out_scale=None,
        out_zero_point=None):
    """The reference op on canonical 2-D inputs and a :class:`~vkqlinear.QuantizedWeights`.

    Returns float32 ``[T, N]``, or int8 ``[T, N]`` when ``out_scale`` is given.
    """
    q = unpack_int4(weights.w_packed)
    y = linear_float64(x_q, x_scale, x_zero_point, q, weights.group_size,
                       weights.w_scales, weights.w_offsets64, bias)
    if out_scale is not None:
        return requantize(y, out_scale, out_zero_point)
    return y.astype(np.float32)
