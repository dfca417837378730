"""A decoder's Linear layers, all resident on the device: ``python -m vkqlinear bench
--model llama-3.2-1b`` (or ``--model tiny``, the same architecture small enough for CI).

Every Linear of a decoder with the published shapes of the model (the attention's q, k, v
and o projections, the MLP's gate, up and down projections in every layer, and the untied
output projection), with random weights quantized at g = 32 (no checkpoint is read: the
shapes are real, the weights are not), as :class:`~vkqlinear.QLinear` layers (float in,
activations quantized on the device, float out) on one device:

* **decode**: one token through every layer in order (T = 1), repeated; tokens per second
  for the linear part, end to end (each layer's recorded call replayed from Python, numpy
  in and out, as a ``QLinear`` call runs it) and as the sum of the kernels' device time;
  the bytes the kernels read per token over the device's calibrated read bandwidth (the
  roofline of a decode step); the host's share. The kernels' time comes from passes of
  calls recorded with device timestamps, which are not free (on lavapipe each one flushes
  the queue: tens of microseconds), so those passes are timed apart from the end-to-end
  ones, in turn with them, and the host's share compares like with like: a timed pass's
  wall time over its kernels' time;
* **prefill**: T = 128 through the same layers;
* device memory (``Device.memory_used``) and the process's peak host memory, with the
  same model's float16 and int8 sizes for comparison;
* the same layers with PyTorch on the CPU, float32 and dynamic int8, in the same run;
* with ``--big-layer``, one layer larger than a binding (Llama 3's 4096 x 128256 output
  projection: 250 MiB of packed weights), timed at T = 1 (split along N).
"""

from __future__ import annotations

import gc
import resource
import time
from dataclasses import dataclass

import numpy as np

from ..device_linear import DeviceLinear
from ..kernels import OFFSETS_INTEGER
from ..layout import call_bytes, group_data_bytes
from ..qlinear import QLinear
from ..weights import QuantizedWeights
from .calibrate import fastest_read
from .common import torch_linear

__all__ = ["Decoder", "MODELS", "linear_shapes", "run_model"]


@dataclass(frozen=True)
class Decoder:
    """The shapes of a Llama-style decoder (grouped-query attention, gated MLP)."""
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


MODELS = {
    # Llama 3.2 1B (meta-llama/Llama-3.2-1B config.json); the output projection untied
    "llama-3.2-1b": Decoder(hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8,
                            head_dim=64, vocab=128256),
    # the same architecture, small enough for a CI-sized run
    "tiny": Decoder(hidden=256, intermediate=1024, layers=2, heads=8, kv_heads=2, head_dim=32,
                    vocab=4096),
}
GROUP_SIZE = 32
BIG_LAYER = (4096, 128256)      # K x N: Llama 3 8B's output projection


def linear_shapes(model):
    """``[(name, K, N)]``: every Linear of ``model`` in the order a token meets them."""
    m = model
    q, kv = m.heads * m.head_dim, m.kv_heads * m.head_dim
    out = []
    for i in range(m.layers):
        p = f"layers.{i}."
        out += [(p + "q_proj", m.hidden, q), (p + "k_proj", m.hidden, kv),
                (p + "v_proj", m.hidden, kv), (p + "o_proj", q, m.hidden),
                (p + "gate_proj", m.hidden, m.intermediate),
                (p + "up_proj", m.hidden, m.intermediate),
                (p + "down_proj", m.intermediate, m.hidden)]
    return out + [("lm_head", m.hidden, m.vocab)]


def random_weights(rng, k, n, group_size=GROUP_SIZE):
    """Random 4-bit weights of an ``N x K`` layer: the nibbles, scales around the
    ``1/sqrt(K)`` of an initialised layer, asymmetric zero points."""
    g = k // group_size
    packed = rng.integers(0, 256, (n, k // 2), dtype=np.uint8)
    scales = (rng.uniform(0.5, 1.5, (n, g)) / (4 * np.sqrt(k))).astype(np.float32)
    zeros = rng.integers(-2, 3, (n, g)).astype(np.int32)
    return QuantizedWeights(packed, group_size, scales, -scales.astype(np.float64) * zeros,
                            zeros)


def _time_pass(layers, inputs, t, timed=False):
    """One pass of ``t`` tokens through every layer: ``(wall seconds, kernel seconds or
    None)``. Each layer runs its recorded call (float in, quantized on the device, float
    out: the path of a ``QLinear`` call after its argument checks); ``timed`` records it
    with device timestamps, which give the kernels' time (the activation quantizer's and
    the linear kernel's) and cost time of their own."""
    calls = []
    t0 = time.perf_counter()
    for layer, x in zip(layers, inputs):
        calls.append(DeviceLinear.of(layer.weights, layer.device).run_float(
            "auto", t, x, timed=timed)[1])
    wall = time.perf_counter() - t0
    if not timed:
        return wall, None
    return wall, sum(call.kernel_seconds(quantizer=True) for call in calls)


def _alternate(layers, inputs, t, steps):
    """Passes without and with device timestamps in turn, after one of each that records
    the calls: the medians ``(wall s, timestamped wall s, kernel s)``."""
    for timed in (False, True):
        _time_pass(layers, inputs, t, timed)
    walls, timed_walls, kernels = [], [], []
    for _ in range(steps):
        walls.append(_time_pass(layers, inputs, t)[0])
        w, kern = _time_pass(layers, inputs, t, timed=True)
        timed_walls.append(w)
        kernels.append(kern)
    return tuple(float(np.median(v)) for v in (walls, timed_walls, kernels))


def _peak_host_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_baselines(shapes, rng, tokens, log):
    """PyTorch float32 and dynamic int8 Linear layers of the same shapes, one pass of each
    token count: seconds per pass."""
    try:
        import torch
    except ImportError:
        return {}
    out = {"float32": {}, "dynamic_int8": {}}
    for kind in out:
        layers = [torch_linear(k, n, dynamic_int8=kind == "dynamic_int8")
                  for _, k, n in shapes]
        for t in tokens:
            xs = [torch.randn(t, k) for _, k, _ in shapes]
            with torch.no_grad():
                for lin, x in zip(layers, xs):      # warm
                    lin(x)
                t0 = time.perf_counter()
                for lin, x in zip(layers, xs):
                    lin(x)
                out[kind][t] = time.perf_counter() - t0
            log(f"  torch {kind} T={t}: {out[kind][t] * 1e3:.1f} ms a pass")
        del layers
        gc.collect()
    return out


def _phase(label, layers, shapes, t, steps, rng, bw, how, log):
    """One phase (decode or prefill) of ``layers`` at ``t`` tokens: its report entry."""
    inputs = [rng.standard_normal((t, k)).astype(np.float32) for _, k, _ in shapes]
    wall, timed_wall, kern = _alternate(layers, inputs, t, steps)
    nbytes = sum(call_bytes(layer.weights, t) for layer in layers)
    res = {"T": t, "steps": steps, "wall_s": wall, "timed_wall_s": timed_wall,
           "kernel_s": kern, "tokens_per_s": t / wall, "tokens_per_s_kernels": t / kern,
           "host_share": timed_wall / kern,
           "timestamp_cost_s_per_call": (timed_wall - wall) / len(layers),
           "bytes_read": nbytes,
           "read_roofline_fraction": nbytes / bw / kern}
    log(f"  {label} T={t}: {wall * 1e3:.1f} ms a pass end to end ({res['tokens_per_s']:.2f} "
        f"tokens/s); with timestamps {timed_wall * 1e3:.1f} ms "
        f"({res['timestamp_cost_s_per_call'] * 1e6:+.0f} us a call), of it kernels "
        f"{kern * 1e3:.1f} ms ({res['tokens_per_s_kernels']:.2f} tokens/s), host share "
        f"{res['host_share']:.3f}; {nbytes / 2**20:.0f} MiB read, "
        f"{res['read_roofline_fraction']:.2f} of the fastest calibrated read "
        f"({bw / 1e9:.2f} GB/s, {how})")
    return res


def _big_layer(device, rng, log):
    """One layer larger than a binding (:data:`BIG_LAYER`): its report entry."""
    k, n = BIG_LAYER
    qw = random_weights(rng, k, n)
    layer = QLinear(qw, device=device)
    x = rng.standard_normal((1, k)).astype(np.float32)
    y = layer(x)
    ref = layer(x, algorithm="reference")
    err = float(np.abs(y - ref).max() / np.abs(ref).max())
    wall, _, kern = _alternate([layer], [x], 1, 5)
    calls = DeviceLinear.of(qw, device).calls
    b = {"K": k, "N": n, "packed_bytes": qw.w_packed.nbytes,
         "pieces": max(c.pieces for c in calls), "max_binding": device.max_binding,
         "wall_s": wall, "kernel_s": kern, "max_rel_error_vs_reference": err}
    log(f"  one layer past the binding limit: {k} x {n} ({b['packed_bytes'] / 2**20:.0f} "
        f"MiB packed, {b['pieces']} pieces of at most {device.max_binding / 2**20:.0f} "
        f"MiB): {b['wall_s'] * 1e3:.1f} ms end to end, kernel {b['kernel_s'] * 1e3:.1f} "
        f"ms; max |y - reference| / max |reference| = {err:.1e}")
    del layer, qw, calls
    gc.collect()
    return b


def run_model(device, name, decode_steps=5, prefill_tokens=128, prefill_steps=2,
              baselines=True, big_layer=False, log=print, seed=0):
    """The decoder benchmark on ``device`` (see the module doc); returns the report."""
    model = MODELS[name]
    shapes = linear_shapes(model)
    rng = np.random.default_rng(seed)
    params = sum(k * n for _, k, n in shapes)
    report = {"model": name, "shapes": model.__dict__, "linear_layers": len(shapes),
              "parameters": params, "group_size": GROUP_SIZE, "weights": "random",
              "device": device.name, "sizes_bytes": {
                  "float16": 2 * params, "int8_per_channel": params + 4 * sum(
                      n for _, _, n in shapes),
                  "int4_g32_packed": params // 2,
                  "int4_g32_with_group_data": params // 2 + params // GROUP_SIZE
                  * group_data_bytes(GROUP_SIZE, OFFSETS_INTEGER)}}
    log(f"{name}: {len(shapes)} Linear layers, {params / 1e9:.3f} B parameters, random 4-bit "
        f"weights at g={GROUP_SIZE} (the shapes are real, the weights are not); on "
        f"{device.name}")
    t0 = time.perf_counter()
    used0 = device.memory_used()
    layers = []
    for _, k, n in shapes:
        qw = random_weights(rng, k, n)
        DeviceLinear.of(qw, device).upload()
        layers.append(QLinear(qw, device=device))
    report["upload_s"] = time.perf_counter() - t0
    report["device_bytes_resident"] = device.memory_used() - used0
    log(f"  resident: {report['device_bytes_resident'] / 2**20:.0f} MiB on the device "
        f"(budget {device.memory_budget / 2**20:.0f} MiB), uploaded in "
        f"{report['upload_s']:.1f} s")
    bw, how = fastest_read(device, 64 << 20)
    report["read_bandwidth_bytes_per_s"], report["read_how"] = bw, how

    def phase(label, layers, t, steps):
        return _phase(label, layers, shapes, t, steps, rng, bw, how, log)

    report["decode"] = phase("decode", layers, 1, decode_steps)
    report["prefill"] = phase("prefill", layers, prefill_tokens, prefill_steps)
    report["device_bytes_peak"] = device.memory_used() - used0
    del layers
    gc.collect()
    if big_layer:
        report["big_layer"] = _big_layer(device, rng, log)
    report["host_bytes_peak"] = _peak_host_bytes()
    if baselines:
        report["cpu"] = _cpu_baselines(shapes, rng, (1, prefill_tokens), log)
    log(f"  device memory: {report['device_bytes_peak'] / 2**20:.0f} MiB at the peak; the "
        f"process's peak host memory {report['host_bytes_peak'] / 2**20:.0f} MiB; the model "
        f"in float16 {report['sizes_bytes']['float16'] / 2**20:.0f} MiB, int8 "
        f"{report['sizes_bytes']['int8_per_channel'] / 2**20:.0f} MiB, 4-bit g=32 "
        f"{report['sizes_bytes']['int4_g32_with_group_data'] / 2**20:.0f} MiB with its group "
        "data")
    return report
