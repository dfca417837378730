"""Device policy: the choices that depend on which driver or kind of device runs the
kernels, where no measurement of the device (the tuning file) says otherwise.

* :data:`AUTO_THRESHOLDS`: ``auto``'s crossover (the cooperative kernel for ``T <=``
  it) by driver, else :data:`~vkqlinear.kernels.DEFAULT_AUTO_THRESHOLD`;
* :func:`builtin_wait`: how a call waits, by device type;
* :func:`parallel_units`: how many workgroups a device runs at once, where that is known
  (a CPU device's cores; the tuner keeps grids that leave none idle);
* :func:`max_tile_outputs` and :func:`max_workgroup`: how large the untuned kernels'
  tiles and workgroups are, by kind of device (a GPU's registers);
* :func:`gemm_algorithm`: which GEMM ``auto`` runs above its threshold, by kind of device;
* :func:`register_limit`: where a compiler gives a shader fewer registers than the GPU has;
* :data:`QUIRKS`: what vkqlinear avoids on a driver known to get it wrong (below).

The default order of the kernel variants follows the device's features, not its driver:
:meth:`vkqlinear.kernels.DeviceCaps.variants`.

Each :class:`Quirk` names a driver, the versions it applies to, the optional feature
(:data:`vkqlinear.device.FEATURES`) vkqlinear then does not use there, and why. A device
whose driver matches treats the feature as not enabled, so no kernel variant that needs it
is offered (``python -m vkqlinear info`` says which and why). The kernels' self-check
(:mod:`vkqlinear.selfcheck`) is the net under this table: it catches a wrong variant on a
driver the table does not know yet.

``$VKQLINEAR_DRIVER_QUIRKS=ignore`` turns the table off (to reproduce a quirk, or to see
whether a new driver still has it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = ["Quirk", "QUIRKS", "mesa_version", "quirks", "avoided", "QUIRKS_ENV",
           "AUTO_THRESHOLDS", "builtin_wait", "parallel_units", "max_tile_outputs",
           "max_workgroup", "gemm_algorithm", "register_limit", "REGISTER_LIMITS"]

QUIRKS_ENV = "VKQLINEAR_DRIVER_QUIRKS"
# Measured with `python -m vkqlinear bench --quick` where the file has no entry, by driver:
# on lavapipe the tiled kernel was fastest from T = 1 on every quick shape.
AUTO_THRESHOLDS = {"llvmpipe": 0}


def builtin_wait(info):
    """How a call waits before the tuner has measured: ``"yield"`` on a CPU device (its
    worker threads share the host's cores with the caller), ``"block"`` on any other."""
    return "yield" if info.type == "cpu" else "block"


def parallel_units(info):
    """Workgroups a device runs at once, where that is known: on a CPU device, one a host
    core this process may use (lavapipe's ``LP_NUM_THREADS`` where set); ``None`` on a GPU,
    whose compute units Vulkan does not count."""
    if info.type != "cpu":
        return None
    try:
        return max(1, int(os.environ["LP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:               # not on Linux
        return os.cpu_count() or 1


# Outputs (tokens x 8 channels x channel blocks) an invocation of an untuned kernel
# accumulates, and invocations a workgroup of the untuned subgroup GEMV has, on a GPU:
# the largest that spill no register on any AMD family shader-stats covers and keep 8 or
# more subgroups per SIMD on RDNA2 to 4 (docs/design.md, "Registers on GPUs").
GPU_TILE_OUTPUTS = 16
WIDE_ONLY_TILE_OUTPUTS = 8   # where every subgroup is 64 wide (GCN): 4 per SIMD
GPU_WORKGROUP = 256
CPU_TILE_OUTPUTS = 64        # lavapipe: no register file to fit, loads cost the most


def max_tile_outputs(caps):
    """Outputs an invocation of an untuned kernel accumulates on a device described by
    ``caps`` (:class:`~vkqlinear.kernels.DeviceCaps`): many on a CPU device, few on a GPU,
    fewest where subgroups are only ever 64 wide (GCN's register file per lane is the
    smallest)."""
    if caps.device_type == "cpu":
        return CPU_TILE_OUTPUTS
    if caps.subgroup_size >= 64 and caps.min_subgroup_size >= 64:
        return WIDE_ONLY_TILE_OUTPUTS
    return GPU_TILE_OUTPUTS


def gemm_algorithm(caps, variant=None):
    """The GEMM ``auto`` runs above its threshold where nothing is tuned: the SHARED GEMM
    on a GPU (with ``variant`` forced, only if it is one the SHARED GEMM has: OpSDot where
    the driver accelerates it, else SWAR), else the TILED GEMM (CPU devices: lavapipe pays
    for every barrier, and the tuner measures which wins there; a device where every
    SHARED variant failed the self-check)."""
    if caps.device_type == "cpu":
        return "tiled"
    shared = caps.variants("shared")
    if not shared or (variant is not None and variant not in shared):
        return "tiled"
    return "shared"


def max_workgroup(caps):
    """Invocations an untuned workgroup may have: the device's limit on a CPU device, at
    most :data:`GPU_WORKGROUP` on a GPU (a workgroup's subgroups share one compute unit's
    registers)."""
    limit = caps.max_invocations
    return limit if caps.device_type == "cpu" else min(limit, GPU_WORKGROUP)


# Registers a shader may have, by driver and GPU, where a compiler allows fewer than the
# hardware (shader-stats shows the limit): (driver, Mesa versions before, device name
# pattern, VGPRs). The untuned SHARED GEMM's tile fits it.
REGISTER_LIMITS = (
    # Mesa 22.3's first RDNA3 backend allocates at most 132 VGPRs to a compute shader and
    # spills past that (Mesa 25 allocates up to 256 on the same families)
    ("radv", (23, 0), re.compile(r"RADV (GFX11|NAVI3)"), 128),
)


def register_limit(info):
    """VGPRs a shader may have without spilling on ``info``'s device where its compiler
    is known to allow fewer than the hardware (:data:`REGISTER_LIMITS`), else ``None``."""
    version = mesa_version(info)
    for driver, before, name, limit in REGISTER_LIMITS:
        if info.driver_name == driver and version is not None and version < before and \
                name.search(info.name or ""):
            return limit
    return None


@dataclass(frozen=True)
class Quirk:
    """A driver fault vkqlinear works around: on ``driver`` (the Vulkan driver name, as
    ``DeviceInfo.driver_name``) from Mesa version ``since`` (inclusive) up to ``before``
    (exclusive; ``None``: no fixed version known), ``feature`` is not used."""
    driver: str
    since: tuple
    before: tuple | None
    feature: str
    why: str

    def applies(self, info):
        if info.driver_name != self.driver:
            return False
        version = mesa_version(info)
        if version is None:
            return False
        return version >= self.since and (self.before is None or version < self.before)


QUIRKS = (
    # Verified right on 22.3.6 and wrong on 25.0.7; the versions between were not tested,
    # so none after the last one known right is trusted. Reproducer and analysis:
    # tests/test_policy.py, docs/design.md ("Driver quirks").
    Quirk("llvmpipe", (22, 4), None, "texelBufferLoads",
          "lavapipe after Mesa 22.3 returns wrong texels (or crashes) when a shader reads "
          "uniform texel buffers with pipelines from its shader cache filled at another "
          "LP_NATIVE_VECTOR_WIDTH"),
)

_MESA = re.compile(r"Mesa (\d+)\.(\d+)(?:\.(\d+))?")


def mesa_version(info):
    """``(major, minor, patch)`` of a Mesa driver, from its driver info string
    (``"Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)"``); ``None`` for another driver."""
    m = _MESA.search(info.driver_info or "")
    if m is None:
        return None
    return tuple(int(g or 0) for g in m.groups())


def quirks(info, environ=os.environ):
    """The :class:`Quirk` s that apply to ``info``'s driver (none where
    ``$VKQLINEAR_DRIVER_QUIRKS`` is ``ignore``)."""
    setting = environ.get(QUIRKS_ENV, "").strip().lower()
    if setting not in ("", "ignore"):
        raise ValueError(f"{QUIRKS_ENV}: expected 'ignore' or nothing, got "
                         f"{environ.get(QUIRKS_ENV)!r}")
    if setting == "ignore":
        return []
    return [q for q in QUIRKS if q.applies(info)]


def avoided(info, feature, environ=os.environ):
    """The :class:`Quirk` for which ``feature`` is not used on ``info``'s driver, or
    ``None``."""
    return next((q for q in quirks(info, environ) if q.feature == feature), None)
