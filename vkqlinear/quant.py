"""Quantization conventions: the one home of nibble order, zero points and rounding.

Everything here follows docs/spec.md (shipped conventions, restated in the docstrings):

* **Packed 4-bit layout** (public, ExecuTorch's): byte ``j`` of a row holds element
  ``k = 2j`` in its high nibble (bits 7..4) and ``k = 2j + 1`` in its low nibble
  (bits 3..0). A nibble ``u`` in [0, 15] stands for ``q = u - 8`` in [-8, 7].
* **Weights**: per group of ``group_size`` along K, ``w = s * q + o``. Integer zero points
  (torchao / ExecuTorch ``linear_qta8a_qga4w``) give ``o = -s * z``; ExecuTorch's
  ``scales_and_zeros [G, N, 2]`` float form gives ``o = zf`` directly.
* **Activations**: per token (row), asymmetric int8, with the exact integers of PyTorch's
  ``choose_qparams_per_token_asymmetric`` + ``quantize_per_token`` (float32 math).

All rounding is ``np.rint`` (round half to even), all math float32 as in PyTorch.
"""

from __future__ import annotations

import numpy as np

from . import args

__all__ = [
    "EPS",
    "CONVENTIONS",
    "quantize_per_token",
    "quantize_with_qparams",
    "dequantize_per_token",
    "quantize_weights",
    "quantize_weights_search",
    "dequantize_weights",
    "NIBBLE_ORDERS",
    "pack_int4",
    "unpack_int4",
    "offsets_from_zero_points",
    "scales_and_zeros_to_offsets",
    "offsets_to_scales_and_zeros",
]

EPS = np.float32(np.finfo(np.float32).eps)


# Per-token activation quantization conventions: name -> (eps, zero-point rule). "spec" is
# the contract's (PyTorch's quantized_decomposed ops); "torchao" is torchao's
# choose_qparams_affine + quantize_affine as its 8da4w tensors use them; "torchao-legacy" is
# the same with float32 eps, as torchao's Int8DynActInt4WeightLinear calls them.
CONVENTIONS = {
    "spec": EPS,
    "torchao": np.float32(np.finfo(np.float32).smallest_normal),
    "torchao-legacy": EPS,
}


def check_convention(convention):
    """``convention`` as given, if it names one of :data:`CONVENTIONS`."""
    if not isinstance(convention, str) or convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {', '.join(map(repr, CONVENTIONS))}, "
                         f"got {convention!r}")
    return convention


def quantize_per_token(x, convention="spec"):
    """Per-token asymmetric int8 quantization of ``x [..., K]`` (float).

    Returns ``(x_q int8 [..., K], scale float32 [...], zero_point int32 [...])``, computed in
    float32, every rounding half to even. ``convention="spec"`` (default) is the contract's,
    bit-identical to PyTorch's ``quantized_decomposed`` ``choose_qparams_per_token_asymmetric``
    followed by ``quantize_per_token``::

        mn = min(min(x_row), 0);  mx = max(max(x_row), 0)
        scale = max((mx - mn) / 255, eps)                       eps = float32 eps
        zp = (-128 + mn/scale) + (127 + mx/scale) > 0 ? -128 - mn/scale : 127 - mx/scale
        zp = round(clamp(zp, -128, 127))
        x_q = clamp(round(x * (1/scale) + zp), -128, 127)

    ``convention="torchao"`` is torchao's ``choose_qparams_affine`` + ``quantize_affine``
    (asymmetric, per token, as its 8da4w ``IntxUnpackedToInt8Tensor`` applies them)::

        scale = max((mx - mn) / 255, eps)                       eps = float32 smallest normal
        zp = clamp(-128 - round(mn / scale), -128, 127)
        x_q = clamp(round(x * (1/scale)) + zp, -128, 127)

    (an all-zero row gets ``zp = -128``, not 127), and ``"torchao-legacy"`` the same with
    eps = float32 eps, as torchao's ``Int8DynActInt4WeightLinear`` quantizes.
    """
    eps = CONVENTIONS[check_convention(convention)]
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected shape [..., K] with K > 0, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x: expected finite values")
    zero = np.float32(0)
    mn = np.minimum(x.min(axis=-1, keepdims=True), zero) if x.size else x[..., :1]
    mx = np.maximum(x.max(axis=-1, keepdims=True), zero) if x.size else x[..., :1]
    scale = np.maximum((mx - mn) / np.float32(255.0), eps)
    if convention == "spec":
        dmin = mn / scale
        dmax = mx / scale
        zp = np.where((np.float32(-128) + dmin) + (np.float32(127) + dmax) > 0,
                      np.float32(-128) - dmin, np.float32(127) - dmax)
        zp = np.rint(np.clip(zp, -128, 127)).astype(np.float32)
    else:
        zp = np.clip(np.float32(-128) - np.rint(mn / scale), -128, 127).astype(np.float32)
    x_q = quantize_with_qparams(x, scale[..., 0], zp[..., 0], convention)
    return x_q, scale[..., 0].astype(np.float32), zp[..., 0].astype(np.int32)


def quantize_with_qparams(x, scale, zero_point, convention="spec"):
    """``x [..., K]`` quantized to int8 with given per-token ``scale`` and ``zero_point``
    (``[...]``), in float32: ``clamp(round(x * (1/scale) + zp), -128, 127)`` for
    ``"spec"`` (the zero point added before rounding), ``clamp(round(x * (1/scale)) + zp,
    -128, 127)`` for the torchao conventions and ExecuTorch's ``linear_dq8ca_q4gsw``."""
    x = np.asarray(x, dtype=np.float32)
    inv = (np.float32(1.0) / np.asarray(scale, np.float32))[..., None]
    zp = np.asarray(zero_point).astype(np.float32)[..., None]
    if check_convention(convention) == "spec":
        return np.clip(np.rint(x * inv + zp), -128, 127).astype(np.int8)
    return np.clip(np.rint(x * inv) + zp, -128, 127).astype(np.int8)


def dequantize_per_token(x_q, scale, zero_point):
    """``x_scale[t] * (x_q[t, k] - x_zero_point[t])`` in float32."""
    x_q = np.asarray(x_q)
    return ((x_q.astype(np.float32) - np.asarray(zero_point, np.float32)[..., None])
            * np.asarray(scale, np.float32)[..., None])


def _groups(w, group_size):
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"w: expected shape [N, K], got {w.shape}")
    n, k = w.shape
    group_size = args.check_group_size(group_size, k)
    if not np.all(np.isfinite(w)):
        raise ValueError("w: expected finite values")
    return w.reshape(n, k // group_size, group_size)


def quantize_weights(w, group_size, symmetric=False):
    """Group-wise 4-bit quantization of ``w [N, K]`` (float), groups of ``group_size`` along K.

    Returns ``(w_packed uint8 [N, K/2], w_scales float32 [N, G], w_zeros int32 [N, G])``
    so that ``w ~= s * (q - z)`` with ``q`` in [-8, 7]. Asymmetric (default)::

        mn = min(min(w_group), 0);  mx = max(max(w_group), 0)
        s = max((mx - mn) / 15, eps);  z = clamp(round_half_to_even(-8 - mn / s), -8, 7)

    symmetric: ``s = max(max|w_group| / 7.5, eps)``, ``z = 0``. In both cases
    ``q = clamp(round_half_to_even(w * (1 / s) + z), -8, 7)`` (float32 math, as PyTorch's
    ``quantize_per_channel_group``). Every element is within ``s / 2`` of ``s * (q - z)``.
    """
    wg = _groups(w, group_size)
    zero = np.float32(0)
    if symmetric:
        s = np.maximum(np.abs(wg).max(axis=-1, keepdims=True) / np.float32(7.5), EPS)
        z = np.zeros_like(s)
    else:
        mn = np.minimum(wg.min(axis=-1, keepdims=True), zero)
        mx = np.maximum(wg.max(axis=-1, keepdims=True), zero)
        s = np.maximum((mx - mn) / np.float32(15.0), EPS)
        z = np.clip(np.rint(np.float32(-8) - mn / s), -8, 7).astype(np.float32)
    q = np.clip(np.rint(wg * (np.float32(1.0) / s) + z), -8, 7).astype(np.int8)
    n = wg.shape[0]
    return (pack_int4(q.reshape(n, -1)), s[..., 0].astype(np.float32),
            z[..., 0].astype(np.int32))


def quantize_weights_search(w, group_size, steps=21, iterations=2):
    """Group-wise 4-bit weights with a searched scale and offset per group: the least
    squared reconstruction error over a set of candidates, instead of plain min/max.

    Returns ``(w_packed uint8 [N, K/2], w_scales float32 [N, G], w_offsets float32 [N, G])``
    with ``w ~= s * q + o`` (float offsets: pass them as ``prepack(..., w_offsets=o)``).

    Per group, each candidate maps ``w`` to nibbles ``u = clamp(round(c * (w - min)), 0, 15)``
    for ``c = (15 + d) / (max - min)``, ``d`` in ``steps`` values over [-1, 1], then fits
    ``s`` and ``o`` to those nibbles by least squares (``iterations`` rounds of re-rounding
    and re-fitting for the best one); the contract's min/max quantization is a candidate too, so
    no group ends worse than :func:`quantize_weights` (errors measured with the float32
    ``s`` and ``o`` actually stored).
    """
    wg = _groups(w, group_size).astype(np.float64)
    n, g, gs = wg.shape
    mn = wg.min(axis=-1, keepdims=True)
    mx = wg.max(axis=-1, keepdims=True)
    rng = mx - mn

    def sq_err(u, s32, o32):
        """Squared error per group of the stored (float32) s and o for nibbles u."""
        return (((u - 8) * s32.astype(np.float64) + o32.astype(np.float64) - wg) ** 2).sum(-1)

    def fit(u):
        """Least-squares s, o (w ~= s * (u - 8) + o) for nibbles u, and its error."""
        su, sw = u.sum(-1, keepdims=True), wg.sum(-1, keepdims=True)
        suu, suw = (u * u).sum(-1, keepdims=True), (u * wg).sum(-1, keepdims=True)
        den = gs * suu - su * su
        with np.errstate(divide="ignore", invalid="ignore"):
            s_ = np.where(den > 0, (gs * suw - su * sw) / np.where(den > 0, den, 1), 0.0)
        s_ = np.where((s_ > 0) & np.isfinite(s_), s_, np.maximum(rng / 15, float(EPS)))
        m = (sw - s_ * su) / gs
        s32 = s_.astype(np.float32)
        o32 = (m + 8 * s_).astype(np.float32)
        return s32, o32, sq_err(u, s32, o32)

    # the contract's min/max quantization as the first candidate
    wp0, s0, z0 = quantize_weights(w, group_size)
    u0 = unpack_int4(wp0).reshape(n, g, gs).astype(np.float64) + 8
    best_u = u0
    best_s = s0[..., None]
    best_o = (-s0.astype(np.float64) * z0).astype(np.float32)[..., None]
    best_err = sq_err(u0, best_s, best_o)
    safe = np.where(rng > 0, rng, 1.0)               # flat groups: any positive value
    for d in np.linspace(-1.0, 1.0, steps):
        u = np.clip(np.rint((15 + d) / safe * (wg - mn)), 0, 15)
        for _ in range(iterations):
            s_, o_, err = fit(u)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_s = np.where(better[..., None], s_, best_s)
            best_o = np.where(better[..., None], o_, best_o)
            best_u = np.where(better[..., None], u, best_u)
            sf, of = s_.astype(np.float64), o_.astype(np.float64)
            u = np.clip(np.rint((wg - of) / sf + 8), 0, 15)       # re-round to the fit
    q = (best_u - 8).astype(np.int8).reshape(n, g * gs)
    return pack_int4(q), best_s[..., 0].astype(np.float32), best_o[..., 0].astype(np.float32)


def dequantize_weights(w_packed, group_size, w_scales, w_offsets):
    """Float32 ``s * q + o`` per element, ``[N, K]``; see :func:`offsets_from_zero_points`."""
    q = unpack_int4(w_packed).astype(np.float32)
    n, k = q.shape
    qg = q.reshape(n, k // group_size, group_size)
    w = (qg * np.asarray(w_scales, np.float32)[..., None]
         + np.asarray(w_offsets, np.float32)[..., None])
    return w.reshape(n, k)


# Where the two 4-bit values of a byte go, by source: name -> what byte j of a row holds.
NIBBLE_ORDERS = {
    "spec": "element 2j in the high nibble, 2j + 1 in the low (vkqlinear, ExecuTorch "
            "linear_qta8a_qga4w)",
    "low_first": "element 2j in the low nibble, 2j + 1 in the high (ExecuTorch "
                 "linear_dq8ca_q4gsw)",
    "gguf": "in each block of 32 elements (16 bytes), byte j holds element j in the low "
            "nibble and j + 16 in the high (GGUF Q4_0, Q4_1)",
}


def _check_order(order, k):
    if order not in NIBBLE_ORDERS:
        raise ValueError(f"order: expected one of {', '.join(map(repr, NIBBLE_ORDERS))}, "
                         f"got {order!r}")
    if order == "gguf" and k % 32:
        raise ValueError(f"order: 'gguf' packs blocks of 32 elements; got a row of {k}")


def pack_int4(q, order="spec"):
    """Pack signed 4-bit values ``q [..., K]`` in [-8, 7] (K even) into uint8 ``[..., K/2]``,
    each stored as the nibble ``u = q + 8``, in the nibble ``order`` of
    :data:`NIBBLE_ORDERS` (default ``"spec"``: element ``2j`` in the high nibble of byte
    ``j``, ``2j + 1`` in the low one)."""
    q = np.asarray(q)
    if q.shape[-1] % 2:
        raise ValueError(f"q: expected an even last dimension, got {q.shape}")
    _check_order(order, q.shape[-1])
    if q.size and (q.min() < -8 or q.max() > 7):
        raise ValueError("q: expected values in [-8, 7]")
    u = (q.astype(np.int16) + 8).astype(np.uint8)
    if order == "gguf":
        b = u.reshape(u.shape[:-1] + (-1, 2, 16))
        return (b[..., 0, :] | (b[..., 1, :] << 4)).reshape(u.shape[:-1] + (-1,))
    hi, lo = (u[..., 0::2], u[..., 1::2]) if order == "spec" else (u[..., 1::2], u[..., 0::2])
    return ((hi << 4) | lo).astype(np.uint8)


def unpack_int4(packed, order="spec"):
    """Inverse of :func:`pack_int4`: uint8 ``[..., K/2]`` to int8 ``[..., K]`` in [-8, 7]."""
    p = np.asarray(packed, dtype=np.uint8)
    k = 2 * p.shape[-1]
    _check_order(order, k)
    hi = (p >> 4).astype(np.int8) - 8
    lo = (p & 0x0F).astype(np.int8) - 8
    if order == "gguf":
        lead = p.shape[:-1]
        return np.concatenate([lo.reshape(lead + (-1, 16)), hi.reshape(lead + (-1, 16))],
                              axis=-1).reshape(lead + (k,))
    out = np.empty(p.shape[:-1] + (k,), dtype=np.int8)
    out[..., 0::2], out[..., 1::2] = (hi, lo) if order == "spec" else (lo, hi)
    return out


def offsets_from_zero_points(w_scales, w_zeros):
    """Integer zero points ``z`` to offsets ``o = -s * z`` (``w = s * (q - z) = s * q + o``)."""
    return (-np.asarray(w_scales, np.float32) * np.asarray(w_zeros).astype(np.float32))


def scales_and_zeros_to_offsets(scales_and_zeros):
    """ExecuTorch ``scales_and_zeros [G, N, 2]`` = ``(s, zf)`` to ``(w_scales [N, G],
    w_offsets [N, G])`` with ``w = s * q + zf``."""
    sz = np.asarray(scales_and_zeros, dtype=np.float32)
    if sz.ndim != 3 or sz.shape[2] != 2:
        raise ValueError(f"scales_and_zeros: expected shape [G, N, 2], got {sz.shape}")
    return (np.ascontiguousarray(sz[:, :, 0].T), np.ascontiguousarray(sz[:, :, 1].T))


def offsets_to_scales_and_zeros(w_scales, w_offsets):
    """Inverse of :func:`scales_and_zeros_to_offsets`: ``[N, G]`` pair to ``[G, N, 2]``."""
    return np.ascontiguousarray(
        np.stack([np.asarray(w_scales, np.float32).T, np.asarray(w_offsets, np.float32).T],
                 axis=-1))
