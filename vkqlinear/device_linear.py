"""One owner for what is made of a layer's weights on a device: :class:`DeviceLinear`.

Kompute's op-object pattern: for each (:class:`~vkqlinear.QuantizedWeights`,
:class:`~vkqlinear.Device`) pair there is one :class:`DeviceLinear` (:meth:`DeviceLinear.of`),
and it owns

* the weight uploads, one per device layout the kernels that ran need
  (:func:`vkqlinear.layout.device_layout`);
* the kernel choices (:func:`vkqlinear.kernels.choose_kernel` with the device's
  capabilities and tuned threshold), memoized per (algorithm, T, output, variant);
* the recorded calls (:class:`vkqlinear.dispatch.RecordedCall`), one per shape and kind,
  so that a repeated call records and allocates nothing.

Both ops and :class:`~vkqlinear.QLinear` end here: they check their arguments, then run
on this object, or on the CPU reference path for ``algorithm="reference"`` and where
:func:`fallback_or_raise` says so (the same rule for both).
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from . import tuning
from .device import default_device, resolve
from .dispatch import RecordedCall
from .errors import user_stacklevel
from .kernels import (
    KERNEL_ALGORITHMS,
    OFFSETS_FLOAT,
    Kernel,
    Variant,
    choose_kernel,
    kernel_from_config,
)
from .layout import device_layout, pad_groups, padded_group_size, split_channels
from .quant import check_convention, pack_int4, unpack_int4

__all__ = ["DeviceLinear", "fallback_or_raise"]

_owners = {}      # id(weights) -> {device: DeviceLinear}, emptied when the weights die
_owners_lock = threading.Lock()
_INT8_KINDS = {False: ("int8",), True: ("int8", "timed")}   # recorded-call kinds
_warned_fallback = False


class WeightBuffers:
    """A layer's weights uploaded to a device in one layout, split along N into pieces that
    each fit one binding (``pieces``: ``[(n0, n1, NP, tensors)]``, the four tensors the
    shaders bind for channels ``n0 .. n1 - 1``: units, scales, offsets, nibble sums with
    zero points, and the piece's padded channel count ``NP``). ``offsets``: the weights'
    :attr:`~vkqlinear.QuantizedWeights.offset_kind` (the kernels' HAS_OFFSET), ``half``
    its :attr:`~vkqlinear.QuantizedWeights.half_data` (HALF_DATA); where every
    offset is 0 (symmetric weights) or an integer zero point (held in the nibble sums'
    top bits), a 16-byte placeholder stands for the offsets, and where the layout's
    kernels form the nibble sums (:func:`~vkqlinear.layout.stores_sums`), for the sums:
    the kernels read neither placeholder."""

    def __init__(self, device, weights, lanes, layout, order, split):
        g = weights.group_size
        packed = weights.w_packed
        if padded_group_size(g) != g:   # groups padded with q = 0 (nibble 8)
            packed = pack_int4(pad_groups(unpack_int4(packed), g, 0))
        self.offsets = weights.offset_kind
        self.half = weights.half_data
        self.pieces = []
        for n0, n1 in split:
            zeros, s16, m16 = (None if a is None else a[n0:n1] for a in (
                weights.zero_points, weights.half_scales, weights.offset_bases))
            words, ws, wo, wsu, n_padded = device_layout(
                packed[n0:n1], padded_group_size(g), weights.w_scales[n0:n1],
                weights.w_offsets[n0:n1], lanes, layout, order, zeros, s16, m16)
            for name, a in (("w_packed (prepacked)", words), ("w_scales", ws)):
                device.check_binding(a.nbytes, name)
            if self.offsets != OFFSETS_FLOAT:      # none, or in the nibble sums
                wo = np.zeros(4, np.float32)
            if wsu is None:                        # formed by the kernels
                wsu = np.zeros(4, np.uint32)
            tensors = device.upload([words, ws, wo, wsu], f"the weights of an {weights.N} x "
                                    f"{weights.K} layer (channels {n0} to {n1 - 1})")
            self.pieces.append((n0, n1, n_padded, tensors))


class DeviceLinear:
    """A layer's weights on one device, and everything made of them there."""

    MAX_CALLS = 8     # recorded calls kept (least recently used dropped)

    def __init__(self, weights, device):
        # weakly: the registry's entry, and with it everything on the device, goes when
        # the weights go
        self._weights = weakref.ref(weights)
        self.device = device
        self.N, self.K = weights.N, weights.K
        self.group_size = weights.group_size
        # what the kernels see: groups padded to a multiple of 8 (layout.pad_groups)
        self.kernel_group_size = padded_group_size(weights.group_size)
        self.kernel_K = weights.K // weights.group_size * self.kernel_group_size
        self._buffers = {}           # (lanes, layout, order, split) -> WeightBuffers
        self._kernels = {}           # (algorithm, T, int8 out, variant, tuning state) -> Kernel
        # (algorithm or Kernel, T, int8 out, variant, kind) -> (tuning state, RecordedCall)
        self._calls = OrderedDict()

    @classmethod
    def of(cls, weights, device=None):
        """The :class:`DeviceLinear` of ``weights`` on the open ``device`` (``None``: the
        default device), made on first use; dropped with the weights, or when the device
        closes."""
        if device is None:
            device = default_device()
        per_device = _owners.get(id(weights))
        if per_device is not None:
            owner = per_device.get(device)
            if owner is not None:
                return owner       # (its calls check that the device is open)
        resolve(device)          # a Device, and open
        with _owners_lock:
            per_device = _owners.get(id(weights))
            if per_device is None:
                per_device = _owners[id(weights)] = {}
                weakref.finalize(weights, _owners.pop, id(weights), None)
            for d in [d for d in per_device if d.closed]:
                del per_device[d]
            return per_device.setdefault(device, cls(weights, device))

    def __repr__(self):
        return f"<vkqlinear.DeviceLinear {self.weights!r} on {self.device.name}>"

    @property
    def weights(self):
        """The :class:`~vkqlinear.QuantizedWeights` this object holds on the device."""
        weights = self._weights()
        if weights is None:
            raise ReferenceError("the weights of this DeviceLinear no longer exist")
        return weights

    @property
    def layouts(self):
        """The ``(lanes, layout, order, pieces)`` of every weight upload on the device."""
        return tuple(self._buffers)

    @property
    def calls(self):
        """The recorded calls kept (least recently used first)."""
        return tuple(call for _, call in self._calls.values())

    # -- choices -------------------------------------------------------------------------
    def kernel(self, algorithm, t, out_int8=False, variant=None):
        """The :class:`~vkqlinear.kernels.Kernel` that ``algorithm`` runs at ``t`` tokens:
        with ``variant`` (a :class:`~vkqlinear.kernels.Variant` or its name) or the
        device's forced variant (``$VKQLINEAR_VARIANT``), that code shape; else, for
        ``"auto"``, the configuration tuned for this shape and token bucket on this device
        (or the nearest tuned one; :mod:`vkqlinear.tuning`), else the default choice."""
        if variant is None:
            variant = self.device.forced_variant
        elif not isinstance(variant, Variant):
            variant = Variant.parse(variant)
        stamp = self.device.tuning_state() if algorithm == "auto" else None
        key = (algorithm, t, out_int8, variant, stamp)
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = self._choose(algorithm, t, out_int8, variant)
            while not self.device.verify(kernel):   # dropped from the device's caps
                kernel = self._choose(algorithm, t, out_int8, variant)
            if len(self._kernels) > 256:
                self._kernels.clear()
            self._kernels[key] = kernel
        return kernel

    def _choose(self, algorithm, t, out_int8, variant):
        """The kernel choice of :meth:`kernel`, before the self-check."""
        caps, info = self.device.caps, self.device.info
        if algorithm == "auto" and variant is None:
            config, _ = tuning.tuned_config(info, self.K, self.N, self.group_size,
                                            out_int8, t)
            if config is not None:
                kernel = kernel_from_config(config, t, self.kernel_group_size, out_int8,
                                            caps)
                if kernel is not None:
                    return kernel
        threshold = tuning.auto_threshold(info) if algorithm == "auto" else None
        try:
            return choose_kernel(algorithm, t, self.kernel_group_size, out_int8, caps,
                                 threshold, variant, self.N)
        except ValueError:
            wrong = self.device.wrong_variants()
            for alg in KERNEL_ALGORITHMS if variant is not None else ():
                if f"{alg}/{variant.name}" in wrong:   # forced, and known wrong here
                    raise ValueError(
                        f"variant: {variant.name!r} of the {alg} kernel answered wrong in "
                        f"this device's self-check ({wrong[alg + '/' + variant.name]}); "
                        "vkqlinear does not use it on this device") from None
            raise

    def split(self, kernel, t=1):
        """The pieces ``[(n0, n1)]`` the layer's channels are split into for ``kernel`` at
        ``t`` tokens, so that every buffer fits one binding (one piece when it fits)."""
        return split_channels(self.N, self.kernel_K, self.kernel_group_size, kernel.lanes, t,
                              1 if kernel.out_int8 else 4, self.device.max_binding)

    def buffers(self, kernel, t=1):
        """The weights in ``kernel``'s layout on the device, split as :meth:`split` says for
        ``t`` tokens, uploaded on first use."""
        split = tuple(self.split(kernel, t))
        key = (kernel.lanes, kernel.layout, kernel.order, split)
        with self.device.lock:
            self.device.check_open()
            buf = self._buffers.get(key)
            if buf is None:
                buf = self._buffers[key] = WeightBuffers(self.device, self.weights, *key)
            return buf

    def upload(self):
        """Upload the weights in the layout of the device's default kernel now (the first
        call would otherwise)."""
        self.buffers(self.kernel("auto", 1))

    # -- calls ---------------------------------------------------------------------------
    def recorded_call(self, algorithm, t, out_int8=False, variant=None, kind=("int8",),
                      timed=False, float_input=None, download=True, act_quant="spec"):
        """The recorded call that runs ``algorithm`` (or an explicit
        :class:`~vkqlinear.kernels.Kernel`) at ``t`` tokens for ``kind`` (a key naming the
        other options, which make it on a miss; see
        :class:`~vkqlinear.dispatch.RecordedCall`). Kept per (algorithm, T, output,
        variant, kind), least recently used dropped after :attr:`MAX_CALLS`; for
        ``"auto"``, remade when the tuning file changes."""
        if self.device.closed:
            self.device.check_open()
        stamp = self.device.tuning_state() if algorithm == "auto" else None
        key = (algorithm, t, out_int8, variant, kind)
        hit = self._calls.get(key)
        if hit is not None and hit[0] == stamp:
            try:                 # outside the lock: another thread's trim may drop it now,
                self._calls.move_to_end(key)
            except KeyError:     # which leaves the call itself valid (this thread holds it)
                pass
            return hit[1]
        kernel = algorithm if isinstance(algorithm, Kernel) else \
            self.kernel(algorithm, t, out_int8, variant)
        with self.device.lock:
            call = RecordedCall(self.device, kernel, self.buffers(kernel, t), t, self.kernel_K,
                                self.N, timed, float_input, download, act_quant,
                                (self.group_size, self.kernel_group_size))
            self._calls[key] = (stamp, call)
            self._calls.move_to_end(key)
            self._trim_calls()
        return call

    def _trim_calls(self):
        while len(self._calls) > self.MAX_CALLS:
            self._calls.popitem(last=False)

    @contextmanager
    def keeping_calls(self, n):
        """Keep up to ``n`` recorded calls inside the block, as many as before after it.
        For the tuner, which visits more kernels in turn than a layer keeps: a call made
        anew is slow in its first run (about a millisecond more on lavapipe), which would
        be timed as the kernel's."""
        before = self.MAX_CALLS
        self.MAX_CALLS = max(n, before)
        try:
            yield self
        finally:
            self.MAX_CALLS = before
            with self.device.lock:
                self._trim_calls()

    def run(self, algorithm, x2d, x_scales, x_zps, bias=None, out_scale=None,
            out_zero_point=None, *, variant=None, timed=False):
        """int8 activations ``x2d [T, K]`` with their per-token ``x_scales``, ``x_zps`` (checked,
        canonical) through ``algorithm`` (a name, or a
        :class:`~vkqlinear.kernels.Kernel` to run that one); returns
        ``(out [T, N], recorded_call)``.
        ``timed`` records device timestamps around the kernel
        (:meth:`~vkqlinear.dispatch.RecordedCall.kernel_seconds`)."""
        t = x2d.shape[0]
        call = self.recorded_call(algorithm, t, out_scale is not None, variant,
                                  _INT8_KINDS[timed], timed)
        if self.kernel_K != x2d.shape[1]:   # padding adds (zp - zp) * 0 to the sums
            x2d = pad_groups(x2d, self.group_size, x_zps.astype(np.int8))
        with self.device.lock:
            out = call.run(x2d, x_scales, x_zps, bias, out_scale, out_zero_point)
        return out, call

    def run_float(self, algorithm, t, xf2d=None, source=None, bias=None, out_scale=None,
                  out_zero_point=None, *, download=True, variant=None, act_quant="spec",
                  timed=False):
        """Float activations quantized per token on the device (``act_quant``: a convention
        of :data:`vkqlinear.quant.CONVENTIONS`), then the linear kernel, in one submission:
        ``xf2d [T, K]`` from the host, or ``source`` (a
        :class:`~vkqlinear.dispatch.RecordedCall` whose float output is on this device).
        Returns ``(out [T, N] or None when it stays on the device, recorded_call)``;
        ``timed`` as in :meth:`run`."""
        call = self.recorded_call(
            algorithm, t, out_scale is not None, variant,
            ("float", id(source), download, check_convention(act_quant), timed), timed,
            "host" if source is None else source, download, act_quant)
        with self.device.lock:
            out = call.run_float(xf2d, bias, out_scale, out_zero_point)
        return out, call


def fallback_or_raise(error, algorithm, device):
    """The one policy for a missing system piece (``error``: no Vulkan device, or no shader
    compiler), shared by the ops and :class:`~vkqlinear.QLinear`: ``"auto"`` with
    ``device=None`` falls back to the CPU reference path, warning once a process; any
    other algorithm, or an explicit device, raises ``error``."""
    if algorithm != "auto" or device is not None:
        raise error
    global _warned_fallback
    if not _warned_fallback:
        warnings.warn(f"vkqlinear: no GPU path ({error}); algorithm='auto' uses the CPU "
                      "reference path", RuntimeWarning, stacklevel=user_stacklevel())
        _warned_fallback = True
