"""Device listing, selection, the capability report, and missing-Vulkan faults."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest

import vkqlinear as vq
from vkqlinear import device as devmod

from .test_tuning import fake_info


@pytest.mark.usefixtures("device")
def test_devices_lists_devices_with_limits():
    infos = vq.devices()
    assert infos and all(isinstance(d, vq.DeviceInfo) for d in infos)
    d = infos[0]
    lim = d.limits
    for key in ("max_workgroup_size", "max_workgroup_invocations", "max_shared_memory",
                "max_storage_buffer_range", "timestamp_period_ns", "max_workgroup_count"):
        assert key in lim
    assert lim["max_workgroup_invocations"] >= 128
    assert lim["max_shared_memory"] >= 16384
    assert lim["timestamp_period_ns"] > 0
    assert d.subgroup["size"] >= 1
    assert d.type in ("discrete-gpu", "integrated-gpu", "virtual-gpu", "cpu", "other")
    if os.environ.get("CI"):
        assert any(x.is_lavapipe for x in infos), "CI runs on lavapipe"


def test_the_probe_reads_every_device_alike_under_memory_churn(device):
    """The probe reads a device's name and limits from a struct that stays alive: read
    again and again with the freed memory reused in between, it reads the same device
    (it read an empty name and zero limits about one time in a hundred when it kept a
    view into a freed struct)."""
    import gc

    import vulkan as vk

    from vkqlinear import _probe
    app = vk.VkApplicationInfo(pApplicationName="t", apiVersion=vk.VK_MAKE_VERSION(1, 1, 0))
    inst = vk.vkCreateInstance(vk.VkInstanceCreateInfo(pApplicationInfo=app), None)
    try:
        pd = vk.vkEnumeratePhysicalDevices(inst)[device.index]
        seen = set()
        for _ in range(400):
            d = _probe._device(vk, device.index, pd)
            seen.add((d["name"], d["limits"]["max_storage_buffer_range"],
                      d["limits"]["max_workgroup_invocations"]))
            gc.collect()
            churn = [vk.ffi.new("char[]", b"\xff" * 900) for _ in range(50)]
            del churn
    finally:
        vk.vkDestroyInstance(inst, None)
    assert seen == {(device.info.name, device.info.limits["max_storage_buffer_range"],
                     device.info.limits["max_workgroup_invocations"])}


def test_capabilities_supported_and_enabled(device):
    caps = device.capabilities()
    for f in devmod.FEATURES:
        assert set(caps[f]) == {"supported", "enabled", "what", "avoided"}
        assert not caps[f]["enabled"] or caps[f]["supported"]   # enabled implies supported
        assert not (caps[f]["enabled"] and caps[f]["avoided"])   # a driver quirk disables
    assert caps["subgroupSize"] == device.info.subgroup["size"]


def test_lavapipe_supports_and_enables_every_feature(device):
    """lavapipe supports every optional feature; the patched kp of tools/setup.sh
    enables them, but for those its version's quirks rule out (vkqlinear.policy)."""
    if not device.info.is_lavapipe:
        pytest.skip(f"{device.name} is not lavapipe")
    caps = device.capabilities()
    assert all(caps[f]["supported"] for f in devmod.FEATURES)
    assert all(caps[f]["enabled"] != bool(caps[f]["avoided"]) for f in devmod.FEATURES)


@pytest.mark.usefixtures("device")
def test_stock_kompute_enables_nothing(monkeypatch):
    """Where kp lacks the patch (no Manager.enabled_features), nothing counts as enabled."""
    class StockManager:
        def __init__(self, index):
            self.index = index

        def destroy(self):
            pass

    class FakeKp:
        Manager = StockManager
    monkeypatch.setattr(devmod, "_import_kp", lambda: FakeKp)
    dev = vq.Device()
    caps = dev.capabilities()
    for f in ("storageBuffer8BitAccess", "shaderInt8", "shaderIntegerDotProduct",
              "shaderInt64", "texelBufferLoads"):
        assert caps[f]["enabled"] is False
    dev.close()


def test_wait_mode(monkeypatch, device):
    """Device(wait=...): "auto" yields on a CPU device and blocks on any other; an
    explicit mode is kept; a kp without the patch's item 8 blocks whatever was asked;
    bad modes name the argument."""
    import dataclasses
    if device.info.type != "cpu":
        pytest.skip(f"{device.name} is not a CPU device: 'auto' blocks there (checked below "
                    "with a made-up GPU on lavapipe)")
    with vq.Device() as dev:
        assert dev.wait == "yield" and dev.yield_ns == devmod.YIELD_NS
        dev.wait = "block"
        assert dev.wait == "block" and dev.yield_ns == 0
        dev.wait = "auto"
        assert dev.wait == "yield"
        with pytest.raises(TypeError, match="wait"):
            dev.wait = None
        with pytest.raises(ValueError, match="wait"):
            dev.wait = "spin"
        assert dev.wait == "yield"             # a refused mode changes nothing
    with vq.Device(wait="block") as dev:
        assert dev.wait == "block"
    with pytest.raises(ValueError, match="wait"):
        vq.Device(wait="sleep")
    gpu = dataclasses.replace(vq.devices()[0], type="discrete-gpu")
    monkeypatch.setattr(devmod, "devices", lambda: [gpu])
    with vq.Device() as dev:
        assert dev.wait == "block"
        dev.wait = "yield"
        assert dev.wait == "yield"
    import kp
    monkeypatch.setattr(kp, "vkqlinear_patch", 7, raising=False)
    with vq.Device(wait="yield") as dev:
        assert dev.wait == "block"


@pytest.mark.usefixtures("device")
def test_device_selection(monkeypatch):
    n = len(vq.devices())
    monkeypatch.setenv("VKQLINEAR_DEVICE", "0")
    assert devmod.select_index(None, vq.devices()) == 0
    monkeypatch.setenv("VKQLINEAR_DEVICE", "nope")
    with pytest.raises(ValueError, match="VKQLINEAR_DEVICE"):
        devmod.select_index(None, vq.devices())
    monkeypatch.delenv("VKQLINEAR_DEVICE")
    with pytest.raises(ValueError, match="index"):
        vq.Device(n + 3)
    with pytest.raises(TypeError, match="index"):
        vq.Device("0")


def test_best_gpu_preferred_over_cpu():
    def info(i, t):
        return dataclasses.replace(fake_info(), index=i, type=t)
    assert devmod.select_index(None, [info(0, "cpu"), info(1, "integrated-gpu"),
                                 info(2, "discrete-gpu")]) == 2
    assert devmod.select_index(None, [info(0, "cpu"), info(1, "virtual-gpu")]) == 1
    assert devmod.select_index(None, [info(0, "cpu")]) == 0


def _run_without_vulkan(code):
    env = dict(os.environ, VK_ICD_FILENAMES="/nonexistent/icd.json",
               VK_DRIVER_FILES="/nonexistent/icd.json")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_no_vulkan_driver_gives_clear_error_not_a_crash():
    p = _run_without_vulkan("""
        import vkqlinear as vq
        try:
            vq.devices()
        except vq.VulkanUnavailableError as e:
            print("ERR", e)
    """)
    assert p.returncode == 0, p.stderr
    assert "ERR" in p.stdout and "apt-get install" in p.stdout


@pytest.mark.parametrize("first", ["op", "layer"])
def test_without_vulkan_ops_and_qlinear_behave_alike(first):
    """No Vulkan device: for every algorithm, the ops and QLinear do the same thing.
    "auto" falls back to the reference path, warning once a process (at the caller's
    line); "reference" runs; "tiled" and "cooperative" raise VulkanUnavailableError."""
    p = _run_without_vulkan(f"FIRST = {first!r}\n" + textwrap.dedent("""
        import warnings, numpy as np, vkqlinear as vq
        from vkqlinear.kernels import ALGORITHMS
        x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
        w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 16)
        x_q, xs, xz = vq.quantize_per_token(x)
        wp, ws, wz = vq.quantize_weights(w, 8)
        layer = vq.QLinear.from_quantized(wp, 8, ws, wz)
        ref_op = vq.linear_qta8a_qga4w(x_q, xs, xz, wp, 8, ws, wz, algorithm="reference")
        ref_layer = layer(x, algorithm="reference")
        runs = [("op", lambda: vq.linear_qta8a_qga4w(x_q, xs, xz, wp, 8, ws, wz,
                                                     algorithm=alg), ref_op),
                ("layer", lambda: layer(x, algorithm=alg), ref_layer)]
        for alg in ALGORITHMS:
            for name, run, ref in sorted(runs, key=lambda r: r[0] != FIRST):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        y = run()
                        what = "same" if np.array_equal(y, ref) else "DIFFERENT"
                    except vq.VulkanUnavailableError:
                        what = "raised"
                print(alg, name, what, len(caught),
                      all(c.filename == "<string>" for c in caught))
    """))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split("\n")
    second = "layer" if first == "op" else "op"
    assert f"auto {first} same 1 True" in lines         # the warning names the caller
    assert f"auto {second} same 0 True" in lines        # once a process
    for name in ("op", "layer"):
        assert f"reference {name} same 0 True" in lines
        assert f"tiled {name} raised 0 True" in lines
        assert f"cooperative {name} raised 0 True" in lines


@pytest.mark.usefixtures("device")
def test_info_cli_names_device_and_features(capsys):
    from vkqlinear.__main__ import main
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert vq.devices()[0].name in out
    assert "shaderIntegerDotProduct" in out and "supported=" in out and "enabled=" in out
    reports = "VK_KHR_pipeline_executable_properties" in vq.devices()[0].extensions
    assert ("pipeline statistics (registers, spills; shader-stats --device 0): " +
            ("reported" if reports else "not reported by this driver")) in out


def test_auto_asks_the_tuning_file_at_most_once_a_recheck(device, tfile, monkeypatch):
    """auto asks for the tuning state on every call; the file is looked at (a stat) at
    most once in RECHECK_S, and at once after this process writes it."""
    from vkqlinear import tuning
    looked = []
    real = tuning._stamp
    monkeypatch.setattr(tuning, "_stamp", lambda path: looked.append(1) or real(path))
    monkeypatch.setattr(tuning, "RECHECK_S", 3600.0)
    tuning._memo.clear()
    first = device.tuning_state()
    assert device.tuning_state() == first and len(looked) == 1
    tuning.store_threshold(device.info, 5)
    n = len(looked)                                      # the store found the file too
    assert device.tuning_state() != first and len(looked) == n + 1
    later = tuning.time.monotonic() + 3601.0               # the recheck is due: looks again
    monkeypatch.setattr(tuning.time, "monotonic", lambda: later)
    device.tuning_state()
    assert len(looked) == n + 2
