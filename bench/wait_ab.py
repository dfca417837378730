"""A/B of how calls wait for the device (``vkqlinear.Device.wait``): "block" against "yield",
in one process, in interleaved rounds (the order alternating), so that the host's slow
spells hit both alike. Each round and mode: the timed call twice (kernel time from device
timestamps, the second one kept), then a plain call end to end.

    python bench/wait_ab.py --shape 4096x4096 --tokens 1 --rounds 300

Prints, per mode, the medians of kernel time and end-to-end time, the median over rounds
of end-to-end / kernel, and the median over rounds of the kernel time over "block"'s.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import vkqlinear as vq
from vkqlinear import conformance
from vkqlinear.device import Device
from vkqlinear.kernels import KERNEL_ALGORITHMS
from vkqlinear.measure.bench import warm_up
from vkqlinear.measure.calibrate import read_kernel
from vkqlinear.quant import quantize_per_token, quantize_weights
from vkqlinear.weights import prepack

MODES = ("block", "yield")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4096x4096", help="KxN (default 4096x4096)")
    ap.add_argument("--tokens", type=int, default=1, help="T (default 1)")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--algorithm", default="tiled", choices=KERNEL_ALGORITHMS + ("auto",))
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--device", type=int, default=None)
    a = ap.parse_args(argv)
    with Device(a.device) as dev:
        return run(a, dev)


def run(a, dev):
    k, n = (int(v) for v in a.shape.lower().split("x"))
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    w_packed, w_scales, w_zeros = quantize_weights(w, a.group_size)
    qw = prepack(w_packed, a.group_size, w_scales, w_zeros, device=dev)
    x_q, xs, xz = quantize_per_token(rng.standard_normal((a.tokens, k)).astype(np.float32))
    dl = vq.DeviceLinear.of(qw, dev)
    spec = dict(x_q=x_q, x_scale=xs, x_zero_point=xz, w_packed=w_packed, group_size=a.group_size,
                w_scales=w_scales, w_zeros=w_zeros, w_offsets=None, bias=None)
    warm_up(read_kernel(dev, k * n // 2))
    runs = {m: ([], []) for m in MODES}
    for i in range(a.rounds):
        for mode in (MODES if i % 2 else MODES[::-1]):
            dev.wait = mode
            if dev.wait != mode:
                sys.exit(f"this kp cannot wait by {mode!r} (run tools/setup.sh)")
            dl.run(a.algorithm, x_q, xs, xz, timed=True)
            _, call = dl.run(a.algorithm, x_q, xs, xz, timed=True)
            t0 = time.perf_counter()
            y = vq.linear_qta8a_qga4w(x_q, xs, xz, qw, algorithm=a.algorithm, device=dev)
            e2e = time.perf_counter() - t0
            runs[mode][0].append(call.kernel_seconds())
            runs[mode][1].append(e2e)
            if i < 2:
                ok, msg = conformance.check(y, spec)
                if not ok:
                    sys.exit(f"wrong result waiting by {mode!r}: {msg}")
    base = np.asarray(runs["block"][0])
    print(f"{dev.name}: K={k} N={n} g={a.group_size} T={a.tokens} {a.algorithm}, "
          f"{a.rounds} rounds")
    for mode in MODES:
        kern, e2e = (np.asarray(v) for v in runs[mode])
        print(f"{mode:5s}: kernel {np.median(kern) * 1e6:9.1f} us, end-to-end "
              f"{np.median(e2e) * 1e6:9.1f} us, end-to-end / kernel "
              f"{np.median(e2e / kern):.3f}, kernel / block's {np.median(kern / base):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
