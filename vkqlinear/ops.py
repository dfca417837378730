"""The public operators.

``linear_qta8a_qga4w`` (float32 output, integer zero points) and
``linear_qta8a_qga4w_qta8o`` (int8 output, ExecuTorch's float-zero ``scales_and_zeros``),
both implementing SPEC.md. ``algorithm`` picks the implementation:

* ``"tiled"``: the TILED GEMM shader; ``"cooperative"``: the COOPERATIVE GEMV shader;
* ``"auto"`` (default): the cooperative kernel up to a per-device token threshold, the
  tiled one above (see :mod:`vkqlinear.kernels`); if no Vulkan device or no
  ``glslangValidator`` is available it falls back to the reference path with a warning;
* ``"reference"``: the CPU int8 reference path (numpy).
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _args, dispatch, reference
from .device import Device, resolve
from .errors import CompilerNotFoundError, VulkanUnavailableError
from .kernels import kernel_for_device
from .weights import QuantizedWeights, prepack

__all__ = ["linear_qta8a_qga4w", "linear_qta8a_qga4w_qta8o"]

_warned_fallback = False


def _weights(w_packed, group_size, k, *, w_scales=None, w_zeros=None, scales_and_zeros=None):
    if isinstance(w_packed, QuantizedWeights):
        if group_size is None and w_scales is None and w_zeros is None and \
                scales_and_zeros is None:
            return w_packed
        extra = [n for n, v in (("group_size", group_size), ("w_scales", w_scales),
                                ("w_zeros", w_zeros), ("scales_and_zeros", scales_and_zeros))
                 if v is not None]
        raise ValueError(f"{extra[0]}: not expected with prepacked QuantizedWeights "
                         "(they already hold it)")
    if group_size is None:
        raise TypeError("group_size: required with raw w_packed")
    if scales_and_zeros is not None:
        return prepack(w_packed, group_size, scales_and_zeros=scales_and_zeros, _k=k)
    if w_scales is None or w_zeros is None:
        raise TypeError("w_scales, w_zeros: required with raw w_packed")
    return prepack(w_packed, group_size, w_scales, w_zeros, _k=k)


_ND = np.ndarray
_I8, _F32, _I32 = np.dtype(np.int8), np.dtype(np.float32), np.dtype(np.int32)
_DEVICE_ALGORITHMS = ("auto", "tiled", "cooperative")


def _plain_per_token(t, scale, zero_point):
    """True if ``scale`` and ``zero_point`` are C-contiguous numpy float32 and int32
    ``[t]`` vectors with valid values (finite > 0; in [-128, 127])."""
    return (type(scale) is _ND and type(zero_point) is _ND and scale.dtype is _F32
            and zero_point.dtype is _I32 and scale.shape == (t,) and zero_point.shape == (t,)
            and scale.flags.c_contiguous and zero_point.flags.c_contiguous
            and _args.finite_positive(scale.tolist())
            and _args.in_int8_range(zero_point.tolist()))


def _plain_call(x_q, x_scale, x_zero_point, weights, algorithm, device, out_scale=None,
                out_zero_point=None):
    """The common call on prepacked weights, checked and run in as few steps as possible:
    right after a kernel the host's caches are cold and each step costs microseconds.
    Plain means C-contiguous numpy arrays of the canonical dtypes, ``x_q [T, K]`` with
    ``1 <= T <= 16`` (a decode step), per-token ``[T]`` vectors, no bias, a device
    algorithm, and a device that is available. Returns ``None`` for anything else: the
    general path then converts, checks and refuses with its messages. The caller checked
    ``weights`` (prepacked, no extra weight arguments)."""
    if not (type(x_q) is _ND and x_q.dtype is _I8 and x_q.ndim == 2
            and x_q.flags.c_contiguous and algorithm in _DEVICE_ALGORITHMS
            and (device is None or type(device) is Device)):
        return None
    t, k = x_q.shape
    if not (0 < t <= _args.SMALL and k == weights.K
            and _plain_per_token(t, x_scale, x_zero_point)):
        return None
    out_int8 = out_scale is not None
    if out_int8 and not _plain_per_token(t, out_scale, out_zero_point):
        return None
    if device is None:
        try:
            device = resolve(None)
        except (VulkanUnavailableError, CompilerNotFoundError):
            return None            # the general path falls back, or raises
    else:
        device.check_open()
    kernel = kernel_for_device(device, algorithm, t, weights.group_size, out_int8)
    return dispatch.run(device, kernel, weights, x_q, x_scale, x_zero_point, None,
                        out_scale, out_zero_point)[0]


def _front(algorithm, device, x_q, x_scale, x_zero_point):
    """Checks shared by both ops, before the weights: algorithm, device, activations."""
    algorithm = _args.algorithm_name(algorithm)
    if device is not None and not isinstance(device, Device):
        raise TypeError(f"device: expected a vkqlinear.Device or None, "
                        f"got {type(device).__name__}")
    return algorithm, _args.activations(x_q, x_scale, x_zero_point)


def _linear(acts, weights, bias, out_scale, out_zero_point, algorithm, device,
            timed=False):
    x2d, xs, xz, lead = acts
    t, k = x2d.shape
    if k != weights.K:
        raise ValueError(f"w_packed: expected shape [N, K/2] = [{weights.N}, {k // 2}] to "
                         f"match x_q's K={k}, got K={weights.K}")
    b = _args.bias_vector(bias, weights.N)
    out_int8 = out_scale is not None or out_zero_point is not None
    os_ = oz = None
    if out_int8:
        os_, oz = _args.output_qparams(out_scale, out_zero_point, lead, t)
    out_shape = tuple(lead) + (weights.N,)
    dtype = np.int8 if out_int8 else np.float32
    if device is not None:
        device.check_open()
    if t == 0:
        return np.zeros(out_shape, dtype)
    if algorithm != "reference":
        try:
            dev = resolve(device)
            kernel = kernel_for_device(dev, algorithm, t, weights.group_size, out_int8)
            out, call = dispatch.run(dev, kernel, weights, x2d, xs, xz, b, os_, oz, timed)
            if len(lead) != 1:
                out = out.reshape(out_shape)
            return (out, call) if timed else out
        except (VulkanUnavailableError, CompilerNotFoundError) as e:
            if algorithm != "auto" or device is not None:
                raise
            global _warned_fallback
            if not _warned_fallback:
                warnings.warn(f"vkqlinear: no GPU path ({e}); algorithm='auto' uses the CPU "
                              "reference path", RuntimeWarning, stacklevel=3)
                _warned_fallback = True
    out = reference.run(x2d, xs, xz, weights, b, os_, oz)
    return out.reshape(out_shape)


def linear_qta8a_qga4w(x_q, x_scale, x_zero_point, w_packed, group_size=None, w_scales=None,
                       w_zeros=None, *, bias=None, algorithm="auto", device=None):
    """W4A8 linear with float32 output (SPEC.md):
    ``y[t, n] = x_scale[t] * sum_k (x_q[t, k] - zp[t]) * w[n, k] + bias[n]``.

    Args:
        x_q: int8 ``[..., K]`` activations (T = product of the leading dims).
        x_scale: float32 ``[T]`` (or the leading dims), finite and > 0.
        x_zero_point: int32 ``[T]`` (or the leading dims), in [-128, 127].
        w_packed: uint8 ``[N, K/2]`` packed 4-bit weights, or a prepacked
            :class:`~vkqlinear.QuantizedWeights` (then leave ``group_size``, ``w_scales``
            and ``w_zeros`` out).
        group_size: multiple of 8 dividing K.
        w_scales: float32 ``[N, G]``.
        w_zeros: int32 or int8 ``[N, G]`` integer zero points: ``w = s * (q - z)``.
        bias: optional float32 ``[N]``.
        algorithm: ``"auto"``, ``"tiled"``, ``"cooperative"`` or ``"reference"``.
        device: a :class:`~vkqlinear.Device`, or ``None`` for the default device.

    Returns: float32 ``[..., N]`` (a torch tensor if ``x_q`` is one).
    """
    if type(w_packed) is QuantizedWeights and group_size is None and w_scales is None and \
            w_zeros is None and bias is None:
        out = _plain_call(x_q, x_scale, x_zero_point, w_packed, algorithm, device)
        if out is not None:
            return out
    algorithm, acts = _front(algorithm, device, x_q, x_scale, x_zero_point)
    weights = _weights(w_packed, group_size, acts[0].shape[1], w_scales=w_scales,
                       w_zeros=w_zeros)
    return _args.like_input(_linear(acts, weights, bias, None, None, algorithm, device), x_q)


def linear_qta8a_qga4w_qta8o(x_q, x_scale, x_zero_point, w_packed, group_size=None,
                             scales_and_zeros=None, out_scale=None, out_zero_point=None, *,
                             bias=None, algorithm="auto", device=None):
    """W4A8 linear with per-token int8 output, in ExecuTorch's argument order (SPEC.md)::

        out[t, n] = clamp(round_half_to_even(y[t, n] / out_scale[t]) + out_zero_point[t],
                          -128, 127)

    Args:
        x_q, x_scale, x_zero_point: as in :func:`linear_qta8a_qga4w`.
        w_packed: uint8 ``[N, K/2]``, or a prepacked :class:`~vkqlinear.QuantizedWeights`
            (then leave ``group_size`` and ``scales_and_zeros`` as ``None``).
        group_size: multiple of 8 dividing K.
        scales_and_zeros: float32 ``[G, N, 2]`` holding ``(s, zf)``: ``w = s * q + zf``.
        out_scale: float32 ``[T]``, finite and > 0; out_zero_point: int32 ``[T]`` in
            [-128, 127] (both required).
        bias: optional float32 ``[N]`` (an extension; ExecuTorch's op has none).
        algorithm, device: as in :func:`linear_qta8a_qga4w`.

    Returns: int8 ``[..., N]`` (a torch tensor if ``x_q`` is one).
    """
    if type(w_packed) is QuantizedWeights and group_size is None and \
            scales_and_zeros is None and bias is None and out_scale is not None:
        out = _plain_call(x_q, x_scale, x_zero_point, w_packed, algorithm, device, out_scale,
                          out_zero_point)
        if out is not None:
            return out
    algorithm, acts = _front(algorithm, device, x_q, x_scale, x_zero_point)
    if not isinstance(w_packed, QuantizedWeights) and scales_and_zeros is None:
        raise TypeError("scales_and_zeros: required with raw w_packed (float32 [G, N, 2])")
    weights = _weights(w_packed, group_size, acts[0].shape[1],
                       scales_and_zeros=scales_and_zeros)
    if out_scale is None:
        raise TypeError("out_scale: required (float32 [T])")
    if out_zero_point is None:
        raise TypeError("out_zero_point: required (int32 [T])")
    return _args.like_input(
        _linear(acts, weights, bias, out_scale, out_zero_point, algorithm, device), x_q)
