"""Kernel choice is data: checked without a GPU."""

import dataclasses

import pytest

from vkqlinear import kernels as K

V = K.Variant.parse


def names(variants):
    return tuple(v.name for v in variants)

LAVAPIPE = K.DeviceCaps(subgroup_size=8, max_invocations=1024, max_shared_memory=32768)
GPU32 = K.DeviceCaps(subgroup_size=32, max_invocations=1024, max_shared_memory=49152)
SMALL = K.DeviceCaps(subgroup_size=64, max_invocations=128, max_shared_memory=16384)


def test_auto_picks_by_threshold():
    assert K.choose_kernel("auto", 1, 32, False, LAVAPIPE, threshold=4).algorithm == \
        "cooperative"
    assert K.choose_kernel("auto", 4, 32, False, LAVAPIPE, threshold=4).algorithm == \
        "cooperative"
    assert K.choose_kernel("auto", 5, 32, False, LAVAPIPE, threshold=4).algorithm == "tiled"
    assert K.choose_kernel("auto", 5, 32, False, LAVAPIPE, threshold=0).algorithm == "tiled"


def test_lanes_follow_subgroup_size_not_a_constant():
    assert K.lanes_for(LAVAPIPE) == 8
    assert K.lanes_for(GPU32) == 32
    assert K.lanes_for(K.DeviceCaps(subgroup_size=4)) == 8
    assert K.lanes_for(K.DeviceCaps(subgroup_size=128)) == 64


@pytest.mark.parametrize("caps", [LAVAPIPE, GPU32, SMALL])
@pytest.mark.parametrize("t", [1, 2, 3, 4, 7, 512])
def test_kernels_respect_device_limits(caps, t):
    for alg in ("tiled", "cooperative"):
        k = K.choose_kernel(alg, t, 32, False, caps)
        x, y = k.local_size
        assert x * y <= caps.max_invocations
        assert k.tm in (1, 2, 4, 8) and k.tm <= max(t, 1)
        assert k.spec_constants == (x, y, 32, k.lanes, k.tm, 0, 1)
        if alg == "cooperative":
            assert y & (y - 1) == 0                        # workers: a power of two
            assert x * y * k.tm * 8 * 4 <= caps.max_shared_memory


@pytest.mark.parametrize("caps", [LAVAPIPE, GPU32, SMALL])
def test_the_default_tiled_workgroup_has_no_idle_token_tiles(caps):
    """Below 8 x TM tokens the default tiled workgroup has only the token tiles T fills."""
    for t in range(1, 80):
        k = K.choose_kernel("tiled", t, 32, False, caps)
        tiles = k.local_size[1]
        # at most the rounding to a power of two: fewer than half the tiles idle
        assert tiles < 2 * -(-t // k.tm), (t, k.describe())
        assert tiles == min(64 // k.lanes, caps.max_invocations // k.lanes,
                            K.token_tiles(t, k.tm)) or tiles == 1


def test_only_the_tiled_kernel_takes_more_channel_blocks():
    coop = K.choose_kernel("cooperative", 1, 32, False, LAVAPIPE)
    with pytest.raises(ValueError, match="cb"):
        K.Kernel(coop.algorithm, coop.shader, coop.variant, coop.local_size, coop.tm,
                 coop.lanes, 32, False, cb=2)
    tiled = K.choose_kernel("tiled", 8, 32, False, LAVAPIPE)
    assert K.Kernel(tiled.algorithm, tiled.shader, tiled.variant, tiled.local_size,
                    tiled.tm, tiled.lanes, 32, False, cb=2).cb == 2


def test_int8_output_is_a_spec_constant():
    a = K.choose_kernel("tiled", 8, 32, False, LAVAPIPE)
    b = K.choose_kernel("tiled", 8, 32, True, LAVAPIPE)
    assert a.shader == b.shader and a.defines == b.defines
    assert a.spec_constants[5] == 0 and b.spec_constants[5] == 1


def test_grid_splits_when_rows_exceed_the_limit():
    k = K.choose_kernel("tiled", 4, 32, False, LAVAPIPE)
    gx, gy, n = k.grid(1000, 64, max_count=(65535, 7, 65535))
    rows = -(-1000 // k.tokens_per_row)
    assert gy == 7 and n == -(-rows // 7) and gy * n * k.tokens_per_row >= 1000
    assert k.grid(3, 64) == (1, 1, 1)
    with pytest.raises(ValueError, match="N="):
        k.grid(1, 64 * 100, max_count=(10, 10, 10))


def test_cooperative_variants():
    sub = K.DeviceCaps(subgroup_size=32, max_invocations=1024, max_shared_memory=32768,
                       subgroup_arithmetic=True)
    k = K.choose_kernel("cooperative", 1, 32, False, sub)
    assert k.variant == V("subgroup")
    assert k.defines == (("SUBGROUP_REDUCE", 1), ("GROUP_ORDER", 1)) and k.order == "groups"
    assert k.local_size[0] == 32 and k.blocks_per_workgroup == k.local_size[1]
    assert k.lanes == 32                 # the groups order interleaves by the workers
    small = K.choose_kernel("cooperative", 1, 32, False, K.DeviceCaps(
        subgroup_size=4, max_invocations=128, subgroup_arithmetic=True))
    assert small.local_size[0] == small.lanes == 4
    assert small.blocks_per_workgroup <= small.lanes   # NP (8 * lanes) holds whole workgroups
    assert k.local_size[0] * k.local_size[1] <= sub.max_invocations
    p = K.choose_kernel("cooperative", 1, 32, False, sub, variant=V("portable"))
    assert p.variant == K.Variant() and p.defines == () and p.order == "blocks"
    assert p.blocks_per_workgroup == p.local_size[0]
    # no subgroup arithmetic: only the shared-memory reduction, and forcing it is an error
    assert K.choose_kernel("cooperative", 1, 32, False, LAVAPIPE).variant == V("portable")
    with pytest.raises(ValueError, match="variant"):
        K.choose_kernel("cooperative", 1, 32, False, LAVAPIPE, variant=V("subgroup"))
    with pytest.raises(ValueError, match="variant"):
        K.choose_kernel("tiled", 1, 32, False, sub, variant=V("subgroup"))


def test_feature_variants_only_where_enabled():
    base = dict(subgroup_size=8, max_invocations=1024, max_shared_memory=32768)
    assert names(K.DeviceCaps(**base).variants("tiled")) == ("portable",)
    dot = K.DeviceCaps(**base, integer_dot=True)
    assert names(dot.variants("tiled")) == ("portable", "dot")  # unaccelerated: SWAR first
    fast = K.DeviceCaps(**base, integer_dot=True, dot_accelerated=True, storage8=True)
    assert names(fast.variants("tiled")) == ("dot", "portable", "storage8")
    k = K.choose_kernel("tiled", 8, 32, False, fast)
    assert k.variant == V("dot") and k.defines == (("DOT_PRODUCT", 1),) and k.layout == "dot"
    sub = K.DeviceCaps(**base, subgroup_arithmetic=True, storage8=True)
    assert names(sub.variants("cooperative")) == ("subgroup", "subgroup+storage8", "portable",
                                           "storage8")
    k = K.choose_kernel("cooperative", 1, 32, True, sub, variant=V("subgroup+storage8"))
    assert k.defines == (("SUBGROUP_REDUCE", 1), ("STORAGE8", 1), ("GROUP_ORDER", 1))
    assert k.layout == "swar"
    assert k.blocks_per_workgroup == k.local_size[1]
    with pytest.raises(ValueError, match="variant"):
        K.choose_kernel("tiled", 1, 32, False, sub, variant=V("dot"))     # not enabled


def test_int64_variant_order():
    base = dict(subgroup_size=8, max_invocations=1024, max_shared_memory=32768)
    caps = K.DeviceCaps(**base, int64=True, integer_dot=True, storage8=True,
                        subgroup_arithmetic=True)
    assert names(caps.variants("tiled")) == ("int64", "portable", "dot", "storage8")
    assert names(caps.variants("cooperative")[:2]) == ("subgroup+int64", "subgroup")
    k = K.choose_kernel("tiled", 4, 32, False, caps)
    assert k.variant == V("int64") and k.layout == "swar64"
    assert k.defines == (("INT64_LOADS", 1),) and k.order == "blocks"
    fast_dot = K.DeviceCaps(**base, int64=True, integer_dot=True, dot_accelerated=True)
    assert fast_dot.variants("tiled")[0] == V("dot")


def test_texel_variant_order_and_defines():
    base = dict(subgroup_size=8, max_invocations=1024, max_shared_memory=32768,
                subgroup_arithmetic=True)
    caps = K.DeviceCaps(**base, int64=True, texel=True)
    assert names(caps.variants("tiled")) == ("texel+int64", "int64", "portable")
    assert names(caps.variants("cooperative")[:3]) == ("subgroup+texel+int64", "subgroup+int64",
                                                "subgroup")
    k = K.choose_kernel("tiled", 1, 32, False, caps)
    assert k.variant.texel and k.layout == "swar64"
    assert set(k.defines) == {("TEXEL_LOADS", 1), ("INT64_LOADS", 1)}
    assert not K.choose_kernel("tiled", 1, 32, False, caps, variant=V("int64")).variant.texel
    # texel loads reuse the int64 code: without 64-bit integers there is no texel variant
    assert not any(v.texel for v in K.DeviceCaps(**base, texel=True).variants("tiled"))


def test_texel_loads_need_texel_buffers_as_large_as_storage_buffers(device):
    import dataclasses
    info = device.info
    lim = dict(info.limits, max_storage_buffer_range=1 << 27)
    fits = dataclasses.replace(info, limits=dict(lim, max_texel_buffer_elements=1 << 23))
    small = dataclasses.replace(info, limits=dict(lim, max_texel_buffer_elements=65536))
    unknown = dataclasses.replace(info, limits={k: v for k, v in lim.items()
                                               if k != "max_texel_buffer_elements"})
    assert fits.supports("texelBufferLoads")
    assert not small.supports("texelBufferLoads")
    assert not unknown.supports("texelBufferLoads")


def test_caps_from_info_enable_nothing_by_default(device):
    stock = K.DeviceCaps.from_info(device.info)
    assert not stock.integer_dot and not stock.storage8
    assert {v.name for v in device.caps.variants("tiled")} <= {
        "portable", "dot", "storage8", "int64", "texel+int64"}


@pytest.mark.parametrize("name", ["portable", "int64", "texel+int64", "dot", "storage8",
                                  "subgroup", "subgroup+texel+int64", "subgroup+dot"])
def test_variant_names_round_trip(name):
    v = K.Variant.parse(name)
    assert v.name == name and str(v) == name and K.Variant.parse(v) is v


def test_variant_defines_and_layouts():
    assert K.Variant().defines == () and K.Variant().layout == "swar"
    v = V("subgroup+texel+int64")
    assert v.defines == (("SUBGROUP_REDUCE", 1), ("TEXEL_LOADS", 1), ("INT64_LOADS", 1))
    assert v.layout == "swar64" and V("dot").layout == "dot"


@pytest.mark.parametrize("bad,err", [("bogus", ValueError), ("int64+int64", ValueError),
                                     ("texel", ValueError), ("dot+int64", ValueError),
                                     ("", ValueError), (3, TypeError)])
def test_bad_variant_names_are_refused(bad, err):
    with pytest.raises(err, match="variant"):
        K.Variant.parse(bad)


def test_kernel_summary_names_its_choice():
    k = K.choose_kernel("tiled", 8, 32, False, LAVAPIPE)
    assert k.describe() == f"tiled portable tm={k.tm} local={list(k.local_size)} g=32"


def test_channel_blocks_per_invocation_are_searched_for_the_tiled_kernel_only():
    for caps in (LAVAPIPE, GPU32, SMALL):
        tiled = K.candidates("tiled", 512, 32, False, caps)
        assert {k.cb for k in tiled} == set(K.SPECS["tiled"].cbs)
        assert all(k.tm * 8 * k.cb <= K.TILE_OUTPUTS for k in tiled)
        assert {k.cb for k in K.candidates("cooperative", 512, 32, False, caps)} == {1}
    k = K.kernel_from_config({"algorithm": "tiled", "variant": "portable", "tm": 2,
                              "local_size": [8, 4], "cb": 4}, 8, 32, False, LAVAPIPE)
    assert k.cb == 4 and k.spec_constants[6] == 4 and "cb=4" in k.describe()
    assert K.kernel_config(k)["cb"] == 4
    # entries written before the field existed mean one block
    old = {"algorithm": "tiled", "variant": "portable", "tm": 2, "local_size": [8, 4]}
    assert K.kernel_from_config(old, 8, 32, False, LAVAPIPE).cb == 1
    for bad in ({**old, "cb": 3}, {**old, "cb": 8, "tm": 2},
                {**old, "algorithm": "cooperative", "cb": 2, "local_size": [8, 1]}):
        assert K.kernel_from_config(bad, 8, 32, False, LAVAPIPE) is None


def test_channel_blocks_shrink_the_grid_rounding_up():
    k = K.kernel_from_config({"algorithm": "tiled", "variant": "portable", "tm": 1,
                              "local_size": [8, 1], "cb": 4}, 1, 32, False, LAVAPIPE)
    # 24 blocks of 8 channels; 32 blocks a workgroup: one workgroup, partly idle
    assert k.grid(1, 192) == (1, 1, 1)
    assert k.grid(1, 512) == (2, 1, 1)


def test_untuned_gpu_kernels_hold_few_outputs_and_small_workgroups():
    """CPU only: on a GPU the untuned kernels accumulate at most 16 outputs an invocation
    (8 where subgroups are only ever 64 wide) and the subgroup GEMV's workgroup has at most
    256 invocations (the rule shader-stats' static report gave, docs/design.md); a CPU
    device keeps lavapipe's larger tiles."""
    from vkqlinear import policy
    rdna = K.DeviceCaps(subgroup_size=64, min_subgroup_size=32, max_invocations=1024,
                        max_shared_memory=65536, subgroup_arithmetic=True, int64=True,
                        integer_dot=True, dot_accelerated=True, device_type="discrete-gpu")
    gcn = K.DeviceCaps(**{**rdna.__dict__, "min_subgroup_size": 64, "dot_accelerated": False})
    cpu = K.DeviceCaps(**{**rdna.__dict__, "device_type": "cpu"})
    assert policy.max_tile_outputs(rdna) == 16 and policy.max_tile_outputs(gcn) == 8
    for caps, most in ((rdna, 16), (gcn, 8)):
        for t in (1, 2, 3, 8, 64, 512):
            for alg in ("tiled", "cooperative"):   # three registers an output
                k = K.choose_kernel(alg, t, 32, False, caps)
                assert k.tm * 8 * k.cb <= most and k.cb == 1
                x, y = k.local_size
                assert x * y <= 256 and K.fits(k, caps)
    assert K.choose_kernel("tiled", 512, 32, False, rdna).tm == 2
    assert K.choose_kernel("tiled", 512, 32, False, cpu).tm == 8
    assert K.choose_kernel("cooperative", 4, 32, False, cpu).local_size == (64, 16)


def test_untuned_shared_gemm_fits_registers_and_is_auto_on_every_gpu():
    """CPU only: the SHARED GEMM's untuned tile keeps its cached activations within 64
    registers and one accumulator per output (at most 128), grows to CB = 2 only for a grid
    that fills a GPU with it, halves where the compiler allows few registers (Mesa 22.3 on
    RDNA3), and keeps 4 token tiles a workgroup where t has them; auto runs it above the
    threshold on every GPU: with OpSDot where the driver accelerates it, else SWAR with
    the TILED GEMM's outputs an invocation twice (emulated OpSDot offered last)."""
    from vkqlinear import policy
    rdna = K.DeviceCaps(subgroup_size=64, min_subgroup_size=32, max_invocations=1024,
                        max_shared_memory=65536, subgroup_arithmetic=True, int64=True,
                        integer_dot=True, dot_accelerated=True, device_type="discrete-gpu")
    for g in (8, 32, 64, 128, 256, 4376):
        so = K.SharedSpec.stage_octets(g)
        assert (g // 8) % so == 0 and so <= 8
        for t in (1, 5, 8, 16, 64, 512, 4096):
            for n in (None, 64, 4096, 16384):
                k = K.choose_kernel("shared", t, g, False, rdna, n=n)
                assert 2 * k.tm * so <= 64 and k.tm * 8 * k.cb <= 128 and K.fits(k, rdna)
                assert k.local_size[1] >= 4
                if k.cb == 2:
                    tiles = -(-n // (8 * 2 * 16)) * -(-t // (k.tm * k.local_size[1]))
                    assert tiles >= K.SharedSpec.WIDE_WORKGROUPS
    assert K.choose_kernel("shared", 4096, 32, False, rdna, n=16384).cb == 2
    assert K.choose_kernel("shared", 512, 32, False, rdna, n=4096).cb == 1
    few = K.DeviceCaps(**{**rdna.__dict__, "register_limit": 128})
    k = K.choose_kernel("shared", 4096, 32, False, few, n=16384)
    assert (k.tm, k.cb) == (4, 1)
    assert K.choose_kernel("auto", 5, 32, False, rdna).algorithm == "shared"
    assert K.choose_kernel("auto", 4, 32, False, rdna).algorithm == "cooperative"
    cpu = K.DeviceCaps(**{**rdna.__dict__, "device_type": "cpu", "dot_accelerated": False})
    assert K.choose_kernel("auto", 64, 32, False, cpu).algorithm == "tiled"
    assert K.choose_kernel("shared", 64, 32, False, cpu).algorithm == "shared"
    slow = K.DeviceCaps(**{**rdna.__dict__, "dot_accelerated": False})
    assert [v.name for v in slow.variants("shared")] == ["int64", "portable", "dot"]
    gcn = K.DeviceCaps(**{**slow.__dict__, "min_subgroup_size": 64})
    for caps, most in ((slow, 4), (gcn, 2)):
        for t in (5, 16, 64, 512, 4096):
            k = K.choose_kernel("auto", t, 32, False, caps, n=4096)
            assert (k.algorithm, k.variant.name, k.cb) == ("shared", "int64", 1)
            assert k.tm == min(most, max(1, t // 4)) and K.fits(k, caps)
    assert K.candidates("shared", 64, 32, False, slow)[0].variant.name == "int64"
    # a forced variant the SHARED GEMM lacks (or every one failing the self-check): auto's
    # GEMM is the TILED one
    assert K.choose_kernel("auto", 64, 32, False, dataclasses.replace(rdna, storage8=True),
                           variant=K.Variant(storage8=True)).algorithm == "tiled"
    assert K.choose_kernel("auto", 64, 32, False, rdna,
                           variant=K.Variant(int64=True)).algorithm == "shared"
    failed = frozenset(("shared", v) for v in rdna.variants("shared"))
    assert K.choose_kernel("auto", 64, 32, False,
                           dataclasses.replace(rdna, excluded=failed)).algorithm == "tiled"
    assert policy.gemm_algorithm(rdna) == "shared"
