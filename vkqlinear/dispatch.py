"""Running a :class:`~vkqlinear.kernels.Kernel` on a device through Kompute.

A *recorded call* (:class:`RecordedCall`) owns the per-shape input and output tensors, the
specialized pipeline (``kp.Algorithm``) and a pre-recorded ``kp.Sequence``: upload the
activations, dispatch (several times when the grid is split), download the result.
:class:`~vkqlinear.device_linear.DeviceLinear` keeps them per (kernel, T, kind), so a
repeated call with the same shapes records nothing and allocates nothing: it writes the
inputs into the tensors' host memory, replays the sequence and copies the output out, in
one call into the patched kp (``Sequence.eval_io``, which also releases the GIL while the
device works and waits the way the device's :attr:`~vkqlinear.Device.wait` says), or
with numpy copies around ``Sequence.eval`` on a stock kp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compiler import compile_shader
from .device import (
    ACCESS_HOST_READ,
    ACCESS_SHADER_READ,
    ACCESS_SHADER_WRITE,
    ACCESS_TRANSFER_WRITE,
    R32G32B32A32_UINT,
    STAGE_COMPUTE_SHADER,
    STAGE_HOST,
    STAGE_TRANSFER,
    TEXEL_BYTES,
    kp_has,
)
from .quant import CONVENTIONS, check_convention

__all__ = ["RecordedCall", "evaluate", "quantizer_constants", "quantizer_shape"]


QUANTIZE_LOCAL_X = 64                              # quantize_tokens.comp workgroup size
EVAL_IO = True    # use the patched kp's Sequence.eval_io where present (tests turn it off)
_NF_CLEAR = np.zeros(1, np.uint32)       # written into the non-finite flag before a run


def quantizer_constants(act_quant, local_x=QUANTIZE_LOCAL_X):
    """``quantize_tokens.comp``'s specialization constants for a convention of
    :data:`vkqlinear.quant.CONVENTIONS`: LOCAL_X, CONVENTION, EPS_BITS."""
    eps = CONVENTIONS[check_convention(act_quant)]
    return np.array([local_x, int(act_quant != "spec"),
                     int(np.asarray(eps, np.float32).view(np.uint32))], np.uint32)


def quantizer_shape(caps):
    """``quantize_tokens.comp``'s defines and workgroup size on a device with ``caps``: one
    subgroup a token reducing with subgroup arithmetic where that works (no shared memory,
    no barrier), else :data:`QUANTIZE_LOCAL_X` invocations reducing in shared memory."""
    if caps.subgroup_reduce:
        return {"SUBGROUP_REDUCE": 1}, caps.subgroup_size
    return {}, QUANTIZE_LOCAL_X


def _kp_eval_io(kp):
    """Whether the library may use this kp's ``Sequence.eval_io``."""
    return EVAL_IO and kp_has(kp, "eval_io")


def evaluate(device, seq):
    """Evaluate ``seq`` on ``device``, waiting as the device's ``wait`` says (blocking on a
    stock kp); call with ``device.lock`` held."""
    import kp
    if _kp_eval_io(kp):
        seq.eval_io([], [], None, device.yield_ns)
    else:
        seq.eval()


def _host_barrier(kp, tensors):
    """Shader-to-host barrier on ``tensors``' own buffers: the host reads host-visible
    outputs the kernels wrote (Kompute's sync op covers only staged ones)."""
    return kp.OpMemoryBarrier(tensors, ACCESS_SHADER_WRITE, ACCESS_HOST_READ,
                              STAGE_COMPUTE_SHADER, STAGE_HOST)


def _shader_barrier(kp, tensors):
    """Compute-to-compute barrier: earlier shader writes of ``tensors`` become visible to
    later shader reads (across submissions too: a barrier covers all earlier commands)."""
    return kp.OpMemoryBarrier(tensors, ACCESS_SHADER_WRITE, ACCESS_SHADER_READ,
                              STAGE_COMPUTE_SHADER, STAGE_COMPUTE_SHADER)


@dataclass
class _Piece:
    """One piece of a layer's channels in a recorded call: channels ``n0 .. n1 - 1``
    padded to ``n_padded``, its bias and output tensors, its linear kernel's algorithm, and its
    grid's rows (``gy``) dispatched ``n_dispatch`` times."""
    n0: int
    n1: int
    n_padded: int
    bias: object
    y: object
    algo: object
    gy: int
    n_dispatch: int


class RecordedCall:
    """Tensors, pipelines and sequence for one (kernel, T, K) on one layer's weights.

    ``weight_buffers.pieces``: the layer's channels in pieces that each fit one binding;
    each piece has its own pipeline, bias and output tensors, and all run in the one
    sequence, on the same activations. ``float_input``: ``None`` for int8 activations
    uploaded from the host; else the activations are float32 rows quantized on the device
    (``quantize_tokens.comp``) in the same sequence, read either from this call's own
    ``xf`` tensor (``float_input == "host"``) or from another call's float output
    (``float_input`` is that :class:`RecordedCall`: chaining without a host round trip).
    ``download=False`` leaves the output on the device (read it later with
    :meth:`download`; one piece only).
    """

    def __init__(self, device, kernel, weight_buffers, t, k, n, timed=False, float_input=None,
                 download=True, act_quant="spec", group=None):
        pieces = weight_buffers.pieces
        if not download and len(pieces) > 1:
            raise ValueError(f"output: 'device' needs the layer's output in one buffer; this "
                             f"layer's {n} channels are split in {len(pieces)} pieces to fit "
                             f"a binding of {device.max_binding} bytes")
        self.kernel = kernel
        self.t, self.k, self.n = t, k, n
        self.device = device
        self.generation = 0          # runs so far: a device-resident output's version
        # X rounded up to whole 16-byte texels (the texel-load variant reads 16 at a time)
        x_words = -(-t * k // TEXEL_BYTES) * (TEXEL_BYTES // 4)
        device.check_binding(x_words * 4, "x_q")
        spirv = compile_shader(kernel.shader, dict(kernel.defines))
        limits = device.info.limits["max_workgroup_count"]
        q = 1 if not kernel.out_int8 else t  # out qparams: dummies for float output
        self.x, self.x_scales, self.x_zps, self.out_scales, self.out_zps = device.io_tensors(
            [np.zeros(x_words, np.uint32), np.zeros(t, np.float32), np.zeros(t, np.int32),
             np.ones(q, np.float32), np.zeros(q, np.int32)], f"a recorded call at T={t}")
        self.pipelines = []        # what keeps the algorithms' pipelines (Device.algorithm)
        self._pieces = [self._make_piece(piece, spirv, limits, weight_buffers.offsets,
                                         weight_buffers.half)
                        for piece in pieces]
        self.n_dispatch = sum(p.n_dispatch for p in self._pieces)
        # one piece (the common case): its output is the call's, readable by a next layer
        self.y, self.n_padded = (self._pieces[0].y, self._pieces[0].n_padded) if len(pieces) == 1 \
            else (None, None)
        self.source = float_input if isinstance(float_input, RecordedCall) else None
        biases = [p.bias for p in self._pieces]
        if float_input is None:
            inputs = [self.x, self.x_scales, self.x_zps] + biases + \
                [self.out_scales, self.out_zps]
            n_quant = 0
        else:
            inputs, n_quant = self._make_quantizer(biases, group, act_quant, limits)
        self._record(inputs, n_quant, float_input is not None, download, timed)
        self._make_views(float_input is not None)

    def _make_piece(self, piece, spirv, limits, offsets, half):
        """The bias and output tensors and the linear kernel's algorithm of one piece of
        the layer's channels (``piece``: ``(n0, n1, NP, weight tensors)``; ``offsets`` and
        ``half``: the weights' HAS_OFFSET and HALF_DATA)."""
        n0, n1, n_padded, wt = piece
        device, kernel, t = self.device, self.kernel, self.t
        out_words = t * n_padded // 4 if kernel.out_int8 else t * n_padded
        device.check_binding(out_words * 4, "output")
        bias, y = device.io_tensors(
            [np.zeros(n_padded, np.float32),
             np.zeros(out_words, np.uint32 if kernel.out_int8 else np.float32)],
            f"a recorded call at T={t}")
        tensors = [self.x, self.x_scales, self.x_zps] + wt + \
            [bias, self.out_scales, self.out_zps, y]
        texel = None
        if kernel.variant.texel:  # X and the weight tensors as texel buffers (kp patch)
            texel = [R32G32B32A32_UINT if any(u is v for v in [self.x] + wt) else 0
                     for u in tensors]
        gx, gy, n_disp = kernel.grid(t, n_padded, limits)
        spec = np.array(kernel.pipeline_constants(offsets, half), np.uint32)
        pipe = device.algorithm(tensors, spirv, (gx, gy, 1), spec,
                                self._push(n1 - n0, n_padded, 0), texel)
        self.pipelines.append(pipe)
        return _Piece(n0, n1, n_padded, bias, y, pipe.algo, gy, n_disp)

    def _make_quantizer(self, biases, group, act_quant, limits):
        """The on-device activation quantizer and its float input; returns the tensors to
        upload before a run and the quantizer's dispatch count."""
        device, kernel, t, k = self.device, self.kernel, self.t, self.k
        # the float rows hold K_in = k / g_out * g_in values; the quantizer pads each
        # group of g_in to the kernel's g_out (both multiples of 4) with the zero point
        g_in, g_out = group or (kernel.group_size, kernel.group_size)
        k_in = k // g_out * g_in
        if self.source is not None:      # the producer's padded float output rows
            xf, stride = self.source.y, self.source.n_padded
            inputs = biases + [self.out_scales, self.out_zps]
        else:
            (xf,), stride = device.io_tensors([np.zeros(t * k_in, np.float32)],
                                              f"float activations at T={t}"), k_in
            self._xf_in = xf.data().reshape(t, k_in)     # see _make_views
            inputs = [xf] + biases + [self.out_scales, self.out_zps]
        # the quantizer's non-finite flag: cleared with the inputs, read after the run
        (self.nf,) = device.io_tensors([np.zeros(1, np.uint32)], "a recorded call's flag")
        inputs.append(self.nf)
        self._qgy = min(t, limits[1])
        self._qpush = lambda base: np.array([t, k_in, stride, base, g_in // 4, g_out // 4],
                                            dtype=np.uint32)
        defines, local_x = quantizer_shape(device.caps)
        pipe = device.algorithm(
            [xf, self.x, self.x_scales, self.x_zps, self.nf],
            compile_shader("quantize_tokens.comp", defines), (1, self._qgy, 1),
            quantizer_constants(act_quant, local_x), self._qpush(0))
        self.pipelines.append(pipe)
        self.qalgo = pipe.algo
        return inputs, -(-t // self._qgy)

    def _record(self, inputs, n_quant, float_input, download, timed):
        """Record the sequence: uploads, the quantizer (``n_quant`` dispatches), barriers,
        the linear kernel of every piece, the downloads."""
        import kp
        device, kernel = self.device, self.kernel
        ops = [kp.OpTensorSyncDevice(inputs)]
        if float_input:
            if not device.unified_memory:   # the flag's clearing copy, then the atomic
                ops.append(kp.OpMemoryBarrier([self.nf], ACCESS_TRANSFER_WRITE,
                                              ACCESS_SHADER_READ | ACCESS_SHADER_WRITE,
                                              STAGE_TRANSFER, STAGE_COMPUTE_SHADER))
            if self.source is not None:
                ops.append(_shader_barrier(kp, [self.source.y]))
            ops += [kp.OpAlgoDispatch(self.qalgo, self._qpush(i * self._qgy))
                    for i in range(n_quant)]
            ops.append(_shader_barrier(kp, [self.x, self.x_scales, self.x_zps]))
        self._first_linear = len(ops)     # timestamp i is taken after op i - 1
        self.timed = timed
        mgr = device.manager
        self.seq = mgr.sequence(0, len(ops) + self.n_dispatch + 2) if timed else \
            mgr.sequence()
        for op in ops:
            self.seq.record(op)
        for p in self._pieces:
            rows = p.gy * kernel.tokens_per_row
            for i in range(p.n_dispatch):
                self.seq.record(kp.OpAlgoDispatch(p.algo, self._push(p.n1 - p.n0, p.n_padded,
                                                                      i * rows)))
        self._download = download
        back = ([p.y for p in self._pieces] if download else []) + \
            ([self.nf] if float_input else [])
        if back:
            self.seq.record(kp.OpTensorSyncLocal(back))
            self.seq.record(_host_barrier(kp, back))

    def _make_views(self, float_input):
        """Numpy views of the tensors' host memory, made once: each kp data() call costs
        microseconds. The memory stays mapped as long as the device is open, and every use
        goes through device.check_open first."""
        import kp
        t, k = self.t, self.k
        self._has_bias = False
        self._x_in = self.x.data().view(np.int8)[:t * k].reshape(t, k)
        self._x_scales_in, self._x_zps_in = self.x_scales.data(), self.x_zps.data()
        self._out_scales_in, self._out_zps_in = self.out_scales.data(), self.out_zps.data()
        self._bias_in = [p.bias.data()[:p.n1 - p.n0] for p in self._pieces]
        self._y_outs = []
        for p in self._pieces:
            y = p.y.data()
            self._y_outs.append((y.view(np.int8) if self.kernel.out_int8 else y)
                                .reshape(t, p.n_padded)[:, :p.n1 - p.n0])
        self._y_out = self._y_outs[0] if len(self._pieces) == 1 else None
        self._bias_slices = [slice(p.n0, p.n1) for p in self._pieces]
        self._int8_views = [self._x_in, self._x_scales_in, self._x_zps_in]
        self._nf = self.nf.data() if float_input else None
        # the patched kp's one-call round trip (copies, eval, copy out, and the wait the
        # device asks for); None on a stock kp, or one built before the patch's item 8
        self._eval_io = self.seq.eval_io if _kp_eval_io(kp) else None

    @property
    def pieces(self):
        """How many pieces the layer's channels are split in (one when they fit a
        binding)."""
        return len(self._pieces)

    @property
    def uses_eval_io(self):
        """Whether a run goes through the patched kp's ``Sequence.eval_io``."""
        return self._eval_io is not None

    def _push(self, n, n_padded, token_base):
        return np.array([self.t, self.k, n, n_padded, token_base], dtype=np.uint32)

    def run(self, x2d, x_scales, x_zps, bias=None, out_scale=None, out_zero_point=None):
        """Write the int8 inputs, replay the sequence, return the output ``[T, N]``."""
        return self._replay([x2d, x_scales, x_zps], self._int8_views, bias, out_scale,
                            out_zero_point)

    def run_float(self, xf2d=None, bias=None, out_scale=None, out_zero_point=None):
        """Float activations (``xf2d [T, K]``, or the source call's output on the device):
        quantize and multiply in one submission. Returns the output, or ``None`` when it
        stays on the device; raises ``ValueError`` when a row held an inf or a NaN (the
        quantizer's flag: the host does not scan the rows)."""
        if self.source is None:
            out = self._replay([xf2d, _NF_CLEAR], [self._xf_in, self._nf], bias, out_scale,
                               out_zero_point)
        else:
            out = self._replay([_NF_CLEAR], [self._nf], bias, out_scale, out_zero_point)
        if self._nf[0]:
            raise ValueError("x: expected finite values" if self.source is None else
                             "x: the DeviceTensor holds values that are not finite (inf or "
                             "NaN; its layer's output overflowed float32, or its input was "
                             "not finite)")
        return out

    def _replay(self, inputs, views, bias, out_scale, out_zero_point):
        """Copy ``inputs[i]`` into ``views[i]`` (and the epilogue's arguments into theirs),
        replay the sequence, return a copy of the output (``None`` if it stays on the
        device). The inputs are canonical: C-contiguous, the views' shapes and dtypes."""
        if bias is not None:
            inputs = inputs + [bias[s] for s in self._bias_slices]
            views = views + self._bias_in
            self._has_bias = True
        elif self._has_bias:          # the previous call's bias, still on the device
            for v in self._bias_in:
                v[:] = 0.0
            self._has_bias = False
        if self.kernel.out_int8:
            inputs = inputs + [out_scale, out_zero_point]
            views = views + [self._out_scales_in, self._out_zps_in]
        self.generation += 1
        if self._eval_io is not None:
            out = self._eval_io(inputs, views, self._y_out if self._download else None,
                                self.device.yield_ns)
            return out if self._y_out is not None or not self._download else self._output()
        for a, v in zip(inputs, views):
            np.copyto(v, a)
        self.seq.eval()
        return self._output() if self._download else None

    def download(self):
        """Copy the device-resident output to the host; returns ``[T, N]``."""
        self._sync_local([self.y])
        return self._output()

    def quantized_activations(self):
        """The on-device quantizer's last result, ``(x_q [T, K], scale [T], zp [T])``
        (downloads them; for tests and debugging)."""
        self._sync_local([self.x, self.x_scales, self.x_zps])
        return self._x_in.copy(), self._x_scales_in.copy(), self._x_zps_in.copy()

    def _sync_local(self, tensors):
        """Copy ``tensors`` from the device to their host memory, in a submission of its
        own (waiting as the device's ``wait`` says; under the device's lock, which
        :meth:`quantized_activations`' callers do not hold)."""
        import kp
        with self.device.lock:
            seq = self.device.manager.sequence()
            seq.record(kp.OpTensorSyncLocal(tensors))
            seq.record(_host_barrier(kp, tensors))
            evaluate(self.device, seq)

    def _output(self):
        # a copy: the tensor memory is reused by the next call
        if self._y_out is not None:
            return self._y_out.copy()
        return np.concatenate(self._y_outs, axis=1)

    def kernel_seconds(self, quantizer=False):
        """Device time of the linear dispatches of the last run, in seconds (``timed``
        only); with ``quantizer``, from the start of the on-device activation quantizer
        (float input) to the end of the linear dispatches."""
        ts = self.seq.get_timestamps()
        first = self._first_linear
        start = 1 if quantizer else first    # timestamp 1: after the inputs' upload
        return (int(ts[first + self.n_dispatch]) - int(ts[start])) * \
            self.device.timestamp_period_s
