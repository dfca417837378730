"""Kernel choice as data: a pure function from (shape, device capabilities) to a frozen
:class:`Kernel` record (shader, defines, specialization constants, dispatch grid).

No GPU is needed to call anything here; the unit tests check the choices directly.

Variants (code shapes, ``#define`` in the shaders; see :data:`VARIANT_PARTS`): the
COOPERATIVE GEMV reduces through subgroup arithmetic (``subgroup``) or shared memory; both
kernels multiply with the SWAR int32 path, reading 32-bit or (``int64``, where
``shaderInt64`` is enabled) 64-bit words, or with OpSDot (``dot``, where the device
*enables* ``shaderIntegerDotProduct``), or read int8 activations and write int8 outputs
through 8-bit storage (``storage8``, where ``storageBuffer8BitAccess`` is enabled). The
variant ``portable`` uses none and runs on every Vulkan 1.1 device. :meth:`DeviceCaps.variants`
lists what a device can run, best first; ``$VKQLINEAR_VARIANT`` forces one (e.g.
``subgroup+dot``); the conformance suite uses it to prove every variant the device runs.

The ``"auto"`` rule: the COOPERATIVE GEMV for ``T <= threshold``, the TILED GEMM above.
The threshold is per device: :func:`auto_threshold` reads it from the tuning file
(``$VKQLINEAR_TUNING_FILE``, else ``~/.cache/vkqlinear/tuning.json``) which
``python -m vkqlinear bench --tune`` writes, keyed by device name and driver; without an
entry it uses the built-in value for the driver (:data:`BUILTIN_THRESHOLDS`), else
:data:`DEFAULT_AUTO_THRESHOLD`.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["Kernel", "DeviceCaps", "choose_kernel", "kernel_for_device", "lanes_for",
           "auto_threshold",
           "tuning_file", "store_threshold", "DEFAULT_AUTO_THRESHOLD", "token_tile",
           "variant_defines", "variant_layout", "VARIANT_PARTS"]

DEFAULT_AUTO_THRESHOLD = 4
# Thresholds measured with `python -m vkqlinear bench --quick` where no tuning file has an
# entry, by driver name. lavapipe (2 cores, 2026-11-22): the tiled kernel was fastest from
# T = 1 on every quick shape, so auto never takes the cooperative kernel there.
BUILTIN_THRESHOLDS = {"llvmpipe": 0}
GEMM_TM = 8              # tokens per invocation of the TILED GEMM (T >= 8); on lavapipe
                         # 8 was 8% to 20% faster than 4 at T = 64 ... 512 (16: slower)
GEMM_TM_TEXEL = 4        # the same with texel loads, whose loads are cheap: 4 was 5% (T =
                         # 512) to 13% (T = 64) faster than 8 on lavapipe, 2 slower
COOP_WORKERS = 8         # workers splitting K in the COOPERATIVE GEMV (power of two)
COOP_MAX_TM = 4


# Code-shape variants: name -> (#define, the device feature it needs). A kernel's variant
# is "portable" (none of them) or its parts joined by "+", e.g. "subgroup+dot".
VARIANT_PARTS = {
    "subgroup": ("SUBGROUP_REDUCE", "subgroupArithmetic"),        # cooperative only
    "dot": ("DOT_PRODUCT", "shaderIntegerDotProduct"),
    "storage8": ("STORAGE8", "storageBuffer8BitAccess"),
    "int64": ("INT64_LOADS", "shaderInt64"),
    "texel": ("TEXEL_LOADS", "texelBufferLoads"),                # with int64 only
}


@dataclass(frozen=True)
class DeviceCaps:
    """The device facts the choice depends on (:meth:`from_device`).

    ``subgroup_arithmetic``, ``integer_dot`` and ``storage8`` mean *usable*: supported and,
    for the last two, enabled on the device the library opened. ``dot_accelerated`` is the
    driver's ``integerDotProduct4x8BitPackedSignedAccelerated``.
    """
    subgroup_size: int = 8
    max_invocations: int = 128
    max_count: tuple = (65535, 65535, 65535)
    max_shared_memory: int = 16384
    subgroup_arithmetic: bool = False
    integer_dot: bool = False
    dot_accelerated: bool = False
    storage8: bool = False
    int64: bool = False
    texel: bool = False

    @classmethod
    def from_info(cls, info, enabled=lambda feature: False):
        """From a :class:`~vkqlinear.DeviceInfo`; ``enabled(feature)`` says whether an
        optional feature is enabled (default: none, as with stock Kompute)."""
        lim = info.limits
        return cls(subgroup_size=int(info.subgroup.get("size") or 8),
                   max_invocations=int(lim["max_workgroup_invocations"]),
                   max_count=tuple(lim["max_workgroup_count"]),
                   max_shared_memory=int(lim["max_shared_memory"]),
                   subgroup_arithmetic=info.supports("subgroupArithmetic"),
                   integer_dot=bool(enabled("shaderIntegerDotProduct")),
                   dot_accelerated=bool(info.properties.get("integer_dot_4x8_packed_accelerated")),
                   storage8=bool(enabled("storageBuffer8BitAccess")),
                   int64=bool(enabled("shaderInt64")),
                   texel=bool(enabled("texelBufferLoads")))

    @classmethod
    def from_device(cls, device):
        """From an open :class:`~vkqlinear.Device` (features as enabled on it)."""
        return cls.from_info(device.info, device.enabled)

    def variants(self, algorithm):
        """The variants of ``algorithm`` this device can run, best first.

        Order: the subgroup reduction before shared memory (cooperative, where subgroup
        arithmetic works at a usable subgroup size); then the arithmetic: OpSDot first
        where the driver says it is accelerated; else SWAR with 64-bit loads (``int64``:
        half the load instructions, 1.3x to 1.8x faster on lavapipe) where 64-bit integers
        are enabled, preceded by the same with the loads from texel buffers
        (``texel+int64``: 1.5x to 1.9x faster again on lavapipe, whose texel fetches are
        vector code) where those are usable; then SWAR with 32-bit loads; unaccelerated
        OpSDot after those; the 8-bit-storage variant last (it reads the same bytes; slower
        on lavapipe).
        """
        reductions = [""]
        if algorithm == "cooperative" and self.subgroup_arithmetic and \
                self.subgroup_size in (4, 8, 16, 32, 64) and \
                self.subgroup_size <= self.max_invocations:
            reductions = ["subgroup", ""]
        maths = [""]
        if self.int64:
            maths = ["texel+int64", "int64", ""] if self.texel else ["int64", ""]
        if self.integer_dot:
            maths = ["dot"] + maths if self.dot_accelerated else maths + ["dot"]
        if self.storage8:
            maths.append("storage8")
        out = []
        for r in reductions:
            for m in maths:
                out.append("+".join(x for x in (r, m) if x) or "portable")
        return tuple(out)


def variant_layout(variant):
    """The prepacked weight layout (vkqlinear/weights.py) a variant reads: ``"dot"``,
    ``"swar64"`` or ``"swar"``."""
    parts = variant.split("+")
    return "dot" if "dot" in parts else "swar64" if "int64" in parts else "swar"


def variant_defines(variant):
    """The ``#define`` pairs of ``variant`` ("portable" or parts joined by "+")."""
    if variant == "portable":
        return ()
    return tuple((VARIANT_PARTS[part][0], 1) for part in variant.split("+"))


@dataclass(frozen=True)
class Kernel:
    """One specialized kernel and how to dispatch it.

    ``spec_constants`` are, in ``constant_id`` order: LOCAL_X, LOCAL_Y, GROUP_SIZE,
    LANES, TM, OUT_INT8 (see ``shaders/common.glsl``).
    """
    algorithm: str          # "tiled" | "cooperative"
    shader: str             # file in shaders/
    defines: tuple          # ((name, value), ...): code-shape variants
    local_size: tuple       # (x, y)
    tm: int                 # tokens per invocation
    lanes: int              # weight layout interleave
    group_size: int
    out_int8: bool
    variant: str = "portable"

    def __post_init__(self):
        # Kernels key the recorded-call caches: hash the fields once, not on every lookup
        object.__setattr__(self, "_hash",
                           hash(tuple(getattr(self, f.name) for f in fields(self))))

    def __hash__(self):
        return self._hash

    @property
    def subgroup_reduce(self):
        return "subgroup" in self.variant.split("+")

    @property
    def texel_loads(self):
        """Whether it reads X, W and the group data from uniform texel buffers."""
        return "texel" in self.variant.split("+")

    @functools.cached_property
    def layout(self):
        """The prepacked weight layout it reads (see :func:`variant_layout`)."""
        return variant_layout(self.variant)

    @functools.cached_property
    def order(self):
        """The order of the weight units it reads (vkqlinear/weights.py): ``"groups"``
        for the subgroup COOPERATIVE kernel (``GROUP_ORDER``), else ``"blocks"``."""
        return "groups" if ("GROUP_ORDER", 1) in self.defines else "blocks"

    @property
    def blocks_per_workgroup(self):
        """Channel blocks (of 8) per workgroup: the local axis that is not workers."""
        if self.algorithm == "cooperative" and self.subgroup_reduce:
            return self.local_size[1]
        return self.local_size[0]

    @property
    def spec_constants(self):
        return (self.local_size[0], self.local_size[1], self.group_size, self.lanes,
                self.tm, int(self.out_int8))

    @property
    def tokens_per_row(self):
        """Tokens covered by one workgroup row (grid y = 1)."""
        return self.tm * (self.local_size[1] if self.algorithm == "tiled" else 1)

    def grid(self, t, np_, max_count=(65535, 65535, 65535)):
        """``(gx, gy, n_dispatches)``: one grid of ``gx x gy`` workgroups, dispatched
        ``n_dispatches`` times with ``token_base`` advancing by ``gy * tokens_per_row``
        when the token rows exceed the device's ``maxComputeWorkGroupCount[1]``."""
        gx = (np_ // 8) // self.blocks_per_workgroup
        if gx > max_count[0]:
            raise ValueError(f"w_packed: N={np_} output channels need {gx} workgroups, "
                             f"more than this device's limit of {max_count[0]}")
        rows = -(-t // self.tokens_per_row)
        gy = min(rows, max_count[1])
        return gx, gy, -(-rows // gy)


def lanes_for(info_or_caps):
    """Weight-layout interleave: the subgroup size, clamped to [8, 64]."""
    sg = (info_or_caps.subgroup_size if isinstance(info_or_caps, DeviceCaps)
          else int(info_or_caps.subgroup.get("size") or 8))
    lanes = 8
    while lanes < min(sg, 64):
        lanes *= 2
    return lanes


def token_tile(t, limit):
    """Tokens per invocation for ``t`` tokens: the largest power of two <= min(t, limit)."""
    tm = 1
    while tm * 2 <= min(t, limit):
        tm *= 2
    return tm


def choose_kernel(algorithm, t, group_size, out_int8, caps, threshold=None, variant=None):
    """The :class:`Kernel` for ``algorithm`` ("tiled", "cooperative" or "auto") at ``t``
    tokens on a device described by ``caps`` (:class:`DeviceCaps`). ``variant`` (or
    ``$VKQLINEAR_VARIANT``) forces a variant; it must be one the device supports for the
    algorithm that runs, else ``ValueError``. A pure function of its arguments (and the
    variable); an op call does not pay for it: :func:`kernel_for_device` memoizes its
    results per device."""
    variant = variant or os.environ.get("VKQLINEAR_VARIANT") or None
    if algorithm == "auto":
        limit = DEFAULT_AUTO_THRESHOLD if threshold is None else threshold
        algorithm = "cooperative" if t <= limit else "tiled"
    if algorithm not in ("tiled", "cooperative"):
        raise ValueError(f"algorithm: expected 'tiled', 'cooperative' or 'auto', "
                         f"got {algorithm!r}")
    lanes = lanes_for(caps)
    possible = caps.variants(algorithm)
    variant = variant or possible[0]
    if variant not in possible:
        raise ValueError(f"variant: {variant!r} is not available for the {algorithm} kernel "
                         f"on this device (available: {', '.join(possible)}; "
                         "$VKQLINEAR_VARIANT forces one)")
    defines = variant_defines(variant)
    if algorithm == "tiled":
        tm = token_tile(t, GEMM_TM_TEXEL if "texel" in variant.split("+") else GEMM_TM)
        local_y = max(1, min(64 // lanes, caps.max_invocations // lanes))
        return Kernel("tiled", "gemm_tiled.comp", defines, (lanes, local_y), tm, lanes,
                      group_size, bool(out_int8), variant)
    tm = token_tile(t, COOP_MAX_TM)
    if "subgroup" in variant.split("+"):
        # The workers of a block are the lanes of a subgroup, reading neighbouring groups
        # of one block: the weights in "groups" order, interleaved by the subgroup size.
        sg = caps.subgroup_size
        blocks = 1
        while blocks * 2 <= min(sg, caps.max_invocations // sg):
            blocks *= 2
        return Kernel("cooperative", "gemv_coop.comp", defines + (("GROUP_ORDER", 1),),
                      (sg, blocks), tm, sg, group_size, bool(out_int8), variant)
    workers = COOP_WORKERS
    while workers > 1 and (lanes * workers > caps.max_invocations
                           or lanes * workers * tm * 8 * 4 > caps.max_shared_memory):
        workers //= 2
    return Kernel("cooperative", "gemv_coop.comp", defines, (lanes, workers), tm, lanes,
                  group_size, bool(out_int8), variant)


def kernel_for_device(device, algorithm, t, group_size, out_int8):
    """:func:`choose_kernel` on an open :class:`~vkqlinear.Device`: its capabilities (as
    enabled) and, for ``"auto"``, its threshold (:func:`auto_threshold`)."""
    threshold, variant = _device_settings(device)
    # memoized per device (its caps are fixed while it is open), on plain keys
    key = (algorithm, t, group_size, bool(out_int8),
           threshold if algorithm == "auto" else None, variant)
    memo = device.kernel_memo
    kernel = memo.get(key)
    if kernel is None:
        kernel = choose_kernel(algorithm, t, group_size, out_int8, device.caps, threshold,
                               variant)
        if len(memo) > 512:
            memo.clear()
        memo[key] = kernel
    return kernel


SETTINGS_RECHECK_S = 1.0    # how often an open device re-reads its settings
_settings_generation = 0    # bumped by this process's own changes (settings_changed)


def settings_changed():
    """Make every open device re-read its settings (the tuning file's threshold and
    ``$VKQLINEAR_VARIANT``) at its next op call: :func:`store_threshold` and
    :func:`vkqlinear.conformance.forced_variant` call it."""
    global _settings_generation
    _settings_generation += 1


def _device_settings(device):
    """``(auto threshold, forced variant or None)`` for an open device: read at most once a
    second (:data:`SETTINGS_RECHECK_S`), and again at once after :func:`settings_changed`.
    Reading them builds the tuning file's path, stats it and looks the variable up (two
    ``KeyError`` raised and caught when it is unset): 20 to 100 us when it runs right after
    a kernel, with the host's caches cold, which every op call paid."""
    now = time.monotonic()
    hit = device.settings_memo
    if hit is not None and now - hit[2] < SETTINGS_RECHECK_S and \
            hit[3] == _settings_generation:
        return hit[0], hit[1]
    threshold = auto_threshold(device.info)
    variant = os.environ.get("VKQLINEAR_VARIANT") or None
    device.settings_memo = (threshold, variant, now, _settings_generation)
    return threshold, variant


# -- tuning file ---------------------------------------------------------------------------
def tuning_file():
    env = os.environ.get("VKQLINEAR_TUNING_FILE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vkqlinear" / "tuning.json"


def device_key(info):
    return f"{info.name} | {info.driver_name} {info.driver_info}".strip()


_threshold_cache = {}


def auto_threshold(info):
    """The T threshold for ``info``'s device: the tuning file's entry, else the built-in
    measurement for its driver (:data:`BUILTIN_THRESHOLDS`), else
    :data:`DEFAULT_AUTO_THRESHOLD`. The file is re-read only when it changes (a stat per
    call, so an op call does not parse JSON)."""
    path = tuning_file()
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        stamp = None
    key = (str(path), stamp, device_key(info))
    hit = _threshold_cache.get(key)
    if hit is not None:
        return hit
    try:
        data = json.loads(Path(path).read_text())
        value = int(data[device_key(info)]["auto_threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        value = BUILTIN_THRESHOLDS.get(info.driver_name, DEFAULT_AUTO_THRESHOLD)
    if len(_threshold_cache) > 64:
        _threshold_cache.clear()
    _threshold_cache[key] = value
    return value


def store_threshold(info, threshold, extra=None):
    """Record ``threshold`` for ``info``'s device in the tuning file (atomically)."""
    path = tuning_file()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[device_key(info)] = {"auto_threshold": int(threshold), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
    settings_changed()           # after the write: a device that looks now sees it
    return path
