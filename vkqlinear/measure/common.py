"""What the benchmark, the tuner and the model benchmark share: the token and shape lists,
their command-line parsers, the record of where a figure came from (host, date, commit),
host-side timing, the PyTorch baselines and the plotting backend.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

__all__ = ["TOKENS", "SHAPE_SETS", "QUICK_SHAPES", "OUTPUTS", "int_list", "output_list",
           "shape_list", "host_record", "git_commit", "provenance", "stats", "time_host",
           "torch_linear", "pyplot"]

# token counts a sweep visits by default: decode (1) to a prefill chunk (512)
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
SHAPE_SETS = {
    "quick": [(4096, 4096), (1536, 384)],
    "llama-7b": [(4096, 4096), (4096, 11008), (11008, 4096)],
    "minilm": [(384, 384), (384, 1536), (1536, 384)],
}
QUICK_SHAPES = SHAPE_SETS["quick"]
OUTPUTS = ("float", "int8")   # output kinds a point is tuned for


def int_list(spec):
    """Command-line type: ``"1,2,4"`` -> ``[1, 2, 4]``, positive integers."""
    try:
        out = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, got {spec!r}")
    return out


def output_list(spec):
    """Command-line type: ``"float,int8"`` -> ``["float", "int8"]``."""
    out = [v.strip() for v in spec.split(",") if v.strip()]
    if not out or set(out) - set(OUTPUTS):
        raise argparse.ArgumentTypeError(f"expected float, int8 or float,int8, got {spec!r}")
    return out


def shape_list(spec, sets=None):
    """Command-line type: ``"4096x4096,1536x384"`` -> ``[(4096, 4096), (1536, 384)]``;
    names in ``sets`` (a dict such as :data:`SHAPE_SETS`) stand for their lists."""
    out = []
    for part in spec.split(","):
        part = part.strip().lower()
        if sets and part in sets:
            out += sets[part]
            continue
        try:
            k, n = (int(v) for v in part.split("x"))
        except ValueError:
            k = n = 0
        if k < 1 or n < 1:
            names = f" or one of {', '.join(sets)}" if sets else ""
            raise argparse.ArgumentTypeError(
                f"expected KxN shapes separated by commas (e.g. 4096x4096){names}, "
                f"got {part!r}")
        out.append((k, n))
    return out


# the host's vector extensions a run records: lavapipe's speed follows them (AVX-512
# hosts ran its kernels about twice as fast as AVX2 ones)
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
              "avx_vnni", "neon", "asimd", "asimddp", "sve")


def host_record(cpuinfo="/proc/cpuinfo"):
    """The host a run's figures came from, for its JSON: machine, CPU model (with its x86
    family and model numbers) and vector extensions, read from ``cpuinfo`` where the file
    exists (its first CPU), CPUs, Python and numpy."""
    info = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    model = info.get("model name") or info.get("cpu model") or platform.processor() or None
    if model and "cpu family" in info and "model" in info:
        model = f"{model} (family {info['cpu family']}, model {info['model']})"
    flags = set((info.get("flags") or info.get("features") or "").split())
    return {"machine": platform.machine(), "cpu": model,
            "simd": [f for f in SIMD_FLAGS if f in flags], "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__}


def git_commit():
    """The checkout's short commit, ``""`` outside a git checkout."""
    try:
        here = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance():
    """Where a run's figures came from, for the top of its JSON: ``host``
    (:func:`host_record`), ``date`` (UTC), ``commit`` and ``vkqlinear`` version."""
    from .. import __version__
    return {"host": host_record(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(), "vkqlinear": __version__}


def stats(xs):
    """``{"median", "min"}`` of a list of seconds."""
    return {"median": float(np.median(xs)), "min": float(min(xs))}


def time_host(fn, runs):
    """:func:`stats` of ``runs`` wall-clock runs of ``fn()``, after one untimed."""
    fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return stats(ts)


def torch_linear(k, n, weight=None, dynamic_int8=False):
    """A PyTorch CPU ``Linear`` (no bias) of ``k`` inputs and ``n`` outputs holding
    ``weight`` (float32 ``[n, k]``; default random, standard deviation ``1/sqrt(k)``), as
    float32 or quantized by ``torch.ao.quantization.quantize_dynamic`` (int8 weights and
    activations): the CPU baselines. ``None`` without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    import warnings
    lin = torch.nn.Linear(k, n, bias=False)
    with torch.no_grad():
        if weight is None:
            lin.weight.normal_(0, 1 / np.sqrt(k))
        else:
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight, np.float32)))
    if not dynamic_int8:
        return lin
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # quantize_dynamic's deprecation notice
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin),
                                                      {torch.nn.Linear}, torch.qint8)


def pyplot():
    """matplotlib's pyplot on the file-only backend, ``None`` without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
