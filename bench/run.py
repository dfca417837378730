#!/usr/bin/env python3
"""GEMM versus GEMV on a device, from a checkout: same as `python -m vkqlinear bench`.

    python bench/run.py --quick          # the default shape set, about 5 minutes on lavapipe
    python bench/run.py --shapes llama-7b --group-sizes 32,128
    python bench/run.py --tune           # store the crossover as the device's auto threshold
"""
import sys

from vkqlinear.measure.bench import main

if __name__ == "__main__":
    sys.exit(main())
