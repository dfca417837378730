"""Roofline calibration on a device: streaming-read bandwidth and int32 multiply-add rate,
measured with device timestamps by two small kernels (``shaders/measure/calib_*.comp``), each
dispatched back to back (warm) in one sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..compiler import compile_shader
from ..device import R32G32B32A32_UINT
from ..dispatch import evaluate

__all__ = ["Timing", "Calibration", "time_dispatches", "read_kernel", "alu_kernel",
           "fastest_alu",
           "fastest_read", "host_read_bandwidth", "SWAR_MACS_PER_MADD"]

# The SWAR kernels multiply two channels' nibbles by one activation in one int32
# multiply-add (the two 16-bit halves): two of the operator's multiply-adds each.
SWAR_MACS_PER_MADD = 2


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
    period = device.timestamp_period_s
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


def read_kernel(device, nbytes, texel=False):
    """The streaming-read kernel over ``nbytes`` bytes (rounded down to 16-byte words):
    workgroup w reads its own contiguous chunk with 16-byte loads, from a storage buffer
    or (``texel``, where the device has texel-buffer loads) a uniform texel buffer."""
    import kp
    words = max(1, nbytes // 16)
    local = max(8, min(64, int(device.info.subgroup.get("size") or 8)))
    wgs = 256
    chunk = -(-words // wgs)
    with device.lock:
        mgr = device.manager
        src, dst = device.tensors([np.arange(words * 4, dtype=np.uint32),
                                   np.zeros(wgs * local, np.uint32)], "a read calibration")
        mgr.sequence().eval(kp.OpTensorSyncDevice([src]))
        push = np.array([words, chunk], np.uint32)
        spirv = compile_shader("measure/calib_read.comp", {"TEXEL_LOADS": 1} if texel else {})
        if texel:
            kp.Algorithm.set_next_texel_formats([R32G32B32A32_UINT, 0])
        try:
            algo = mgr.algorithm([src, dst], spirv, (wgs, 1, 1), np.array([local], np.uint32),
                                 push)
        finally:       # a thread-local of kp's: never left for the next algorithm made here
            if texel:
                kp.Algorithm.set_next_texel_formats([])
    return Calibration(device, algo, push, words * 16, (src, dst))


def fastest_read(device, nbytes, runs=10):
    """``(bytes per second, how)``: the faster of the storage-buffer and (where the device
    has them) texel-buffer streaming reads of ``nbytes``, each the median of ``runs``."""
    best = (0.0, "")
    paths = [("storage buffer", False)]
    if device.enabled("texelBufferLoads"):
        paths.append(("texel buffer", True))
    for how, texel in paths:
        cal = read_kernel(device, nbytes, texel)
        cal.time(3)
        rate = cal.work / cal.time(runs).median
        best = max(best, (rate, how))
    return best


def host_read_bandwidth(nbytes, threads=None, runs=5):
    """The host's streaming-read bandwidth over ``nbytes`` (numpy reductions over as many
    threads as there are CPUs): the physical limit under a CPU Vulkan device."""
    import os
    import threading
    import time
    threads = threads or os.cpu_count() or 1
    data = np.ones(max(8, nbytes // 8), np.uint64)
    parts = np.array_split(data, threads)
    times = []
    for _ in range(runs + 1):
        workers = [threading.Thread(target=np.bitwise_or.reduce, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        [w.start() for w in workers]
        [w.join() for w in workers]
        times.append(time.perf_counter() - t0)
    return data.nbytes / float(np.median(times[1:]))


ALU_UNROLL = 4    # steps of all chains a loop iteration of the ALU calibration


def alu_kernel(device, iters=None, chains=32):
    """The int32 multiply-add kernel: ``chains`` independent chains of ``iters`` iterations
    of :data:`ALU_UNROLL` steps (default: 64k multiply-adds an invocation) in each of 64 x 64
    invocations. Its ``work``
    is int32 multiply-adds; the SWAR kernels form two of the operator's multiply-adds (4-bit
    weight x 8-bit activation) with each, so their arithmetic limit is twice this rate
    (:data:`SWAR_MACS_PER_MADD`)."""
    local, wgs = 64, 64
    iters = iters or (1 << 16) // (chains * ALU_UNROLL)
    with device.lock:
        mgr = device.manager
        (dst,) = device.tensors([np.zeros(wgs * local, np.int32)], "an ALU calibration")
        push = np.array([iters, 1664525, 1013904223 & 0x7FFFFFFF], np.uint32)
        algo = mgr.algorithm([dst], compile_shader("measure/calib_alu.comp"), (wgs, 1, 1),
                             np.array([local, chains, ALU_UNROLL], np.uint32), push)
    return Calibration(device, algo, push, wgs * local * iters * chains * ALU_UNROLL, (dst,))


def fastest_alu(device, runs=5, chains=(8, 16, 32)):
    """``(kernel, Timing)``: the fastest of the multiply-add kernels with each count of
    ``chains`` (enough chains hide the multiply's latency, too many spill registers; where
    that lies is the device's)."""
    best = None
    for c in chains:
        cal = alu_kernel(device, chains=c)
        cal.time(2)
        timing = cal.time(runs)
        if best is None or cal.work / timing.median > best[0].work / best[1].median:
            best = (cal, timing)
    return best
