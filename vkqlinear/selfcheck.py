"""Kernels that check themselves: a known-answer case per kernel variant and device.

The first time a process is about to run a kernel variant on a device, it runs the
variant's kernel once on a small layer whose float32 result is exact (powers-of-two
scales, small integers: every sum the kernel forms is representable) and compares it bit
for bit. A variant that answers wrong is dropped for that device, with one warning naming
the driver and the variant, and the choice falls back to the next variant. The verdict is
kept in the tuning file (:mod:`vkqlinear.tuning`) under the device's key, which names its
driver version, and the kernel generation, so a driver is checked once, not once a process.

This is the net under the driver-quirk table (:mod:`vkqlinear.policy`): a driver fault
the table does not know yet costs a fallback, not wrong numbers.

Environment:

* ``VKQLINEAR_SELF_CHECK=0`` turns the check off (every variant is trusted).
* ``VKQLINEAR_SELF_CHECK_WRONG="tiled/int64,cooperative/subgroup"``: a test hook; the
  named variants' answers are taken as wrong (the kernel still runs; its output is
  altered before the comparison). Verdicts made under it are not written to the file.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

__all__ = ["known_answer", "run_check", "enabled", "forced_wrong", "variant_key",
           "SELF_CHECK_ENV", "WRONG_ENV"]

SELF_CHECK_ENV = "VKQLINEAR_SELF_CHECK"
WRONG_ENV = "VKQLINEAR_SELF_CHECK_WRONG"


def variant_key(algorithm, variant):
    """``"tiled/int64"``: how the tuning file and the environment name a variant."""
    return f"{algorithm}/{variant.name}"


def enabled(environ=os.environ):
    value = environ.get(SELF_CHECK_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{SELF_CHECK_ENV}: expected 0 or 1, got {value!r}")
    return value != "0"


def forced_wrong(environ=os.environ):
    """The variant keys the test hook names (``$VKQLINEAR_SELF_CHECK_WRONG``)."""
    return {p.strip() for p in environ.get(WRONG_ENV, "").split(",") if p.strip()}


def known_answer(t, k, n, group_size, seed=0):
    """Inputs of a layer and its exact float32 output: ``(x_q, x_scale, x_zero_point,
    w_packed, w_scales, w_zeros, bias, y)``. Every product and partial sum is a dyadic
    rational of at most 24 significant bits, so any order of float32 additions gives
    ``y`` exactly."""
    from .quant import pack_int4
    rng = np.random.default_rng(seed)
    g = k // group_size
    x_q = rng.integers(-6, 6, (t, k)).astype(np.int8)
    x_zp = rng.integers(-2, 3, t).astype(np.int32)
    x_scale = np.full(t, 2.0 ** -4, np.float32)
    q = rng.integers(-8, 8, (n, k)).astype(np.int8)
    w_zeros = rng.integers(-3, 4, (n, g)).astype(np.int32)
    w_scales = (2.0 ** -rng.integers(3, 6, (n, g))).astype(np.float32)
    bias = (rng.integers(-64, 64, n) * 2.0 ** -6).astype(np.float32)
    xd = (x_q.astype(np.int64) - x_zp[:, None]).reshape(t, g, group_size)
    wd = (q.astype(np.int64).reshape(n, g, group_size) - w_zeros[:, :, None])
    acc = np.einsum("tgk,ngk->tng", xd, wd)                   # exact integers
    y = (acc * w_scales.astype(np.float64)[None]).sum(axis=2) * x_scale[:, None] + bias
    assert np.abs(y).max() * 2.0 ** 10 < 2 ** 24, "the known answer would not be exact"
    return (x_q, x_scale, x_zp, pack_int4(q), w_scales, w_zeros, bias,
            y.astype(np.float32))


def run_check(device, kernel):
    """Run ``kernel`` (a :class:`~vkqlinear.kernels.Kernel`; its float-output form) once
    on the known-answer layer for its group size and lanes on ``device``; returns ``(ok,
    detail, seconds)``. Its pipeline stays compiled on the device for the real call that
    follows (:meth:`vkqlinear.Device.algorithm`)."""
    from .device_linear import DeviceLinear
    from .weights import prepack
    start = time.perf_counter()
    # the verdict is the variant's: its float-output kernel is checked (the int8 one only
    # adds the requantizing store, which the conformance suite covers)
    kernel = dataclasses.replace(kernel, out_int8=False)
    t, k = kernel.tm, 2 * kernel.group_size
    n = 8 * kernel.lanes - 3                    # one block row, the last block partial
    x_q, x_scales, x_zps, w_packed, ws, wz, bias, want = known_answer(t, k, n, kernel.group_size)
    weights = prepack(w_packed, kernel.group_size, ws, wz)
    # float32 group data, as most layers have (its power-of-two scales are float16 values)
    weights.half_scales = weights.offset_bases = None
    try:
        got, _ = DeviceLinear.of(weights, device).run(kernel, x_q, x_scales, x_zps, bias)
    except (ValueError, TypeError, MemoryError):
        raise       # a limit or the memory budget, not the variant: no verdict, the error
    except Exception as e:          # a variant that cannot even run is not usable either
        return False, f"{type(e).__name__}: {e}", time.perf_counter() - start
    if variant_key(kernel.algorithm, kernel.variant) in forced_wrong():
        got = got + np.float32(1)
    seconds = time.perf_counter() - start
    if got.shape != want.shape:
        return False, f"output of shape {got.shape}, want {want.shape}", seconds
    bad = np.argwhere(got != want)      # NaN is wrong too
    if not len(bad):
        return True, "exact", seconds
    i, j = bad[0]
    return False, (f"{len(bad)} of {want.size} outputs wrong; at [{i}, {j}] got "
                   f"{float(got[i, j])!r}, want {float(want[i, j])!r}"), seconds
