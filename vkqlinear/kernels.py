"""Kernel choice as data: a pure function from (shape, device capabilities, tuned
threshold) to a frozen :class:`Kernel` record (shader, defines, specialization constants,
dispatch grid). No GPU is needed to call anything here; the unit tests check the choices
directly.

A kernel's code shape is a :class:`Variant`, one flag per ``#define`` switch of the
shaders: the COOPERATIVE GEMV reduces through subgroup arithmetic (``subgroup``) or shared
memory; both kernels multiply with the SWAR int32 path, reading 32-bit words, 64-bit words
(``int64``, where ``shaderInt64`` is enabled) or texel buffers (``texel``, with ``int64``),
or with OpSDot (``dot``, where the device enables ``shaderIntegerDotProduct``), or read int8
activations and write int8 outputs through 8-bit storage (``storage8``). ``portable`` (no
flag) runs on every Vulkan 1.1 device. :meth:`DeviceCaps.variants` lists what a device can
run, best first. Variant names (``"subgroup+texel+int64"``) are parsed only at the
boundary: ``$VKQLINEAR_VARIANT`` and the command line (:meth:`Variant.parse`).

Each kernel algorithm is one :class:`KernelSpec` in :data:`SPECS` (its shader, how its
workgroup is laid out, what fits a device, its default and its tunable axes); the rest of
the package iterates over the specs. Adding a kernel is a new spec and a new ``.comp``
(docs/design.md has the checklist).

The ``"auto"`` rule: the COOPERATIVE GEMV for ``T <= threshold``, the TILED GEMM above;
the threshold comes from the tuning file (:mod:`vkqlinear.tuning`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from . import policy

__all__ = ["ALGORITHMS", "KERNEL_ALGORITHMS", "SPECS", "KernelSpec", "Variant", "Kernel",
           "DeviceCaps", "choose_kernel", "lanes_for", "token_tile", "DEFAULT_AUTO_THRESHOLD"]

DEFAULT_AUTO_THRESHOLD = 4
# The weights' offsets, the shaders' HAS_OFFSET: none (symmetric), float offsets, or
# integer zero points (o = -s z, z in [-8, 7], held in the nibble sums' top 4 bits), which
# a kernel may fold into its integer sums.
OFFSETS_NONE, OFFSETS_FLOAT, OFFSETS_INTEGER = 0, 1, 2
# The weights' group data in 16 bits (the kernels' HALF_DATA bits): fp16 scales; fp16 m of
# float offsets o = m + 8 s (GGUF Q4_1's min), formed in float32 by the kernels.
HALF_SCALES, HALF_OFFSETS = 1, 2


@dataclass(frozen=True)
class Variant:
    """A kernel's code shape: the ``#define`` switches it is compiled with.

    Fields in name order; :attr:`name` joins the set ones with ``+`` (``"portable"`` when
    none is set) and :meth:`parse` reads such a name back.
    """
    subgroup: bool = False   # SUBGROUP_REDUCE: the cooperative kernel reduces in a subgroup
    texel: bool = False      # TEXEL_LOADS: X and the weights from uniform texel buffers
    int64: bool = False      # INT64_LOADS: 64-bit loads (shaderInt64)
    dot: bool = False        # DOT_PRODUCT: OpSDot (shaderIntegerDotProduct)
    storage8: bool = False   # STORAGE8: int8 loads and stores (storageBuffer8BitAccess)

    DEFINES = {"subgroup": "SUBGROUP_REDUCE", "texel": "TEXEL_LOADS", "int64": "INT64_LOADS",
               "dot": "DOT_PRODUCT", "storage8": "STORAGE8"}

    def __post_init__(self):
        if self.texel and not self.int64:
            raise ValueError("variant: 'texel' reuses the int64 code path; name it "
                             "'texel+int64'")
        if self.dot and (self.int64 or self.storage8):
            raise ValueError("variant: 'dot' reads 32-bit words; it does not combine with "
                             "'int64', 'texel' or 'storage8'")

    @property
    def parts(self):
        return tuple(f.name for f in fields(self) if getattr(self, f.name))

    @property
    def name(self):
        return "+".join(self.parts) or "portable"

    def __str__(self):
        return self.name

    @classmethod
    def parse(cls, name):
        """``"portable"`` or parts joined by ``+`` (e.g. ``"subgroup+dot"``)."""
        if isinstance(name, cls):
            return name
        if not isinstance(name, str):
            raise TypeError(f"variant: expected a str such as 'portable' or 'subgroup+int64', "
                            f"got {type(name).__name__}")
        parts = [p.strip() for p in name.split("+")]
        if parts == ["portable"]:
            return cls()
        unknown = [p for p in parts if p not in cls.DEFINES]
        if unknown or len(set(parts)) != len(parts):
            raise ValueError(f"variant: expected 'portable' or parts of "
                             f"{'+'.join(cls.DEFINES)} joined by '+', got {name!r}")
        return cls(**{p: True for p in parts})

    @property
    def defines(self):
        """The ``(name, 1)`` pairs of its ``#define`` switches."""
        return tuple((self.DEFINES[p], 1) for p in self.parts)

    @property
    def layout(self):
        """The prepacked weight layout it reads (:mod:`vkqlinear.layout`): ``"dot"``,
        ``"swar64"`` or ``"swar"``."""
        return "dot" if self.dot else "swar64" if self.int64 else "swar"


@dataclass(frozen=True)
class DeviceCaps:
    """The device facts the choice depends on (:meth:`from_info`).

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
    # (algorithm, Variant) pairs that failed the device's self-check (selfcheck.py)
    excluded: frozenset = frozenset()
    device_type: str = "cpu"        # DeviceInfo.type: the untuned tiles' size follows it
    min_subgroup_size: int = 0      # the least a pipeline may run at (0: not reported)
    register_limit: int = 0         # VGPRs its compiler allows, where known to be few

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
                   texel=bool(enabled("texelBufferLoads")),
                   device_type=info.type,
                   min_subgroup_size=int(info.subgroup.get("min_size") or 0),
                   register_limit=policy.register_limit(info) or 0)

    @property
    def subgroup_reduce(self):
        """Whether a workgroup of one subgroup can reduce with subgroup arithmetic: it
        works, at a power-of-two subgroup size from 4 to 64 that a workgroup can hold."""
        return self.subgroup_arithmetic and self.subgroup_size in (4, 8, 16, 32, 64) and \
            self.subgroup_size <= self.max_invocations

    def variants(self, algorithm):
        """The :class:`Variant` s of ``algorithm`` this device can run, best first.

        The subgroup reduction before shared memory (cooperative, where subgroup
        arithmetic works at a usable subgroup size); then the arithmetic: OpSDot first
        where the driver says it is accelerated; else texel loads, 64-bit loads, 32-bit
        loads (fewer load instructions first: lavapipe pays per load); unaccelerated OpSDot
        after those; 8-bit storage last (it reads the same bytes; slower on lavapipe).
        See docs/design.md for the measurements behind the order. Variants that failed
        the device's self-check (``excluded``) are left out.
        """
        spec = spec_for(algorithm)
        reductions = [True, False] if spec.subgroup_reduction and \
            self.subgroup_reduce else [False]
        maths = [{}]
        if self.int64:
            maths = ([dict(texel=True, int64=True)] if self.texel else []) + \
                [dict(int64=True), {}]
        if self.integer_dot:
            maths = [dict(dot=True)] + maths if self.dot_accelerated else \
                maths + [dict(dot=True)]
        if self.storage8:
            maths.append(dict(storage8=True))
        return tuple(v for v in (Variant(subgroup=r, **m) for r in reductions for m in maths)
                     if spec.runs(v) and (algorithm, v) not in self.excluded)


@dataclass(frozen=True)
class Kernel:
    """One specialized kernel and how to dispatch it.

    ``spec_constants`` are, in ``constant_id`` order: LOCAL_X, LOCAL_Y, GROUP_SIZE,
    LANES, TM, OUT_INT8, CB (see ``shaders/common.glsl``); the weights add HAS_OFFSET
    (:class:`~vkqlinear.device_linear.WeightBuffers`).
    """
    algorithm: str          # a key of SPECS
    shader: str             # file in shaders/
    variant: Variant
    local_size: tuple       # (x, y)
    tm: int                 # tokens per invocation
    lanes: int              # weight layout interleave
    group_size: int
    out_int8: bool
    cb: int = 1             # channel blocks (of 8) per invocation
    # the order of the weight units it reads (vkqlinear.layout): "groups" (GROUP_ORDER)
    # or "blocks"; "" takes the subgroup COOPERATIVE kernel's "groups", else "blocks"
    order: str = ""

    def __post_init__(self):
        spec = spec_for(self.algorithm)
        if not self.order:
            object.__setattr__(self, "order", "groups" if self.variant.subgroup else "blocks")
        elif self.order not in ("groups", "blocks"):
            raise ValueError(f"order: expected 'groups' or 'blocks', got {self.order!r}")
        if self.cb != 1 and self.cb not in spec.cbs:
            raise ValueError(f"cb: the {self.algorithm} kernel computes "
                             f"{' or '.join(map(str, spec.cbs))} channel blocks an "
                             f"invocation, got cb={self.cb}")
        # Kernels key the recorded-call caches: hash the fields once, not on every lookup
        object.__setattr__(self, "_hash",
                           hash(tuple(getattr(self, f.name) for f in fields(self))))

    def __hash__(self):
        return self._hash

    @property
    def layout(self):
        return self.variant.layout

    @property
    def defines(self):
        """The ``(name, value)`` pairs the shader is compiled with."""
        return self.variant.defines + ((("GROUP_ORDER", 1),) if self.order == "groups"
                                       else ())

    @property
    def spec(self):
        """Its algorithm's :class:`KernelSpec`."""
        return SPECS[self.algorithm]

    @property
    def blocks_per_workgroup(self):
        """Channel blocks (of 8) per workgroup: the local axis that is not workers."""
        return self.spec.blocks_per_workgroup(self)

    @property
    def spec_constants(self):
        return (self.local_size[0], self.local_size[1], self.group_size, self.lanes,
                self.tm, int(self.out_int8), self.cb)

    def pipeline_constants(self, offsets=OFFSETS_FLOAT, half=0):
        """:attr:`spec_constants`, the weights' HAS_OFFSET (``offsets``: an ``OFFSETS_*``
        kind, :attr:`~vkqlinear.QuantizedWeights.offset_kind`) and HALF_DATA (``half``,
        :attr:`~vkqlinear.QuantizedWeights.half_data`): what a pipeline of it is
        specialized with."""
        return self.spec_constants + (int(offsets), int(half))

    @property
    def tokens_per_row(self):
        """Tokens covered by one workgroup row (grid y = 1)."""
        return self.spec.tokens_per_row(self)

    def grid(self, t, n_padded, max_count=(65535, 65535, 65535)):
        """``(gx, gy, n_dispatches)``: one grid of ``gx x gy`` workgroups, dispatched
        ``n_dispatches`` times with ``token_base`` advancing by ``gy * tokens_per_row``
        when the token rows exceed the device's ``maxComputeWorkGroupCount[1]``."""
        gx = -(-(n_padded // 8) // (self.blocks_per_workgroup * self.cb))
        if gx > max_count[0]:
            raise ValueError(f"w_packed: N={n_padded} output channels need {gx} workgroups, "
                             f"more than this device's limit of {max_count[0]}")
        rows = -(-t // self.tokens_per_row)
        gy = min(rows, max_count[1])
        return gx, gy, -(-rows // gy)

    def describe(self):
        """A short human-readable summary (benchmark tables and JSON)."""
        cb = f" cb={self.cb}" if self.cb > 1 else ""
        return (f"{self.algorithm} {self.variant.name} tm={self.tm}{cb} "
                f"local={list(self.local_size)} g={self.group_size}")


def lanes_for(caps):
    """Weight-layout interleave: the subgroup size, clamped to [8, 64]."""
    lanes = 8
    while lanes < min(caps.subgroup_size, 64):
        lanes *= 2
    return lanes


def token_tile(t, limit):
    """Tokens per invocation for ``t`` tokens: the largest power of two <= min(t, limit)."""
    tm = 1
    while tm * 2 <= min(t, limit):
        tm *= 2
    return tm


def token_tiles(t, tm):
    """Token tiles of ``tm`` tokens that ``t`` tokens fill, rounded up to a power of two
    (workgroup sizes are powers of two)."""
    return 1 << (-(-max(t, 1) // tm) - 1).bit_length()


# Bumped when a shader change can make earlier tuning results wrong or stale: the tuning
# file's entries of another generation are ignored.
KERNEL_GENERATION = 9
# At most this many outputs (TM x 8 CB) an invocation of the TILED and COOPERATIVE kernels:
# each is three registers (two float sums, one int), and a GPU spills past about 256.
TILE_OUTPUTS = 64
LOCAL_SIZES = (1, 2, 4, 8, 16)       # token tiles, workers or blocks per workgroup


def _pow2(v):
    return v >= 1 and not v & (v - 1)


class KernelSpec:
    """One kernel algorithm: its shader and everything the choice needs to know about it.

    A subclass per algorithm, one instance in :data:`SPECS`. The workgroup is
    ``(x, y)``: ``x`` is always the weight layout's lanes (one lane per channel block, or
    one subgroup); what ``y`` counts (token tiles, workers, blocks) is the spec's.
    """
    algorithm = ""              # the ops' ``algorithm`` value
    shader = ""                 # file in shaders/
    role = ""                   # one line for tables and the docs
    check_tokens = 1            # a token count the kernel is made for (self-check, tests)
    subgroup_reduction = False  # whether it has a subgroup-reduce variant
    tms = (1,)                  # tunable tokens per invocation
    cbs = (1,)                  # tunable channel blocks per invocation
    max_outputs = TILE_OUTPUTS  # most outputs (TM x 8 CB) an invocation may accumulate

    def runs(self, variant):
        """Whether the spec's shader has a code shape for ``variant``."""
        return True

    def lanes(self, variant, caps):
        """The weight layout's lanes (and the workgroup's x) for ``variant``."""
        return lanes_for(caps)

    def xs(self, variant, caps):
        """The candidate values of the workgroup's x (:func:`candidates`)."""
        return (self.lanes(variant, caps),)

    def channel_blocks(self, caps):
        """The candidate channel blocks per invocation on ``caps``' device
        (:func:`candidates`)."""
        return self.cbs

    def default(self, t, variant, group_size, out_int8, caps, n=None):
        """The untuned :class:`Kernel` for ``t`` tokens (and ``n`` output channels, where
        known)."""
        raise NotImplementedError

    def blocks_per_workgroup(self, kernel):
        """Channel blocks (of 8) a workgroup computes, before CB."""
        return kernel.local_size[0]

    def tokens_per_row(self, kernel):
        """Tokens one workgroup row covers (grid y = 1)."""
        return kernel.tm

    def fits(self, kernel, caps):
        """Whether the spec's own limits allow ``kernel`` on ``caps``' device (the
        workgroup and CB rules common to all are in :func:`fits`)."""
        return kernel.local_size[0] == kernel.lanes

    def other_axes(self, t, tm):
        """The candidate values of the workgroup's y at ``t`` tokens, ``tm`` per
        invocation (:func:`candidates`)."""
        return LOCAL_SIZES

    def loop_macs(self, kernel, has_float_epilogue):
        """Multiply-adds one invocation does in an iteration of the kernel's innermost
        loop (:mod:`vkqlinear.measure.shader_stats`): a whole group where the loop holds
        the group's float epilogue (the chunk loop was unrolled), else one chunk of k (8
        for OpSDot's loop, 16 or 8 for SWAR)."""
        if has_float_epilogue:
            k = kernel.group_size
        elif kernel.variant.dot:
            k = 8
        else:
            k = 16 if kernel.group_size % 16 == 0 else 8
        return k * kernel.tm * 8 * kernel.cb

    def order(self, variant, caps):
        """The order of the weight units its kernels read (:mod:`vkqlinear.layout`)."""
        return "groups" if variant.subgroup else "blocks"

    def kernel(self, variant, local_size, tm, caps, group_size, out_int8, cb=1):
        return Kernel(self.algorithm, self.shader, variant, tuple(local_size), tm,
                      self.lanes(variant, caps), group_size, bool(out_int8), cb,
                      self.order(variant, caps))


class TiledSpec(KernelSpec):
    """The TILED GEMM: an invocation computes TM tokens x CB channel blocks over all of
    K; the workgroup is lanes channel blocks x token tiles."""
    algorithm = "tiled"
    shader = "gemm_tiled.comp"
    role = "GEMM: TM tokens x CB channel blocks an invocation"
    check_tokens = 8
    tms = (1, 2, 4, 8)
    cbs = (1, 2, 4)
    TM = 8                # untuned tokens per invocation with storage loads
    TM_TEXEL = 4          # with texel loads, whose loads are cheap enough for 4 to beat 8

    def default(self, t, variant, group_size, out_int8, caps, n=None):
        lanes = self.lanes(variant, caps)
        tm = token_tile(t, min(self.TM_TEXEL if variant.texel else self.TM,
                               policy.max_tile_outputs(caps) // 8))
        # no more token tiles than t fills: the others' invocations would only idle
        tiles = max(1, min(64 // lanes, policy.max_workgroup(caps) // lanes,
                           token_tiles(t, tm)))
        return self.kernel(variant, (lanes, tiles), tm, caps, group_size, out_int8)

    def tokens_per_row(self, kernel):
        return kernel.tm * kernel.local_size[1]

    def other_axes(self, t, tm):
        # more token tiles than t fills would only add idle invocations
        return tuple(v for v in LOCAL_SIZES if v <= token_tiles(t, tm))


class CooperativeSpec(KernelSpec):
    """The COOPERATIVE GEMV: the workers of a channel block split K and reduce, through
    shared memory (workgroup lanes x workers) or, with the ``subgroup`` variant, in one
    subgroup (subgroup x blocks)."""
    algorithm = "cooperative"
    shader = "gemv_coop.comp"
    role = "GEMV: workers split K, reduced in shared memory or a subgroup"
    check_tokens = 1
    subgroup_reduction = True
    tms = (1, 2, 4)
    WORKERS = 8           # untuned workers of the shared-memory reduction
    MAX_TM = 4

    def lanes(self, variant, caps):
        # the subgroup kernel's workers are a subgroup's lanes: its layout interleave
        return caps.subgroup_size if variant.subgroup else lanes_for(caps)

    def default(self, t, variant, group_size, out_int8, caps, n=None):
        tm = token_tile(t, min(self.MAX_TM, policy.max_tile_outputs(caps) // 8))
        lanes = self.lanes(variant, caps)
        most = policy.max_workgroup(caps)
        if variant.subgroup:
            # the workers of a block read neighbouring groups of it ("groups" order)
            blocks = 1
            while blocks * 2 <= min(lanes, most // lanes):
                blocks *= 2
            return self.kernel(variant, (lanes, blocks), tm, caps, group_size, out_int8)
        workers = self.WORKERS
        while workers > 1 and (lanes * workers > most
                               or self.shared_bytes(lanes, workers, tm) >
                               caps.max_shared_memory):
            workers //= 2
        return self.kernel(variant, (lanes, workers), tm, caps, group_size, out_int8)

    @staticmethod
    def shared_bytes(lanes, workers, tm):
        """The shared-memory reduction's size: a float per worker, token and channel."""
        return lanes * workers * tm * 8 * 4

    def blocks_per_workgroup(self, kernel):
        return kernel.local_size[1] if kernel.variant.subgroup else kernel.local_size[0]

    def fits(self, kernel, caps):
        x, y = kernel.local_size
        if kernel.variant.subgroup:
            return x == caps.subgroup_size and y <= caps.subgroup_size
        return x == kernel.lanes and \
            self.shared_bytes(x, y, kernel.tm) <= caps.max_shared_memory


class SharedSpec(KernelSpec):
    """The SHARED GEMM: a workgroup computes ``local_size[1] * TM`` tokens x
    ``local_size[0] * 8 CB`` channels, staging each step of K (a group, or an equal part
    of one) in shared memory once for all its invocations; an invocation keeps one float
    accumulator per output of its TM tokens x 8 CB channels. It multiplies with OpSDot
    (``dot``) or with the SWAR int32 path (reading 32-bit words, ``int64`` or
    ``texel+int64``); its workgroup's x is free of the weight layout's lanes."""
    algorithm = "shared"
    shader = "gemm_shared.comp"
    role = "GEMM: a workgroup tile staged through shared memory, one accumulator an output"
    check_tokens = 16
    tms = (1, 2, 4, 8)
    cbs = (1, 2)
    max_outputs = 128       # one register each
    XS = (8, 16, 32)
    # Octets (8 k) a stage holds at most: OpSDot stages 8 bytes an octet of a channel,
    # SWAR 18 (a nibble-pair word a k, and their sums)
    MAX_STAGE_OCTETS = {True: 8, False: 4}

    def runs(self, variant):
        return not (variant.subgroup or variant.storage8)

    def order(self, variant, caps):
        # the subgroup GEMV's order where the device's GEMV reduces in a subgroup: a layer
        # that auto runs with both then holds one copy of its weights (the staging loads
        # read 32 contiguous bytes per 8 channels in either order)
        return "groups" if caps.subgroup_reduce else "blocks"

    def lanes(self, variant, caps):
        return caps.subgroup_size if caps.subgroup_reduce else lanes_for(caps)

    @classmethod
    def stage_octets(cls, group_size, dot=True):
        """Octets (8 k) a stage holds: the whole group up to 8 (``dot``) or 4 octets
        (SWAR), else the largest of 8 (``dot`` only), 4, 2, 1 that divides it
        (``shaders/gemm_shared.comp``'s SO)."""
        octets = group_size // 8
        most = cls.MAX_STAGE_OCTETS[bool(dot)]
        if octets <= most:
            return octets
        return next(d for d in (8, 4, 2, 1) if d <= most and octets % d == 0)

    @classmethod
    def shared_bytes(cls, kernel):
        """Its shared memory by code shape: a stage's weights and activations and the fold
        data per channel and token (``shaders/gemm_shared.comp``'s declarations)."""
        x, y = kernel.local_size
        channels, tokens = x * 8 * kernel.cb, y * kernel.tm
        dot = kernel.variant.dot
        so = cls.stage_octets(kernel.group_size, dot)
        if dot:
            # per channel: its octets in 16-byte pairs and s, o, sum q; per token: its
            # bytes, S and -zp
            return channels * (16 * (-(-so // 2)) + 16) + tokens * (8 * so + 8)
        # per channel: a nibble-pair word a k and half a word of their sums an octet, s
        # and o; per token: a byte a k and its fold data
        return channels * (18 * so + 8) + tokens * (8 * so + 16)

    def xs(self, variant, caps):
        # a CPU device runs the workgroup as one thread's loop: its width matters little,
        # and each large unrolled tile costs lavapipe seconds to compile
        return (self.X,) if caps.device_type == "cpu" else self.XS

    def channel_blocks(self, caps):
        return (1,) if caps.device_type == "cpu" else self.cbs

    X = 16                  # untuned invocations along the channels
    TM = 8                  # untuned tokens per invocation, at most
    MIN_Y = 4               # untuned token tiles a workgroup has, at least (where t has them)
    X_CACHE = 64            # registers an invocation's cached activations may take
    WIDE_WORKGROUPS = 128   # the untuned CB is 2 where the grid has this many with it

    def default(self, t, variant, group_size, out_int8, caps, n=None):
        # An invocation caches its tokens' activations of a stage (2 TM SO registers) and
        # keeps 8 TM CB accumulators: 8 tokens x 8 channels, fewer tokens where t would
        # leave the workgroup under MIN_Y token tiles (small workgroups run as wave32 on
        # RDNA, where the same registers and shared memory keep fewer subgroups a SIMD) or
        # the stage is long;
        # 16 channels where the grid is large enough to fill a GPU with half the
        # workgroups.
        so = self.stage_octets(group_size, variant.dot)
        few = 0 < caps.register_limit <= 128     # half the registers: half the tile
        cache = self.X_CACHE // 2 if few else self.X_CACHE
        most = min(self.TM // (1 + few), cache // (2 * so))
        swar_gpu = not variant.dot and caps.device_type != "cpu"
        if swar_gpu:
            # twice the TILED GEMM's outputs an invocation (an accumulator and half a SWAR
            # sum an output, where the TILED GEMM keeps three registers): the most that
            # keep 4 subgroups a SIMD on GCN (shader-stats)
            most = min(most, 2 * policy.max_tile_outputs(caps) // 8)
        tm = token_tile(max(1, t // self.MIN_Y), most)
        x = self.X
        # at least MIN_Y token tiles, idle where t has fewer: a workgroup as narrow as one
        # token stages 8 channels an invocation, and shared memory then bounds occupancy;
        # with SWAR on a GPU always 16 (the stage's weights take 80 bytes a channel of
        # shared memory: fewer token tiles leave GCN under 4 subgroups a SIMD)
        most_y = max(1, min(policy.max_workgroup(caps) // x, 16))
        y = most_y if swar_gpu else min(most_y, max(self.MIN_Y, token_tiles(t, tm)))
        cb = 1
        if n is not None and tm * so >= 16 and not few and variant.dot:
            tiles = -(-n // (8 * 2 * x)) * -(-t // (tm * y))
            cb = 2 if tiles >= self.WIDE_WORKGROUPS else 1
        kernel = self.kernel(variant, (x, y), tm, caps, group_size, out_int8, cb)
        while not fits(kernel, caps) and (y > 1 or kernel.cb > 1):
            cb, y = (1, y) if kernel.cb > 1 else (cb, y // 2)
            kernel = self.kernel(variant, (x, y), tm, caps, group_size, out_int8, cb)
        return kernel

    def blocks_per_workgroup(self, kernel):
        return kernel.local_size[0]

    def tokens_per_row(self, kernel):
        return kernel.tm * kernel.local_size[1]

    def fits(self, kernel, caps):
        return self.shared_bytes(kernel) <= caps.max_shared_memory

    def other_axes(self, t, tm):
        return tuple(v for v in LOCAL_SIZES if v <= token_tiles(t, tm))

    def loop_macs(self, kernel, has_float_epilogue):
        # an iteration is one stage, its fold included
        return 8 * self.stage_octets(kernel.group_size, kernel.variant.dot) * kernel.tm * 8 * \
            kernel.cb


# Every kernel algorithm, in the order tables list them.
SPECS = {s.algorithm: s for s in (TiledSpec(), SharedSpec(), CooperativeSpec())}
KERNEL_ALGORITHMS = tuple(SPECS)
# Every value of the ops' ``algorithm`` argument.
ALGORITHMS = ("auto",) + KERNEL_ALGORITHMS + ("reference",)


def spec_for(algorithm):
    """The :class:`KernelSpec` of a kernel algorithm, else ``ValueError``."""
    try:
        return SPECS[algorithm]
    except (KeyError, TypeError):
        raise ValueError(f"algorithm: expected 'auto' or one of {', '.join(SPECS)}, "
                         f"got {algorithm!r}") from None


def choose_kernel(algorithm, t, group_size, out_int8, caps, threshold=None, variant=None,
                  n=None):
    """The :class:`Kernel` for ``algorithm`` (a kernel algorithm of :data:`SPECS`, or
    ``"auto"``, which takes the cooperative kernel for ``t <= threshold`` and the GEMM of
    :func:`vkqlinear.policy.gemm_algorithm` above) at ``t`` tokens (of a layer with ``n``
    output channels, where known) on a device described by ``caps``
    (:class:`DeviceCaps`). ``variant`` (a :class:`Variant`) forces a code shape; it must
    be one the device runs for the kernel chosen, else ``ValueError``. A pure function of
    its arguments."""
    if algorithm == "auto":
        limit = DEFAULT_AUTO_THRESHOLD if threshold is None else threshold
        algorithm = "cooperative" if t <= limit else policy.gemm_algorithm(caps, variant)
    spec = spec_for(algorithm)
    possible = caps.variants(algorithm)
    if not possible:
        raise ValueError(f"algorithm: every variant of the {algorithm} kernel failed this "
                         "device's self-check (python -m vkqlinear info lists them)")
    variant = variant or possible[0]
    if variant not in possible:
        raise ValueError(f"variant: {variant.name!r} is not available for the {algorithm} "
                         f"kernel on this device (available: "
                         f"{', '.join(v.name for v in possible)})")
    return spec.default(t, variant, group_size, out_int8, caps, n)


def kernel_config(kernel):
    """A :class:`Kernel`'s tunable choices as plain data (the tuning file's form)."""
    return {"algorithm": kernel.algorithm, "variant": kernel.variant.name, "tm": kernel.tm,
            "local_size": list(kernel.local_size), "cb": kernel.cb}


def kernel_from_config(config, t, group_size, out_int8, caps):
    """The :class:`Kernel` a tuned ``config`` (:func:`kernel_config`) makes for ``t``
    tokens on a device described by ``caps``, its tokens per invocation capped at what
    ``t`` needs; ``None`` if the device cannot run it (another device's entry, a variant
    it lacks, limits)."""
    try:
        spec = SPECS[config["algorithm"]]
        variant = Variant.parse(config["variant"])
        tm = token_tile(t, int(config["tm"]))
        x, y = (int(v) for v in config["local_size"])
        cb = int(config.get("cb", 1))
        if variant not in caps.variants(spec.algorithm):
            return None
        kernel = spec.kernel(variant, (x, y), tm, caps, group_size, out_int8, cb)
    except (KeyError, TypeError, ValueError):   # an entry no kernel can be made of
        return None
    return kernel if fits(kernel, caps) else None


def fits(kernel, caps):
    """Whether ``caps``' device can run ``kernel``: a power-of-two workgroup within the
    invocation limit, a power-of-two CB with at most the spec's ``max_outputs`` outputs
    an invocation, and the spec's own rules (:meth:`KernelSpec.fits`)."""
    x, y = kernel.local_size
    if x * y > caps.max_invocations or not (_pow2(x) and _pow2(y)):
        return False
    cb = kernel.cb
    if not _pow2(cb) or kernel.tm * 8 * cb > kernel.spec.max_outputs:  # (cb is its spec's)
        return False
    return kernel.spec.fits(kernel, caps)


def candidates(algorithm, t, group_size, out_int8, caps, n=None):
    """Every :class:`Kernel` of ``algorithm`` the device can run at ``t`` tokens: its
    variants x the spec's tokens per invocation x the workgroup's axes x its channel
    blocks per invocation. The search space of :mod:`vkqlinear.measure.tuner`; the first
    is the default choice (for ``n`` output channels, where known)."""
    spec = spec_for(algorithm)
    if not caps.variants(algorithm):
        return []
    out = [choose_kernel(algorithm, t, group_size, out_int8, caps, n=n)]
    for variant in caps.variants(algorithm):
        for tm in sorted({token_tile(t, m) for m in spec.tms}):
            for cb in spec.channel_blocks(caps):
                for x in spec.xs(variant, caps):
                    for y in spec.other_axes(t, tm):
                        config = {"algorithm": algorithm, "variant": variant.name,
                                  "tm": tm, "local_size": [x, y], "cb": cb}
                        k = kernel_from_config(config, t, group_size, out_int8, caps)
                        if k is not None and k not in out:
                            out.append(k)
    return out
