"""Float in, float out: :class:`QLinear`, a W4A8 linear layer with dynamic activation
quantization on the device, and :class:`DeviceTensor`, a layer output left on the device
so that the next layer reads it without a host round trip.

One call of a layer on the GPU path is one recorded Kompute sequence: upload the float rows,
quantize them per token (``shaders/quantize_tokens.comp``, bit-identical to
:func:`vkqlinear.quantize_per_token`), a barrier, the linear kernel (``auto`` / ``tiled`` /
``cooperative``), download. Calls at a seen shape reuse it: nothing is recorded or allocated.
"""

from __future__ import annotations

import math

import numpy as np

from . import args, reference
from .device_linear import DeviceLinear, fallback_or_raise
from .errors import CompilerNotFoundError, VulkanUnavailableError
from .quant import check_convention, quantize_per_token, quantize_weights, quantize_weights_search
from .weights import QuantizedWeights, prepack

__all__ = ["QLinear", "DeviceTensor"]


class DeviceTensor:
    """A float32 layer output ``[..., N]`` that stays on the device.

    Returned by ``layer(x, output="device")``; pass it to another :class:`QLinear` on the
    same device as its input, or call :meth:`numpy` to download it. It shares the memory of
    the producing layer's recorded call: the producer's next call at the same shape
    overwrites it, after which using this handle raises ``ValueError`` (download first if
    you need both).
    """

    def __init__(self, call, shape):
        self.call = call      # the producer's RecordedCall, whose output buffer this is
        self._generation = call.generation
        self.shape = tuple(shape)
        self.dtype = np.dtype(np.float32)

    @property
    def device(self):
        return self.call.device

    def _check(self, name="x"):
        self.call.device.check_open()
        if self.call.generation != self._generation:
            raise ValueError(f"{name}: this DeviceTensor was overwritten by a later call of "
                             "the layer that produced it (download it with .numpy() first)")

    def numpy(self):
        """Download: float32 ``ndarray`` of :attr:`shape`."""
        self._check()
        with self.call.device.lock:
            return self.call.download().reshape(self.shape)

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __repr__(self):
        return f"<vkqlinear.DeviceTensor shape={list(self.shape)} on {self.device.name}>"


class QLinear:
    """``y = x @ w.T + bias`` with 4-bit group-quantized weights and int8 activations
    quantized per token on the device (the contract's ``linear_qta8a_qga4w``).

    Make one with :meth:`from_float` (quantizes the weights) or :meth:`from_quantized`
    (either zero-point convention), or from :class:`~vkqlinear.QuantizedWeights` (e.g.
    :func:`vkqlinear.from_torchao`). Call it on float32 ``x [..., K]`` (numpy, list or torch
    CPU tensor, or a :class:`DeviceTensor`).

    ``act_quant`` is how the activations are quantized per token: ``"spec"`` (default, the
    contract's), ``"torchao"`` or ``"torchao-legacy"`` (to reproduce a torchao model's
    integers; see :func:`vkqlinear.quantize_per_token`).
    """

    def __init__(self, weights, bias=None, device=None, act_quant="spec"):
        if not isinstance(weights, QuantizedWeights):
            raise TypeError(f"weights: expected vkqlinear.QuantizedWeights, "
                            f"got {type(weights).__name__}")
        self.weights = weights
        self.bias = args.bias_vector(bias, weights.N)
        self.device = args.device_arg(device)
        self.act_quant = check_convention(act_quant)

    @property
    def in_features(self):
        return self.weights.K

    @property
    def out_features(self):
        return self.weights.N

    def __repr__(self):
        return (f"<vkqlinear.QLinear in={self.in_features} out={self.out_features} "
                f"group_size={self.weights.group_size} bias={self.bias is not None} "
                f"act_quant={self.act_quant!r}>")

    @classmethod
    def from_float(cls, weight, bias=None, group_size=32, symmetric=False, method="minmax",
                   device=None):
        """Quantize float ``weight [N, K]`` (and keep float32 ``bias [N]``).

        ``method="minmax"`` is the contract's plain min/max quantization (integer zero points,
        ``symmetric`` as in :func:`~vkqlinear.quantize_weights`); ``method="search"``
        searches each group's scale and offset for the least squared reconstruction error
        (:func:`~vkqlinear.quant.quantize_weights_search`; float offsets).
        """
        w = args.as_array(weight, "weight", (np.float32, np.float64))
        if method == "minmax":
            wp, s, z = quantize_weights(w, group_size, symmetric=symmetric)
            qw = prepack(wp, group_size, s, z, device=device)
        elif method == "search":
            wp, s, o = quantize_weights_search(w, group_size)
            qw = prepack(wp, group_size, s, w_offsets=o, device=device)
        else:
            raise ValueError(f"method: expected 'minmax' or 'search', got {method!r}")
        return cls(qw, bias, device)

    @classmethod
    def from_quantized(cls, w_packed, group_size, w_scales=None, w_zeros=None, *,
                       w_offsets=None, scales_and_zeros=None, bias=None, device=None):
        """From already-quantized weights, in any form :func:`~vkqlinear.prepack` takes."""
        qw = prepack(w_packed, group_size, w_scales, w_zeros, w_offsets=w_offsets,
                     scales_and_zeros=scales_and_zeros, device=device)
        return cls(qw, bias, device)

    def __call__(self, x, *, out_scale=None, out_zero_point=None, algorithm="auto",
                 output="host", variant=None):
        """Run the layer.

        Args:
            x: float32 ``[..., K]``, or a :class:`DeviceTensor` from another layer; an inf
                or a NaN in it is a ``ValueError`` (found by the device's quantizer).
            out_scale, out_zero_point: per-token int8 output qparams (both or neither):
                the result is then int8, requantized as in docs/spec.md.
            algorithm: ``"auto"``, ``"tiled"``, ``"shared"``, ``"cooperative"`` or
                ``"reference"`` (the CPU path: :func:`~vkqlinear.quantize_per_token` and
                the int8 reference), with the same fallback as the ops
                (:mod:`vkqlinear.ops`).
            output: ``"host"`` (an array; a torch tensor if ``x`` was one) or
                ``"device"`` (a :class:`DeviceTensor`, float output only).
            variant: force a kernel code shape, as in the ops.

        Returns: ``[..., N]`` float32 (or int8 with output qparams).
        """
        algorithm = args.algorithm_name(algorithm)
        if output not in ("host", "device"):
            raise ValueError(f"output: expected 'host' or 'device', got {output!r}")
        source = None
        if isinstance(x, DeviceTensor):
            x._check()
            source, lead, k = x, x.shape[:-1], x.shape[-1]
            if self.device is not None and x.device is not self.device:
                raise ValueError("x: a DeviceTensor from another device than this layer's")
        else:
            xf = args.as_array(x, "x", (np.float32,))
            if xf.ndim < 1:
                raise ValueError(f"x: expected shape [..., K], got {list(xf.shape)}")
            lead, k = xf.shape[:-1], xf.shape[-1]
            # finiteness: flagged by the device's quantizer, checked by the CPU path's
        if k != self.in_features:
            raise ValueError(f"x: expected last dimension K={self.in_features}, got {k}")
        t = math.prod(lead)     # (np.prod of a tuple makes an array: tens of us cold)
        out_scales = out_zps = None
        if out_scale is not None or out_zero_point is not None:
            out_scales, out_zps = args.output_qparams(out_scale, out_zero_point, lead, t)
            if output == "device":
                raise ValueError("output: 'device' holds float32 results only; leave "
                                 "out_scale / out_zero_point out")
        out_shape = tuple(lead) + (self.out_features,)
        if output == "device" and (algorithm == "reference" or t == 0):
            raise ValueError(f"output: 'device' needs a GPU algorithm and T > 0 "
                             f"(algorithm={algorithm!r}, T={t})")

        # a DeviceTensor runs on its own device
        device = source.device if source is not None else self.device
        y = None
        if t > 0 and algorithm != "reference":
            try:
                y, call = DeviceLinear.of(self.weights, device).run_float(
                    algorithm, t, xf2d=None if source is not None else xf.reshape(t, k),
                    source=source.call if source is not None else None, bias=self.bias,
                    out_scale=out_scales, out_zero_point=out_zps, download=output == "host",
                    variant=variant, act_quant=self.act_quant)
                if output == "device":
                    return DeviceTensor(call, out_shape)
            except (VulkanUnavailableError, CompilerNotFoundError) as e:
                fallback_or_raise(e, algorithm, device)
        elif device is not None:
            device.check_open()
        if y is None:
            x2d = (source.numpy() if source is not None else xf).reshape(t, k)
            y = self._reference(x2d, out_scales, out_zps)
        return args.like_input(y.reshape(out_shape), x)

    def _reference(self, x2d, out_scales, out_zps):
        if x2d.shape[0] == 0:
            dtype = np.int8 if out_scales is not None else np.float32
            return np.zeros((0, self.out_features), dtype)
        xq, x_scales, x_zps = quantize_per_token(x2d, self.act_quant)
        return reference.run(xq, x_scales, x_zps, self.weights, self.bias, out_scales, out_zps)
