"""Quantized weights in the contract's public layout, checked once: :class:`QuantizedWeights`
and :func:`prepack`, which makes one from any of the accepted forms. Both ops and
:class:`~vkqlinear.QLinear` take it in place of the raw weight arrays.

A :class:`QuantizedWeights` is plain data. What is made of it on a device (its buffers in
the shaders' layout, the kernel choices, the recorded calls) belongs to a
:class:`~vkqlinear.device_linear.DeviceLinear`, one per (weights, device).
"""

from __future__ import annotations

import numpy as np

from . import args
from .device import resolve
from .device_linear import DeviceLinear
from .kernels import HALF_OFFSETS, HALF_SCALES, OFFSETS_FLOAT, OFFSETS_INTEGER, OFFSETS_NONE
from .layout import padded_group_size, zeros_packed
from .quant import scales_and_zeros_to_offsets

__all__ = ["QuantizedWeights", "prepack"]


def _integer_zeros(scales, offsets, group_size):
    """The integer zero points ``z`` in [-8, 7] (int32 ``[N, G]``, 0 where ``s`` is 0) of
    which every float32 offset is float32's ``-s * z``, where the layout can hold them
    beside the nibble sums (:func:`~vkqlinear.layout.zeros_packed`); else ``None``."""
    if not zeros_packed(padded_group_size(group_size)):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(scales != 0, np.rint(-offsets / scales), 0)
    if not np.all((z >= -8) & (z <= 7)):
        return None
    z = z.astype(np.int32)
    return z if np.array_equal(-scales * z.astype(np.float32), offsets) else None


def _fp16_exact(a):
    """``a`` (float32) as float16 where every value is 0 or a normal float16 that reads
    back as the same float32 bits (a subnormal may flush to 0 on a GPU); else ``None``."""
    with np.errstate(over="ignore"):
        h = a.astype(np.float16)
    back = h.astype(np.float32)
    ok = np.array_equal(back.view(np.uint32), a.view(np.uint32)) and \
        bool(np.all((a == 0) | (np.abs(a) >= np.float32(2.0 ** -14))))
    return h if ok else None


def _half_offset_bases(scales, offsets64, offsets):
    """The float16 ``m`` of ``o = m + 8 s`` (GGUF Q4_1's min) where every float32 offset is
    float32's ``m + 8 s`` (the kernels form it so) and every ``m`` is 0 or a normal float16;
    else ``None``."""
    m = _fp16_exact((offsets64 - 8.0 * scales.astype(np.float64)).astype(np.float32))
    if m is None:
        return None
    formed = m.astype(np.float32) + np.float32(8) * scales
    return m if np.array_equal(formed.view(np.uint32), offsets.view(np.uint32)) else None


class QuantizedWeights:
    """4-bit group-quantized weights ``w = s * q + o`` for one linear layer.

    Prefer :func:`prepack` to make one. Attributes: ``w_packed`` uint8 ``[N, K/2]``,
    ``group_size``, ``w_scales`` float32 ``[N, G]``, ``w_offsets`` float32 ``[N, G]``,
    ``w_offsets64`` (the exact offsets, float64, used by the reference), ``N``, ``K``,
    ``G``, ``w_zeros`` (int32 ``[N, G]`` when made from integer zero points, else
    ``None``), ``has_offsets`` (whether any offset is not 0; not for symmetric weights)
    and ``offset_kind`` (:data:`~vkqlinear.kernels.OFFSETS_NONE`, ``_FLOAT`` or
    ``_INTEGER``: every offset is float32's ``-s * z`` for an integer ``z`` in [-8, 7],
    ``zero_points``, which the device holds in 4 bits and a kernel may fold into its
    integer sums). ``half_data`` says which group data the device holds in 16 bits
    (:data:`~vkqlinear.kernels.HALF_SCALES`: every scale is 0 or a normal float16, as
    GGUF's ``d`` and fp16 / bf16 scales within float16's range are;
    :data:`~vkqlinear.kernels.HALF_OFFSETS`: float offsets that are float32's ``m + 8 s``
    for a float16 ``m``, ``offset_bases``, as GGUF Q4_1's), with the same results.
    """

    def __init__(self, w_packed, group_size, w_scales, w_offsets64, w_zeros=None):
        """The parts in their final form, checked: ``w_packed`` uint8 ``[N, K/2]``, a
        group size (a multiple of 4, the least any accepted layout has) dividing K,
        ``w_scales`` float32 and ``w_offsets64`` float64 ``[N, G]``, finite, and
        ``w_zeros`` int32 ``[N, G]`` or ``None``. :func:`prepack` and the importers make
        the parts from the accepted forms."""
        w_packed = args.as_array(w_packed, "w_packed", (np.uint8,))
        if w_packed.ndim != 2 or 0 in w_packed.shape:
            raise ValueError(f"w_packed: expected shape [N, K/2] with N, K > 0, got "
                             f"{list(w_packed.shape)}")
        self.N, k2 = w_packed.shape
        self.K = 2 * k2
        self.group_size = args.check_group_size(group_size, self.K, multiple=4)
        self.G = self.K // self.group_size
        self.w_packed = w_packed
        self.w_scales = args.as_array(w_scales, "w_scales", (np.float32,))
        self.w_offsets64 = args.as_array(w_offsets64, "w_offsets", (np.float64,))
        for a, name in ((self.w_scales, "w_scales"), (self.w_offsets64, "w_offsets")):
            args.check_shape(a, name, (self.N, self.G))
            args.check_finite(a, name)
        if w_zeros is not None:
            w_zeros = args.as_array(w_zeros, "w_zeros", (np.int32,))
            args.check_shape(w_zeros, "w_zeros", (self.N, self.G))
        self.w_zeros = w_zeros
        self.w_offsets = self.w_offsets64.astype(np.float32)
        # False for symmetric weights: the kernels then neither hold nor read offsets
        self.has_offsets = bool(np.any(self.w_offsets))
        # integer zero points in [-8, 7] ride in the nibble sums' top bits on the device
        self.zero_points = _integer_zeros(self.w_scales, self.w_offsets, self.group_size) \
            if self.has_offsets else None
        self.offset_kind = OFFSETS_NONE if not self.has_offsets else \
            OFFSETS_FLOAT if self.zero_points is None else OFFSETS_INTEGER
        # 16-bit group data where every value reads back exactly
        self.half_scales = _fp16_exact(self.w_scales)
        self.offset_bases = _half_offset_bases(self.w_scales, self.w_offsets64,
                                               self.w_offsets) \
            if self.offset_kind == OFFSETS_FLOAT else None

    @property
    def half_data(self):
        """The group data the device holds in float16 (the kernels' HALF_DATA bits), from
        ``half_scales`` and ``offset_bases``."""
        return HALF_SCALES * (self.half_scales is not None) + \
            HALF_OFFSETS * (self.offset_bases is not None)

    def symmetric(self):
        """The same nibbles and scales with every offset 0 (zero points 0)."""
        return QuantizedWeights(self.w_packed, self.group_size, self.w_scales,
                                np.zeros((self.N, self.G)), np.zeros((self.N, self.G),
                                                                    np.int32))

    def __repr__(self):
        return (f"<vkqlinear.QuantizedWeights N={self.N} K={self.K} "
                f"group_size={self.group_size}>")

    @property
    def nbytes(self):
        """Bytes of packed weights plus scales and offsets (public layout)."""
        return self.w_packed.nbytes + self.w_scales.nbytes + self.w_offsets.nbytes


def prepack(w_packed, group_size, w_scales=None, w_zeros=None, *, scales_and_zeros=None,
            w_offsets=None, device=None):
    """Check 4-bit weights once and return a reusable :class:`QuantizedWeights`.

    Give the per-group parameters in one of three forms:

    * ``w_scales [N, G]`` float32 and ``w_zeros [N, G]`` int32/int8 integer zero points
      (``w = s * (q - z)``, torchao / ExecuTorch ``linear_qta8a_qga4w``);
    * ``w_scales`` and ``w_offsets [N, G]`` float32 (``w = s * q + o``);
    * ``scales_and_zeros [G, N, 2]`` float32 holding ``(s, zf)`` (``w = s * q + zf``,
      ExecuTorch ``linear_qta8a_qga4w_qta8o``).

    With ``device`` (a :class:`~vkqlinear.Device`), the weights are also uploaded now (in
    the layout of the device's default kernel); otherwise on first use.
    """
    w = args.as_array(w_packed, "w_packed", (np.uint8,))
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"w_packed: expected shape [N, K/2] with N, K > 0, got {list(w.shape)}")
    k = 2 * w.shape[1]
    gs = args.check_group_size(group_size, k)
    n, g = w.shape[0], k // gs
    zeros = None
    if scales_and_zeros is not None:
        if w_scales is not None or w_zeros is not None or w_offsets is not None:
            raise ValueError("scales_and_zeros: give it alone, not with w_scales / w_zeros / "
                             "w_offsets")
        sz = args.as_array(scales_and_zeros, "scales_and_zeros", (np.float32,))
        args.check_shape(sz, "scales_and_zeros", (g, n, 2))
        args.check_finite(sz, "scales_and_zeros")
        s, o = scales_and_zeros_to_offsets(sz)
        o64 = o.astype(np.float64)
    else:
        if w_scales is None:
            raise TypeError("w_scales: required (or give scales_and_zeros)")
        s = args.as_array(w_scales, "w_scales", (np.float32,))
        args.check_shape(s, "w_scales", (n, g))
        args.check_finite(s, "w_scales")
        if (w_zeros is None) == (w_offsets is None):
            raise TypeError("w_zeros: give exactly one of w_zeros (integer zero points) or "
                            "w_offsets (float offsets)")
        if w_zeros is not None:
            zeros = args.as_array(w_zeros, "w_zeros", (np.int32, np.int8))
            args.check_shape(zeros, "w_zeros", (n, g))
            args.check_int8_range(zeros, "w_zeros")
            zeros = zeros.astype(np.int32)
            # o = -s * z is exact in float64 (24-bit significand times an 8-bit integer).
            o64 = -s.astype(np.float64) * zeros.astype(np.float64)
        else:
            o = args.as_array(w_offsets, "w_offsets", (np.float32,))
            args.check_shape(o, "w_offsets", (n, g))
            args.check_finite(o, "w_offsets")
            o64 = o.astype(np.float64)
    qw = QuantizedWeights(w, gs, np.ascontiguousarray(s, np.float32), o64, zeros)
    if device is not None:
        DeviceLinear.of(qw, resolve(device)).upload()
    return qw
