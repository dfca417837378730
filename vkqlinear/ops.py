"""The public operators.

``linear_qta8a_qga4w`` (float32 output, integer zero points) and
``linear_qta8a_qga4w_qta8o`` (int8 output, ExecuTorch's float-zero ``scales_and_zeros``),
both implementing the contract in ``docs/spec.md``. ``algorithm`` picks the implementation:

* ``"tiled"``: the TILED GEMM shader; ``"shared"``: the SHARED GEMM shader (integer dot
  products); ``"cooperative"``: the COOPERATIVE GEMV shader;
* ``"auto"`` (default): the cooperative kernel up to the device's token threshold, a GEMM
  above (:mod:`vkqlinear.kernels`); with ``device=None`` and no Vulkan device or no
  ``glslangValidator`` it falls back to the reference path with a warning;
* ``"reference"``: the CPU int8 reference path (numpy).

A call checks its arguments (:mod:`vkqlinear.args`), makes or finds the weights'
:class:`~vkqlinear.QuantizedWeights`, and runs on the weights'
:class:`~vkqlinear.device_linear.DeviceLinear`, or on the reference path for
``"reference"`` and where :func:`~vkqlinear.device_linear.fallback_or_raise` says so.
"""

from __future__ import annotations

import math

import numpy as np

from . import args, reference
from .device import Device
from .device_linear import DeviceLinear, fallback_or_raise
from .errors import CompilerNotFoundError, VulkanUnavailableError
from .kernels import ALGORITHMS
from .quant import pack_int4, quantize_with_qparams, unpack_int4
from .sources import executorch_q, executorch_scales, executorch_weight_sums
from .weights import QuantizedWeights, prepack

__all__ = ["linear_qta8a_qga4w", "linear_qta8a_qga4w_qta8o", "linear_dq8ca_q4gsw"]


def _check_algorithm_and_device(algorithm, device):
    """The ``algorithm`` and ``device`` arguments, checked (every op's first step; the
    common values skip the calls)."""
    if type(algorithm) is not str or algorithm not in _ALGORITHMS:
        args.algorithm_name(algorithm)
    if device is not None and type(device) is not Device:
        args.device_arg(device)


_ALGORITHMS = frozenset(ALGORITHMS)


def _weights(w_packed, group_size, k, w_scales=None, w_zeros=None, scales_and_zeros=None):
    """Prepacked weights as given, or raw ones checked and prepacked (the per-group
    arguments of :func:`~vkqlinear.prepack`, ``None`` where not given)."""
    if type(w_packed) is QuantizedWeights and group_size is None and w_packed.K == k and \
            w_scales is None and w_zeros is None and scales_and_zeros is None:
        return w_packed          # the common call, without the loop below
    given = {"w_scales": w_scales, "w_zeros": w_zeros, "scales_and_zeros": scales_and_zeros}
    if isinstance(w_packed, QuantizedWeights):
        for name, value in (("group_size", group_size), *given.items()):
            if value is not None:
                raise ValueError(f"{name}: not expected with prepacked QuantizedWeights "
                                 "(they already hold it)")
        args.check_weights_k(w_packed.K, k, w_packed.N)
        return w_packed
    if group_size is None:
        raise TypeError("group_size: required with raw w_packed")
    return prepack(args.packed_weights(w_packed, k), group_size, **given)


def _linear(x_q, x2d, x_scales, x_zps, lead, weights, bias, out_scale, out_zero_point, algorithm,
            device, variant):
    """Both ops after the activations and weights: check the rest, run (on the weights'
    DeviceLinear, or the reference path), shape the result like ``x_q``."""
    b = None if bias is None else args.bias_vector(bias, weights.N)
    out_scales = out_zps = None
    if out_scale is not None or out_zero_point is not None:
        out_scales, out_zps = args.output_qparams(out_scale, out_zero_point, lead, x2d.shape[0])
    out = None
    if x2d.shape[0] == 0:
        if device is not None:
            device.check_open()
        out = np.zeros((0, weights.N), np.int8 if out_scales is not None else np.float32)
    elif algorithm != "reference":
        try:
            out = DeviceLinear.of(weights, device).run(
                algorithm, x2d, x_scales, x_zps, b, out_scales, out_zps, variant=variant)[0]
        except (VulkanUnavailableError, CompilerNotFoundError) as e:
            fallback_or_raise(e, algorithm, device)
    elif device is not None:
        device.check_open()
    if out is None:
        out = reference.run(x2d, x_scales, x_zps, weights, b, out_scales, out_zps)
    if len(lead) != 1:
        out = out.reshape(tuple(lead) + (weights.N,))
    return out if type(x_q) is np.ndarray else args.like_input(out, x_q)


def linear_qta8a_qga4w(x_q, x_scale, x_zero_point, w_packed, group_size=None, w_scales=None,
                       w_zeros=None, *, bias=None, algorithm="auto", device=None,
                       variant=None):
    """W4A8 linear with float32 output (docs/spec.md):
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
        algorithm: ``"auto"``, ``"tiled"``, ``"shared"``, ``"cooperative"`` or
            ``"reference"``.
        device: a :class:`~vkqlinear.Device`, or ``None`` for the default device.
        variant: force a kernel code shape (a name such as ``"portable"`` or
            ``"subgroup+int64"``, or a :class:`~vkqlinear.kernels.Variant`); default: the
            device's best (or ``$VKQLINEAR_VARIANT``).

    Returns: float32 ``[..., N]`` (a torch tensor if ``x_q`` is one).
    """
    _check_algorithm_and_device(algorithm, device)
    x2d, x_scales, x_zps, lead = args.activations(x_q, x_scale, x_zero_point)
    weights = _weights(w_packed, group_size, x2d.shape[1], w_scales=w_scales, w_zeros=w_zeros)
    return _linear(x_q, x2d, x_scales, x_zps, lead, weights, bias, None, None, algorithm, device,
                   variant)


def linear_qta8a_qga4w_qta8o(x_q, x_scale, x_zero_point, w_packed, group_size=None,
                             scales_and_zeros=None, out_scale=None, out_zero_point=None, *,
                             bias=None, algorithm="auto", device=None, variant=None):
    """W4A8 linear with per-token int8 output, in ExecuTorch's argument order
    (docs/spec.md)::

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
        algorithm, device, variant: as in :func:`linear_qta8a_qga4w`.

    Returns: int8 ``[..., N]`` (a torch tensor if ``x_q`` is one).
    """
    _check_algorithm_and_device(algorithm, device)
    if not isinstance(w_packed, QuantizedWeights) and scales_and_zeros is None:
        raise TypeError("scales_and_zeros: required with raw w_packed (float32 [G, N, 2])")
    if out_scale is None:
        raise TypeError("out_scale: required (float32 [T])")
    if out_zero_point is None:
        raise TypeError("out_zero_point: required (int32 [T])")
    x2d, x_scales, x_zps, lead = args.activations(x_q, x_scale, x_zero_point)
    weights = _weights(w_packed, group_size, x2d.shape[1], scales_and_zeros=scales_and_zeros)
    return _linear(x_q, x2d, x_scales, x_zps, lead, weights, bias, out_scale, out_zero_point,
                   algorithm, device, variant)


def linear_dq8ca_q4gsw(input, input_scales, input_zp, weights, weight_sums, weight_scales,
                       group_size, bias=None, *, algorithm="auto", device=None, variant=None):
    """ExecuTorch's Vulkan ``et_vk.linear_dq8ca_q4gsw``, with its argument list and tensor
    conventions (docs/spec.md, "Other sources of the same weights").

    Args:
        input: float32 ``[..., K]``, quantized per token here with the given qparams as
            ExecuTorch's kernel does: ``clamp(round(x * (1/scale)) + zp, -128, 127)``.
        input_scales: float32 per token (``[T]``, the leading dims, or with a trailing 1).
        input_zp: int8 or int32 per token, in [-128, 127].
        weights: uint8 ``[N, ceil8(K)/2]``, element ``2j`` in the LOW nibble of byte ``j``,
            K padded with ``q = 0``; or a :class:`~vkqlinear.QuantizedWeights` (e.g. from
            :func:`vkqlinear.from_executorch`), which must be symmetric.
        weight_sums: int32 ``[G, ceil8(N)]``, the per-group sums of ``q``: checked against
            the weights (a ``ValueError`` if they differ).
        weight_scales: float32 ``[G, ceil4(N)]`` (transposed, padded).
        group_size: a multiple of 4 dividing K.
        bias: optional float32 ``[N]`` (or padded to ``ceil4(N)``).
        algorithm, device, variant: as in :func:`linear_qta8a_qga4w`.

    Returns: float32 ``[..., N]`` (a torch tensor if ``input`` is one).
    """
    _check_algorithm_and_device(algorithm, device)
    x = args.as_array(input, "input", (np.float32,))
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"input: expected float32 [..., K] with K > 0, got {list(x.shape)}")
    args.check_finite(x, "input")
    lead, k = x.shape[:-1], x.shape[-1]
    t = math.prod(lead)
    x_scales = args.per_token(_squeeze_last(input_scales), "input_scales", (np.float32,), lead, t)
    args.check_finite_positive(x_scales, "input_scales")
    x_zps = args.per_token(_squeeze_last(input_zp), "input_zp", (np.int8, np.int32), lead, t)
    args.check_int8_range(x_zps, "input_zp")
    if isinstance(weights, QuantizedWeights):
        qw = weights
        if qw.K != k or qw.group_size != group_size:
            raise ValueError(f"weights: these QuantizedWeights have K={qw.K}, group size "
                             f"{qw.group_size}; the call has K={k}, group_size={group_size}")
        if qw.has_offsets:
            raise ValueError("weights: linear_dq8ca_q4gsw takes symmetric weights (zero "
                             "points 0); these have offsets: use linear_qta8a_qga4w")
        q = unpack_int4(qw.w_packed)
        if not np.array_equal(executorch_scales(weight_scales, qw.G, qw.N), qw.w_scales):
            raise ValueError("weight_scales: do not match the scales of the given weights")
    else:
        n = args.as_array(weights, "weights", (np.uint8,)).shape[0] if \
            np.ndim(weights) == 2 else 0
        q, group_size = executorch_q(weights, group_size, k, n)
        qw = QuantizedWeights(pack_int4(q), group_size,
                              executorch_scales(weight_scales, k // group_size, n),
                              np.zeros((n, k // group_size)), np.zeros((n, k // group_size),
                                                                      np.int32))
    sums = args.as_array(weight_sums, "weight_sums", (np.int32,))
    want = executorch_weight_sums(q, group_size)
    if sums.shape != want.shape or not np.array_equal(sums, want):
        raise ValueError(f"weight_sums: do not match the weights (expected int32 "
                         f"{list(want.shape)}, the per-group sums of q, zero padded)")
    b = args.bias_vector(bias, qw.N, padded=-(-qw.N // 4) * 4)
    x_q = quantize_with_qparams(x.reshape(t, k), x_scales, x_zps, "torchao")
    return _linear(input, x_q, x_scales, x_zps.astype(np.int32), lead, qw, b, None, None, algorithm,
                   device, variant)


def _squeeze_last(a):
    """Per-token qparams given with a trailing dimension of 1 (ExecuTorch's keepdim form)."""
    shape = tuple(np.shape(a))
    if len(shape) < 2 or shape[-1] != 1:
        return a
    return a.reshape(shape[:-1]) if hasattr(a, "reshape") else np.reshape(a, shape[:-1])
