"""Roofline calibration on a device: streaming-read bandwidth and int32 multiply-add rate,
measured with device timestamps by two small kernels (``shaders/calib_*.comp``), each
dispatched back to back (warm) in one sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compiler import compile_shader
from .dispatch import evaluate

__all__ = ["Timing", "Calibration", "time_dispatches", "read_kernel", "alu_kernel"]


@dataclass(frozen=True)
class Timing:
    """Device times of repeated dispatches, in seconds."""
    times: tuple

    @property
    def min(self):
        return min(self.times)

    @property
    def median(self):
        return float(np.median(self.times))


def time_dispatches(device, algo, push, runs):
    """Dispatch ``algo`` ``runs + 1`` times back to back in one sequence; the device time
    of each dispatch after the first (a warm-up), from timestamps."""
    import kp
    period = device.info.limits["timestamp_period_ns"] * 1e-9
    with device.lock:
        seq = device.manager.sequence(0, runs + 2)
        for _ in range(runs + 1):
            seq.record(kp.OpAlgoDispatch(algo, push))
        evaluate(device, seq)           # waiting like the library's calls
        ts = [int(v) for v in seq.get_timestamps()]
    deltas = [(ts[i + 1] - ts[i]) * period for i in range(runs + 1)]
    return Timing(tuple(deltas[1:]))


class Calibration:
    """A calibration kernel made once and timed on demand: ``work`` (bytes read or
    multiply-adds) per dispatch; :meth:`time` dispatches it back to back (warm)."""

    def __init__(self, device, algo, push, work, tensors):
        self.device, self.algo, self.push, self.work = device, algo, push, work
        self._tensors = tensors      # kept alive with the algorithm

    def time(self, runs):
        """:class:`Timing` of ``runs`` warm dispatches."""
        return time_dispatches(self.device, self.algo, self.push, runs)


def read_kernel(device, nbytes):
    """The streaming-read kernel over ``nbytes`` bytes (rounded down to 16-byte words):
    workgroup w reads its own contiguous chunk with 16-byte loads."""
    import kp
    words = max(1, nbytes // 16)
    local = max(8, min(64, int(device.info.subgroup.get("size") or 8)))
    wgs = 256
    chunk = -(-words // wgs)
    with device.lock:
        mgr = device.manager
        src = mgr.tensor_t(np.arange(words * 4, dtype=np.uint32))
        dst = mgr.tensor_t(np.zeros(wgs * local, np.uint32))
        mgr.sequence().eval(kp.OpTensorSyncDevice([src]))
        push = np.array([words, chunk], np.uint32)
        algo = mgr.algorithm([src, dst], compile_shader("calib_read.comp"), (wgs, 1, 1),
                             np.array([local], np.uint32), push)
    return Calibration(device, algo, push, words * 16, (src, dst))


def alu_kernel(device, iters=2048):
    """The int32 multiply-add kernel: 32 independent chains of ``iters`` steps in each
    of 64 x 64 invocations."""
    local, wgs, chains = 64, 64, 32
    with device.lock:
        mgr = device.manager
        dst = mgr.tensor_t(np.zeros(wgs * local, np.int32))
        push = np.array([iters, 1664525, 1013904223 & 0x7FFFFFFF], np.uint32)
        algo = mgr.algorithm([dst], compile_shader("calib_alu.comp"), (wgs, 1, 1),
                             np.array([local], np.uint32), push)
    return Calibration(device, algo, push, wgs * local * iters * chains, (dst,))
