"""Kernel choice is data: checked without a GPU."""

import json

import pytest

from vkqlinear import kernels as K

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
        assert k.spec_constants == (x, y, 32, k.lanes, k.tm, 0)
        if alg == "cooperative":
            assert y & (y - 1) == 0                        # workers: a power of two
            assert x * y * k.tm * 8 * 4 <= caps.max_shared_memory


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


def test_tuning_file_round_trip(tmp_path, monkeypatch):
    from vkqlinear import devices
    monkeypatch.setenv("VKQLINEAR_TUNING_FILE", str(tmp_path / "t.json"))
    info = devices()[0]
    builtin = K.BUILTIN_THRESHOLDS.get(info.driver_name, K.DEFAULT_AUTO_THRESHOLD)
    assert K.auto_threshold(info) == builtin
    path = K.store_threshold(info, 17, {"measured": "test"})
    assert K.auto_threshold(info) == 17
    data = json.loads(path.read_text())
    assert data[K.device_key(info)]["measured"] == "test"
    (tmp_path / "t.json").write_text("{broken")
    assert K.auto_threshold(info) == builtin


def test_cooperative_variants():
    sub = K.DeviceCaps(subgroup_size=32, max_invocations=1024, max_shared_memory=32768,
                       subgroup_arithmetic=True)
    k = K.choose_kernel("cooperative", 1, 32, False, sub)
    assert k.variant == "subgroup"
    assert k.defines == (("SUBGROUP_REDUCE", 1), ("GROUP_ORDER", 1)) and k.order == "groups"
    assert k.local_size[0] == 32 and k.blocks_per_workgroup == k.local_size[1]
    assert k.lanes == 32                 # the groups order interleaves by the workers
    small = K.choose_kernel("cooperative", 1, 32, False, K.DeviceCaps(
        subgroup_size=4, max_invocations=128, subgroup_arithmetic=True))
    assert small.local_size[0] == small.lanes == 4
    assert small.blocks_per_workgroup <= small.lanes   # NP (8 * lanes) holds whole workgroups
    assert k.local_size[0] * k.local_size[1] <= sub.max_invocations
    p = K.choose_kernel("cooperative", 1, 32, False, sub, variant="portable")
    assert p.variant == "portable" and p.defines == () and p.order == "blocks"
    assert p.blocks_per_workgroup == p.local_size[0]
    # no subgroup arithmetic: only the shared-memory reduction, and forcing it is an error
    assert K.choose_kernel("cooperative", 1, 32, False, LAVAPIPE).variant == "portable"
    with pytest.raises(ValueError, match="variant"):
        K.choose_kernel("cooperative", 1, 32, False, LAVAPIPE, variant="subgroup")
    with pytest.raises(ValueError, match="variant"):
        K.choose_kernel("tiled", 1, 32, False, sub, variant="subgroup")


def test_feature_variants_only_where_enabled():
    base = dict(subgroup_size=8, max_invocations=1024, max_shared_memory=32768)
    assert K.DeviceCaps(**base).variants("tiled") == ("portable",)
    dot = K.DeviceCaps(**base, integer_dot=True)
    assert dot.variants("tiled") == ("portable", "dot")          # not accelerated: SWAR first
    fast = K.DeviceCaps(**base, integer_dot=True, dot_accelerated=True, storage8=True)
    assert fast.variants("tiled") == ("dot", "portable", "storage8")
    k = K.choose_kernel("tiled", 8, 32, False, fast)
    assert k.variant == "dot" and k.defines == (("DOT_PRODUCT", 1),) and k.layout == "dot"
    sub = K.DeviceCaps(**base, subgroup_arithmetic=True, storage8=True)
    assert sub.variants("cooperative") == ("subgroup", "subgroup+storage8", "portable",
                                           "storage8")
    k = K.choose_kernel("cooperative", 1, 32, True, sub, variant="subgroup+storage8")
    assert k.defines == (("SUBGROUP_REDUCE", 1), ("STORAGE8", 1), ("GROUP_ORDER", 1))
    assert k.layout == "swar"
    assert k.blocks_per_workgroup == k.local_size[1]
    with pytest.raises(ValueError, match="variant"):
        K.choose_kernel("tiled", 1, 32, False, sub, variant="dot")     # not enabled


def test_int64_variant_order():
    base = dict(subgroup_size=8, max_invocations=1024, max_shared_memory=32768)
    caps = K.DeviceCaps(**base, int64=True, integer_dot=True, storage8=True,
                        subgroup_arithmetic=True)
    assert caps.variants("tiled") == ("int64", "portable", "dot", "storage8")
    assert caps.variants("cooperative")[:2] == ("subgroup+int64", "subgroup")
    k = K.choose_kernel("tiled", 4, 32, False, caps)
    assert k.variant == "int64" and k.layout == "swar64"
    assert k.defines == (("INT64_LOADS", 1),) and k.order == "blocks"
    fast_dot = K.DeviceCaps(**base, int64=True, integer_dot=True, dot_accelerated=True)
    assert fast_dot.variants("tiled")[0] == "dot"


def test_texel_variant_order_and_defines():
    base = dict(subgroup_size=8, max_invocations=1024, max_shared_memory=32768,
                subgroup_arithmetic=True)
    caps = K.DeviceCaps(**base, int64=True, texel=True)
    assert caps.variants("tiled") == ("texel+int64", "int64", "portable")
    assert caps.variants("cooperative")[:3] == ("subgroup+texel+int64", "subgroup+int64",
                                                "subgroup")
    k = K.choose_kernel("tiled", 1, 32, False, caps)
    assert k.texel_loads and k.layout == "swar64"
    assert set(k.defines) == {("TEXEL_LOADS", 1), ("INT64_LOADS", 1)}
    assert not K.choose_kernel("tiled", 1, 32, False, caps, variant="int64").texel_loads
    # texel loads reuse the int64 code: without 64-bit integers there is no texel variant
    assert "texel" not in "".join(K.DeviceCaps(**base, texel=True).variants("tiled"))


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
    assert set(K.DeviceCaps.from_device(device).variants("tiled")) <= {
        "portable", "dot", "storage8", "int64", "texel+int64"}


def test_variant_env_override(monkeypatch):
    sub = K.DeviceCaps(subgroup_size=8, max_invocations=1024, max_shared_memory=32768,
                       subgroup_arithmetic=True)
    monkeypatch.setenv("VKQLINEAR_VARIANT", "portable")
    assert K.choose_kernel("cooperative", 2, 32, False, sub).variant == "portable"
    monkeypatch.setenv("VKQLINEAR_VARIANT", "bogus")
    with pytest.raises(ValueError, match="variant"):
        K.choose_kernel("cooperative", 2, 32, False, sub)


def test_open_device_rechecks_the_tuning_file(tmp_path, monkeypatch, device):
    """auto's threshold on an open device: at once after store_threshold, within
    SETTINGS_RECHECK_S after another process changed the file."""
    monkeypatch.setenv("VKQLINEAR_TUNING_FILE", str(tmp_path / "t.json"))
    monkeypatch.setattr(device, "settings_memo", None)

    def auto(t):
        return K.kernel_for_device(device, "auto", t, 32, False).algorithm
    K.store_threshold(device.info, 5)
    assert (auto(5), auto(6)) == ("cooperative", "tiled")
    K.store_threshold(device.info, 7)                 # this process: seen at once
    assert auto(6) == "cooperative"
    data = json.loads((tmp_path / "t.json").read_text())
    data[K.device_key(device.info)]["auto_threshold"] = 1000
    (tmp_path / "t.json").write_text(json.dumps(data))  # "another process"
    monkeypatch.setattr(K, "SETTINGS_RECHECK_S", 3600.0)
    assert auto(100) == "tiled"                      # not re-checked yet
    monkeypatch.setattr(K, "SETTINGS_RECHECK_S", 0.0)
    assert auto(100) == "cooperative"


def test_open_device_rereads_the_variant(monkeypatch, device):
    """$VKQLINEAR_VARIANT on an open device: at once inside forced_variant, within
    SETTINGS_RECHECK_S after a plain change of the environment."""
    from vkqlinear.conformance import forced_variant
    monkeypatch.delenv("VKQLINEAR_VARIANT", raising=False)
    monkeypatch.setattr(device, "settings_memo", None)
    default, *others = device.caps.variants("tiled")
    if not others:
        pytest.skip("one tiled variant on this device: nothing to force")
    other = others[-1]

    def chosen():
        return K.kernel_for_device(device, "tiled", 1, 32, False).variant
    assert chosen() == default
    with forced_variant(other):
        assert chosen() == other
    assert chosen() == default
    monkeypatch.setattr(K, "SETTINGS_RECHECK_S", 3600.0)
    monkeypatch.setenv("VKQLINEAR_VARIANT", other)
    assert chosen() == default                       # not re-read yet
    monkeypatch.setattr(K, "SETTINGS_RECHECK_S", 0.0)
    assert chosen() == other
