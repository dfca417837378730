"""Running a :class:`~vkqlinear.kernels.Kernel` on a device through Kompute.

A *recorded call* (:class:`RecordedCall`) owns the per-shape input and output tensors, the
specialized pipeline (``kp.Algorithm``) and a pre-recorded ``kp.Sequence``: upload the
activations, dispatch (several times when the grid is split), download the result. It is
cached per (kernel, T, K) on the prepacked weights, so a repeated call with the same
shapes records nothing and allocates nothing: it writes the inputs into the tensors' host
memory, replays the sequence and copies the output out.
"""

from __future__ import annotations

import numpy as np

from .compiler import compile_shader
from .weights import _check_range

__all__ = ["RecordedCall", "run"]


class RecordedCall:
    """Tensors, pipeline and sequence for one (kernel, T, K) on one prepacked weights."""

    def __init__(self, device, kernel, dev_weights, t, k, n, timed=False):
        import kp
        self.kernel = kernel
        self.t, self.k, self.n, self.np_ = t, k, n, dev_weights.NP
        np_ = self.np_
        out_words = t * np_ // 4 if kernel.out_int8 else t * np_
        _check_range(device, t * k, "x_q")
        _check_range(device, out_words * 4, "output")
        spirv = compile_shader(kernel.shader, dict(kernel.defines))
        gx, gy, n_disp = kernel.grid(t, np_, device.info.limits["max_workgroup_count"])
        mgr = device.manager
        q = 1 if not kernel.out_int8 else t  # out qparams: dummies for float output
        self.x = mgr.tensor_t(np.zeros(t * k // 4, np.uint32))
        self.xs = mgr.tensor_t(np.zeros(t, np.float32))
        self.xz = mgr.tensor_t(np.zeros(t, np.int32))
        self.bias = mgr.tensor_t(np.zeros(np_, np.float32))
        self.os = mgr.tensor_t(np.ones(q, np.float32))
        self.oz = mgr.tensor_t(np.zeros(q, np.int32))
        self.y = mgr.tensor_t(np.zeros(out_words, np.float32 if not kernel.out_int8
                                       else np.uint32))
        inputs = [self.x, self.xs, self.xz, self.bias, self.os, self.oz]
        tensors = ([self.x, self.xs, self.xz] + dev_weights.tensors
                   + [self.bias, self.os, self.oz, self.y])
        spec = np.array(kernel.spec_constants, dtype=np.uint32)
        push = self._push(0)
        self.algo = mgr.algorithm(tensors, spirv, (gx, gy, 1), spec, push)
        self.n_dispatch = n_disp
        self.seq = mgr.sequence(0, n_disp + 2) if timed else mgr.sequence()
        self.seq.record(kp.OpTensorSyncDevice(inputs))
        for i in range(n_disp):
            self.seq.record(kp.OpAlgoDispatch(self.algo, self._push(i * gy * kernel.tokens_per_row)))
        self.seq.record(kp.OpTensorSyncLocal([self.y]))
        self._has_bias = False

    def _push(self, token_base):
        return np.array([self.t, self.k, self.n, self.np_, token_base], dtype=np.uint32)

    def run(self, x2d, xs, xz, bias=None, out_scale=None, out_zero_point=None):
        """Write the inputs, replay the sequence, return the output ``[T, N]``."""
        self.x.data()[:] = x2d.reshape(-1).view(np.uint32)
        self.xs.data()[:] = xs
        self.xz.data()[:] = xz
        if bias is not None:
            b = self.bias.data()
            b[:self.n] = bias
            self._has_bias = True
        elif self._has_bias:
            self.bias.data()[:] = 0.0
            self._has_bias = False
        if self.kernel.out_int8:
            self.os.data()[:] = out_scale
            self.oz.data()[:] = out_zero_point
        self.seq.eval()
        y = self.y.data()
        if self.kernel.out_int8:
            out = y.view(np.int8).reshape(self.t, self.np_)
        else:
            out = y.reshape(self.t, self.np_)
        return np.array(out[:, :self.n])  # copy: the tensor memory is reused by the next call

    def kernel_ns(self, timestamp_period_ns):
        """Device time of the dispatches of the last run, in ns (``timed`` calls only)."""
        ts = self.seq.get_timestamps()
        return (int(ts[1 + self.n_dispatch]) - int(ts[1])) * timestamp_period_ns


def run(device, kernel, weights, x2d, xs, xz, bias=None, out_scale=None,
        out_zero_point=None, timed=False):
    """Run ``kernel`` on ``device``; returns ``(out [T, N], recorded_call)``."""
    t, k = x2d.shape
    with device.lock:
        device.check_open()
        dw = weights.on_device(device, kernel.lanes, kernel.layout)
        call = dw.call((kernel, t, k, timed),
                       lambda: RecordedCall(device, kernel, dw, t, k, weights.N, timed))
        out = call.run(x2d, xs, xz, bias, out_scale, out_zero_point)
    return out, call
