#!/usr/bin/env python3
"""Fill a device with layers until its memory runs out, then keep using the earlier ones.

    python bench/fill_device.py [--shape 2048x8192] [--device N]

Uploads random 4-bit layers of one shape (and calls each once) until vkqlinear raises
DeviceMemoryError, prints the error and Device.memory_used(), then calls every resident
layer again and checks it against the CPU reference. Exit status 1 if any is wrong.
"""

import argparse
import sys
import time

import numpy as np

import vkqlinear as vq
from vkqlinear.measure.model_bench import random_weights


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="2048x8192", help="KxN of every layer")
    ap.add_argument("--device", type=int, default=None)
    a = ap.parse_args(argv)
    k, n = (int(v) for v in a.shape.lower().split("x"))
    rng = np.random.default_rng(0)
    dev = vq.Device(a.device)
    x = rng.standard_normal((1, k)).astype(np.float32)
    layers = []
    print(f"{dev.name}: budget {dev.memory_budget / 2**20:.0f} MiB; layers of {k} x {n}")
    t0 = time.perf_counter()
    try:
        while True:
            layer = vq.QLinear(random_weights(rng, k, n), device=dev)
            layer(x)
            layers.append(layer)
    except vq.DeviceMemoryError as e:
        print(f"after {len(layers)} layers ({time.perf_counter() - t0:.1f} s): "
              f"DeviceMemoryError: {e}")
    print(f"memory used: {dev.memory_used() / 2**20:.0f} MiB")
    wrong = 0
    for layer in layers:
        y, ref = layer(x), layer(x, algorithm="reference")
        wrong += not np.allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    print(f"all {len(layers)} resident layers called again: {len(layers) - wrong} right, "
          f"{wrong} wrong")
    return 1 if wrong or not layers else 0


if __name__ == "__main__":
    sys.exit(main())
