"""The driver-quirk table (vkqlinear.policy) and the reproducer of each quirk.

The reproducer runs on the test's device in processes of its own, with the table and the
self-check off and a new, empty driver shader cache, and must agree with the table: wrong
where the table says the driver is faulty, right everywhere else. So the table cannot
keep a quirk a driver no longer has, nor miss one on a driver that CI runs."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import vkqlinear as vq
from vkqlinear import policy

REPRO = Path(__file__).with_name("repro_texel_width_switch.py")


def reproducer_right(device_index):
    """Whether the device runs a texel-buffer kernel right from a shader cache that a run
    at another LP_NATIVE_VECTOR_WIDTH filled (the reproducer's verdict)."""
    proc = subprocess.run([sys.executable, str(REPRO), str(device_index)],
                          capture_output=True, text=True, timeout=900)
    verdict = [line for line in proc.stdout.splitlines() if line in ("right", "wrong")]
    assert proc.returncode == 0 and verdict, \
        f"the reproducer printed no verdict (exit {proc.returncode}): " \
        f"{proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    return verdict[-1] == "right"


def test_the_reproducer_agrees_with_the_table(device):
    if not device.info.is_lavapipe:
        pytest.skip(f"{device.name} is not lavapipe: the quirk is lavapipe's vector width")
    import kp
    if not hasattr(kp.Algorithm, "set_next_texel_formats"):
        pytest.skip("this kp cannot bind texel buffers (tools/setup.sh builds one that can)")
    if not device.info.supports("texelBufferLoads"):
        pytest.skip(f"{device.name} cannot read uniform texel buffers")
    right = reproducer_right(device.index)
    quirk = policy.avoided(device.info, "texelBufferLoads", environ={})
    driver = f"{device.info.driver_name} {device.info.driver_info}"
    if quirk is None:
        assert right, (f"{driver} runs texel kernels wrong after a vector width switch, "
                       "and vkqlinear.policy does not know: add a quirk for it")
    else:
        assert not right, (f"{driver} runs texel kernels right after a vector width "
                           f"switch: the quirk {quirk.why!r} no longer applies; narrow its "
                           "versions")


def _info(driver_name="llvmpipe", driver_info="Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)"):
    from vkqlinear.device import DeviceInfo
    return DeviceInfo(index=0, name="llvmpipe (LLVM 15.0.6, 256 bits)", type="cpu",
                      vendor_id=0x10005, device_id=0, api_version="1.4.305",
                      driver_version=1, driver_name=driver_name, driver_info=driver_info,
                      limits={}, memory_heaps=[], subgroup={}, features={}, extensions=[])


@pytest.mark.parametrize("driver_info, version", [
    ("Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)", (25, 0, 7)),
    ("Mesa 22.3.6 (LLVM 15.0.6)", (22, 3, 6)),
    ("Mesa 24.1", (24, 1, 0)),
    ("Mesa 23.2.1-1ubuntu3.1~22.04.2", (23, 2, 1)),
    ("NVIDIA 550.54", None),
    ("", None),
])
def test_mesa_version(driver_info, version):
    assert policy.mesa_version(_info(driver_info=driver_info)) == version


def test_texel_loads_are_avoided_on_lavapipe_after_22_3_only():
    texel = "texelBufferLoads"
    assert policy.avoided(_info(driver_info="Mesa 25.0.7 (LLVM 15.0.6)"), texel, {})
    assert policy.avoided(_info(driver_info="Mesa 23.0.0"), texel, {})
    assert policy.avoided(_info(driver_info="Mesa 22.3.6 (LLVM 15.0.6)"), texel, {}) is None
    assert policy.avoided(_info(driver_name="radv", driver_info="Mesa 25.0.7"), texel,
                          {}) is None
    assert policy.avoided(_info(driver_info="Mesa 25.0.7"), "shaderInt64", {}) is None
    # the table can be turned off, and a bad setting is refused by name
    assert policy.avoided(_info(), texel, {policy.QUIRKS_ENV: "ignore"}) is None
    with pytest.raises(ValueError, match=policy.QUIRKS_ENV):
        policy.quirks(_info(), {policy.QUIRKS_ENV: "off"})


def test_a_quirk_removes_the_variants_that_need_its_feature(device, monkeypatch):
    """The device treats an avoided feature as not enabled: no kernel variant needs it."""
    if not device.enabled("shaderInt64"):
        pytest.skip("the device has no 64-bit integers: no texel variant to remove")
    quirk = policy.Quirk(device.info.driver_name, (0,), None, "texelBufferLoads", "test")
    monkeypatch.setattr(policy, "QUIRKS", (quirk,))
    monkeypatch.setattr(policy, "mesa_version", lambda info: (1, 0, 0))
    dev = vq.Device(device.index)
    try:
        assert dev.avoided("texelBufferLoads") == "test"
        assert not dev.capabilities()["texelBufferLoads"]["enabled"]
        for alg in ("tiled", "cooperative"):
            assert not any(v.texel for v in dev.caps.variants(alg))
    finally:
        dev.close()
    # and not outside its versions
    assert not replace(quirk, before=(1, 0, 0)).applies(dev.info)


def test_the_policy_holds_the_untuned_defaults():
    """auto's threshold by driver and the wait mode by device type live in the policy."""
    from vkqlinear import tuning
    from vkqlinear.device import Device
    assert tuning.BUILTIN_THRESHOLDS is policy.AUTO_THRESHOLDS
    assert policy.builtin_wait(_info()) == "yield"
    gpu = replace(_info(driver_name="radv"), type="discrete-gpu")
    assert policy.builtin_wait(gpu) == "block"
    assert Device.builtin_wait.fget(type("D", (), {"info": gpu})()) == "block"


@pytest.mark.parametrize("name, driver_info, limit", [
    ("Null hardware (RADV GFX1100)", "Mesa 22.3.6", 128),
    ("AMD Radeon RX 7900 XTX (RADV NAVI31)", "Mesa 22.3.6", 128),
    ("AMD Radeon RX 7900 XTX (RADV NAVI31)", "Mesa 23.0.0", None),
    ("Null hardware (RADV NAVI31)", "Mesa 25.0.7-2~bpo12+1", None),
    ("AMD Radeon RX 6800 (RADV NAVI21)", "Mesa 22.3.6", None),
])
def test_register_limit_by_compiler(name, driver_info, limit):
    """Mesa 22.3's RDNA3 backend gives a shader at most 132 VGPRs (shader-stats): the
    SHARED GEMM's untuned tile halves there, and only there."""
    info = replace(_info(driver_name="radv", driver_info=driver_info), name=name,
                   type="discrete-gpu")
    assert policy.register_limit(info) == limit
    assert policy.register_limit(replace(info, driver_name="amdvlk")) is None
