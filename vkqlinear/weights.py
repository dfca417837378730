"""Quantized weights, checked once, and their device layout, uploaded once per device.

:class:`QuantizedWeights` holds the public layout of SPEC.md (packed ``[N, K/2]``, scales
and offsets ``[N, G]``) and, per device, the prepacked buffers the shaders read. Both ops
accept it in place of the raw weight arrays; :func:`prepack` makes one.

The device layout (made by :func:`device_layout`, read by ``shaders/common.glsl``):

* channels are padded to ``NP``, a multiple of ``8 * lanes``, and taken in blocks of 8;
* the weights come in *units*, what one shader load brings of one block:
  - layout ``"swar"`` (the SWAR int32 kernels): a unit is one uint32 word holding the raw
    nibbles ``u = q + 8`` of the 8 channels of a block at one k (bits ``4i .. 4i+3`` for
    channel ``8b + i``);
  - layout ``"swar64"`` (SWAR reading 64-bit words, ``int64`` variant): eight such words,
    k .. k + 7 side by side, read as one u64vec4 (lavapipe pays per load instruction);
  - layout ``"dot"`` (the OpSDot kernels): eight words, one per channel, each holding 8 k:
    byte m of k-octet j = ``u[8j + m] | u[8j + 4 + m] << 4``, so that ``w & 0x0F0F0F0F``
    and ``(w >> 4) & 0x0F0F0F0F`` pair with the two activation words of the octet;
* the units are ordered ``"blocks"`` (the TILED kernel and the shared-memory COOPERATIVE
  kernel, whose neighbouring invocations are neighbouring blocks):
  ``[b // lanes][k unit][b % lanes]``; or ``"groups"`` (the subgroup COOPERATIVE kernel,
  whose ``lanes`` neighbouring invocations are workers taking groups ``w, w + lanes, ...``
  of one block): ``[b][g // lanes][k unit within the group][g % lanes]``, the last round
  holding only the ``G % lanes`` groups left. Either way neighbouring invocations read
  neighbouring memory at each step;
* per group: ``s``, ``o`` (float32) and ``sum u`` (int32), ordered
  ``[b // lanes][g][b % lanes][8]`` (``"blocks"``) or ``[b][g][8]`` (``"groups"``).

``lanes`` is the number of neighbouring invocations that read neighbouring units;
:mod:`vkqlinear.kernels` picks it per device and kernel (the subgroup size; at least 8 for
``"blocks"``). A layer used by both kernels (``auto`` across token counts) keeps both
orders on the device: twice the weight memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from . import _args
from .quant import scales_and_zeros_to_offsets

__all__ = ["QuantizedWeights", "prepack", "device_layout"]


class QuantizedWeights:
    """4-bit group-quantized weights ``w = s * q + o`` for one linear layer.

    Prefer :func:`prepack` to make one. Attributes: ``w_packed`` uint8 ``[N, K/2]``,
    ``group_size``, ``w_scales`` float32 ``[N, G]``, ``w_offsets`` float32 ``[N, G]``,
    ``w_offsets64`` (the exact offsets, float64, used by the reference), ``N``, ``K``,
    ``G``, and ``w_zeros`` (int32 ``[N, G]`` when made from integer zero points, else
    ``None``).
    """

    def __init__(self, w_packed, group_size, w_scales, w_offsets64, w_zeros=None):
        self.w_packed = w_packed
        self.group_size = group_size
        self.w_scales = w_scales
        self.w_offsets64 = w_offsets64
        self.w_offsets = w_offsets64.astype(np.float32)
        self.w_zeros = w_zeros
        self.N, k2 = w_packed.shape
        self.K = 2 * k2
        self.G = self.K // group_size
        self._device_state = {}  # (id(device), lanes, layout, order) -> _DeviceWeights
        # (device, kernel, key, RecordedCall) of the last two calls, most recent first
        self.recent_calls = (None, None)
        self._lock = threading.Lock()

    def __repr__(self):
        return (f"<vkqlinear.QuantizedWeights N={self.N} K={self.K} "
                f"group_size={self.group_size}>")

    @property
    def nbytes(self):
        """Bytes of packed weights plus scales and offsets (public layout)."""
        return self.w_packed.nbytes + self.w_scales.nbytes + self.w_offsets.nbytes

    def on_device(self, device, kernel):
        """The device buffers ``kernel`` (a :class:`~vkqlinear.kernels.Kernel`) reads on
        ``device`` (its ``lanes``, ``layout`` and ``order``), uploading them on first use."""
        device.check_open()
        lanes, layout, order = kernel.lanes, kernel.layout, kernel.order
        key = (id(device), lanes, layout, order)
        with self._lock:
            st = self._device_state.get(key)
            if st is None or st.device is not device:
                st = _DeviceWeights(device, self, lanes, layout, order)
                self._device_state[key] = st
            return st


class _DeviceWeights:
    """Prepacked weight tensors on one device, plus the recorded calls that use them."""

    MAX_CALLS = 8  # recorded (shape, kernel) entries kept per weights and device

    def __init__(self, device, weights, lanes, layout, order):
        import kp
        self.device = device
        self.lanes = lanes
        words, ws, wo, wsu, self.NP = device_layout(
            weights.w_packed, weights.group_size, weights.w_scales, weights.w_offsets, lanes,
            layout, order)
        _check_range(device, words.nbytes, "w_packed (prepacked)")
        with device.lock:
            mgr = device.manager
            self.tensors = [mgr.tensor_t(words), mgr.tensor_t(ws), mgr.tensor_t(wo),
                            mgr.tensor_t(wsu)]
            mgr.sequence().eval(kp.OpTensorSyncDevice(self.tensors))
        self.calls = OrderedDict()

    def call(self, key, make):
        """The cached recorded call for ``key``, made by ``make()`` on a miss (LRU)."""
        c = self.calls.get(key)
        if c is None:
            c = make()
            self.calls[key] = c
            while len(self.calls) > self.MAX_CALLS:
                self.calls.popitem(last=False)
        else:
            self.calls.move_to_end(key)
        return c


def _check_range(device, nbytes, name):
    lim = device.info.limits["max_storage_buffer_range"]
    if nbytes > lim:
        raise ValueError(f"{name}: needs a {nbytes}-byte storage buffer, more than this "
                         f"device's maxStorageBufferRange of {lim} bytes")


def device_layout(w_packed, group_size, w_scales, w_offsets, lanes, layout="swar",
                  order="blocks"):
    """The shaders' weight layout: ``layout`` ``"swar"``, ``"swar64"`` or ``"dot"`` in
    ``order`` ``"blocks"`` or ``"groups"`` (see the module doc).

    Returns ``(words uint32, s float32, o float32, sum_u int32, NP)``, each flat.
    """
    n, k2 = w_packed.shape
    k = 2 * k2
    g = k // group_size
    blk = 8 * lanes
    np_ = -(-n // blk) * blk
    nb = np_ // 8
    u = np.zeros((np_, k), dtype=np.uint8)          # raw nibbles; padding channels are 0
    u[:n, 0::2] = w_packed >> 4
    u[:n, 1::2] = w_packed & 0x0F
    # units[b][j][:]: the uint32 words one load of block b at k-unit j brings
    if layout in ("swar", "swar64"):
        ub = u.reshape(nb, 8, k)
        words = np.zeros((nb, k), dtype=np.uint32)
        for i in range(8):
            words |= ub[:, i, :].astype(np.uint32) << np.uint32(4 * i)
        per = 1 if layout == "swar" else 8       # swar64: k .. k + 7 side by side
        units = words.reshape(nb, k // per, per)
    elif layout == "dot":
        uo = u.reshape(np_, k // 8, 2, 4).astype(np.uint32)   # [channel][octet][half][m]
        byte = uo[:, :, 0, :] | (uo[:, :, 1, :] << np.uint32(4))
        words = (byte << (np.arange(4, dtype=np.uint32) * np.uint32(8))).sum(
            axis=2, dtype=np.uint32)                              # [channel][octet]
        units = words.reshape(nb, 8, k // 8).transpose(0, 2, 1)   # [block][octet][8]
    else:
        raise ValueError(f"layout: expected 'swar', 'swar64' or 'dot', got {layout!r}")
    ku, width = units.shape[1], units.shape[2]
    if order == "blocks":       # [b // lanes][j][b % lanes]
        units = units.reshape(nb // lanes, lanes, ku, width).transpose(0, 2, 1, 3)
    elif order == "groups":     # [b][g // lanes][j within the group][g % lanes]
        per_group = units.reshape(nb, g, ku // g, width)
        units = np.concatenate([per_group[:, r:r + lanes].transpose(0, 2, 1, 3)
                                .reshape(nb, -1) for r in range(0, g, lanes)], axis=1)
    else:
        raise ValueError(f"order: expected 'blocks' or 'groups', got {order!r}")

    def groups(a, dtype):
        full = np.zeros((np_, g), dtype=dtype)
        full[:n] = a
        if order == "groups":   # [b][g][8]
            return full.reshape(nb, 8, g).transpose(0, 2, 1).ravel()
        return full.reshape(nb // lanes, lanes, 8, g).transpose(0, 3, 1, 2).ravel()

    sum_u = u.reshape(np_, g, group_size).sum(axis=2, dtype=np.int32)
    return (np.ascontiguousarray(units).ravel(), groups(w_scales, np.float32),
            groups(w_offsets, np.float32), groups(sum_u[:n], np.int32), np_)


def prepack(w_packed, group_size, w_scales=None, w_zeros=None, *, scales_and_zeros=None,
            w_offsets=None, device=None, _k=None):
    """Check 4-bit weights once and return a reusable :class:`QuantizedWeights`.

    Give the per-group parameters in one of three forms:

    * ``w_scales [N, G]`` float32 and ``w_zeros [N, G]`` int32/int8 integer zero points
      (``w = s * (q - z)``, torchao / ExecuTorch ``linear_qta8a_qga4w``);
    * ``w_scales`` and ``w_offsets [N, G]`` float32 (``w = s * q + o``);
    * ``scales_and_zeros [G, N, 2]`` float32 holding ``(s, zf)`` (``w = s * q + zf``,
      ExecuTorch ``linear_qta8a_qga4w_qta8o``).

    With ``device`` (a :class:`~vkqlinear.Device`), the weights are also uploaded now;
    otherwise on first use.
    """
    w = _args.as_array(w_packed, "w_packed", (np.uint8,))
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"w_packed: expected shape [N, K/2] with N, K > 0, got {list(w.shape)}")
    k = 2 * w.shape[1]
    if _k is not None and k != _k:   # the ops know K from x_q: name w_packed first
        raise ValueError(f"w_packed: expected shape [N, K/2] = [N, {_k // 2}] to match "
                         f"x_q's K={_k}, got {list(w.shape)}")
    gs = _args.check_group_size(group_size, k)
    n, g = w.shape[0], k // gs
    zeros = None
    if scales_and_zeros is not None:
        if w_scales is not None or w_zeros is not None or w_offsets is not None:
            raise ValueError("scales_and_zeros: give it alone, not with w_scales / w_zeros / "
                             "w_offsets")
        sz = _args.as_array(scales_and_zeros, "scales_and_zeros", (np.float32,))
        _args.check_shape(sz, "scales_and_zeros", (g, n, 2))
        _args.check_finite(sz, "scales_and_zeros")
        s, o = scales_and_zeros_to_offsets(sz)
        o64 = o.astype(np.float64)
    else:
        if w_scales is None:
            raise TypeError("w_scales: required (or give scales_and_zeros)")
        s = _args.as_array(w_scales, "w_scales", (np.float32,))
        _args.check_shape(s, "w_scales", (n, g))
        _args.check_finite(s, "w_scales")
        if (w_zeros is None) == (w_offsets is None):
            raise TypeError("w_zeros: give exactly one of w_zeros (integer zero points) or "
                            "w_offsets (float offsets)")
        if w_zeros is not None:
            zeros = _args.as_array(w_zeros, "w_zeros", (np.int32, np.int8))
            _args.check_shape(zeros, "w_zeros", (n, g))
            _args.check_int8_range(zeros, "w_zeros")
            zeros = zeros.astype(np.int32)
            # o = -s * z is exact in float64 (24-bit significand times an 8-bit integer).
            o64 = -s.astype(np.float64) * zeros.astype(np.float64)
        else:
            o = _args.as_array(w_offsets, "w_offsets", (np.float32,))
            _args.check_shape(o, "w_offsets", (n, g))
            _args.check_finite(o, "w_offsets")
            o64 = o.astype(np.float64)
    qw = QuantizedWeights(w, gs, np.ascontiguousarray(s, np.float32), o64, zeros)
    if device is not None:
        from .device import resolve
        from .kernels import choose_kernel
        dev = resolve(device)
        default = dev.caps.variants("tiled")[0]          # the default tiled kernel's layout
        kernel = choose_kernel("tiled", 1, gs, False, dev.caps, variant=default)
        qw.on_device(dev, kernel)
    return qw
