"""Real model sizes: layers split along N to fit a binding (bit for bit the same result),
the device memory the library holds, and what happens when it runs out."""

import dataclasses
import gc

import numpy as np
import pytest

import vkqlinear as vq
from vkqlinear import device as devmod
from vkqlinear.layout import split_channels

from .conftest import make_layer


def test_split_channels_covers_n_in_whole_blocks_that_fit():
    for n, k, g, lanes, t, limit in [(1000, 256, 32, 8, 3, 40_000), (128256, 4096, 32, 8, 1,
                                                                      1 << 27),
                                     (300, 64, 8, 16, 1, 8192), (64, 64, 32, 8, 1, 1 << 20)]:
        pieces = split_channels(n, k, g, lanes, t, 4, limit)
        assert pieces[0][0] == 0 and pieces[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
        blk = 8 * lanes
        for n0, n1 in pieces[:-1]:
            assert n0 % blk == 0 and (n1 - n0) % blk == 0
        for n0, n1 in pieces:
            n_padded = -(-(n1 - n0) // blk) * blk
            assert max(n_padded * k // 2, n_padded * (k // g) * 4, t * n_padded * 4) <= limit
    assert len(split_channels(128256, 4096, 32, 8, 1, 4, 1 << 27)) == 2   # 250 MiB of units


@pytest.fixture
def small_binding(monkeypatch, device):
    """A device whose bindings hold 8 KiB (the documented setting, read at open): at
    K = 128 a block of 8 x lanes channels fits one binding at up to 16 lanes."""
    monkeypatch.setenv("VKQLINEAR_MAX_BINDING_BYTES", "8192")
    with vq.Device() as dev:
        yield dev


@pytest.mark.parametrize("algorithm", ["tiled", "cooperative"])
def test_split_layer_equals_the_unsplit_one_bit_for_bit(rng, device, small_binding, algorithm):
    d = make_layer(rng, 5, 128, 300, 32)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
    x = (d["x_q"], d["x_scale"], d["x_zero_point"])
    b = rng.standard_normal(300).astype(np.float32)
    os_, oz = np.full(5, 0.1, np.float32), np.arange(5, dtype=np.int32)
    for variant in [v.name for v in device.caps.variants(algorithm)]:
        kw = dict(algorithm=algorithm, variant=variant)
        whole = vq.linear_qta8a_qga4w(*x, qw, bias=b, device=device, **kw)
        split = vq.linear_qta8a_qga4w(*x, qw, bias=b, device=small_binding, **kw)
        np.testing.assert_array_equal(split, whole, err_msg=variant)
        split8 = vq.linear_qta8a_qga4w_qta8o(*x, qw, out_scale=os_, out_zero_point=oz,
                                             device=small_binding, **kw)
        whole8 = vq.linear_qta8a_qga4w_qta8o(*x, qw, out_scale=os_, out_zero_point=oz,
                                             device=device, **kw)
        np.testing.assert_array_equal(split8, whole8, err_msg=variant)
    calls = vq.DeviceLinear.of(qw, small_binding).calls
    assert calls and all(c.pieces > 1 for c in calls)
    # float in, quantized on the device, bias on then off: the same
    xf = rng.standard_normal((5, 128)).astype(np.float32)
    for bias in (b, None):
        whole = vq.QLinear(qw, bias, device)(xf, algorithm=algorithm)
        np.testing.assert_array_equal(vq.QLinear(qw, bias, small_binding)(xf,
                                                                          algorithm=algorithm),
                                      whole)


class _Manager:
    """A device's Kompute manager, with its tensor_t watched or refused."""

    def __init__(self, mgr, on_tensor):
        self._mgr, self._on_tensor = mgr, on_tensor

    def tensor_t(self, data, *args):
        self._on_tensor(data)
        return self._mgr.tensor_t(data, *args)

    def __getattr__(self, name):
        return getattr(self._mgr, name)


def _watch_manager(monkeypatch, on_tensor):
    real = devmod.Device.manager
    monkeypatch.setattr(devmod.Device, "manager",
                        property(lambda self: _Manager(real.fget(self), on_tensor)))


def test_split_respects_the_limit_it_is_given(rng, device, small_binding, monkeypatch):
    sizes = []
    _watch_manager(monkeypatch, lambda data: sizes.append(data.nbytes))
    d = make_layer(rng, 3, 128, 300, 32)
    y = vq.linear_qta8a_qga4w(**d, algorithm="tiled", device=small_binding)
    assert len(sizes) > 8 and max(sizes) <= 8192
    np.testing.assert_allclose(y, vq.linear_qta8a_qga4w(**d, algorithm="reference"),
                               rtol=1e-5, atol=1e-5)


def test_a_split_layer_cannot_keep_its_output_on_the_device(rng, small_binding):
    layer = vq.QLinear.from_float(rng.standard_normal((300, 128)).astype(np.float32),
                                  device=small_binding)
    with pytest.raises(ValueError, match="output: 'device'.*split"):
        layer(rng.standard_normal((2, 128)).astype(np.float32), output="device")
    assert layer(rng.standard_normal((2, 128)).astype(np.float32)).shape == (2, 300)


def test_memory_used_counts_what_is_held_and_drops_with_it(rng, device):
    with vq.Device() as dev:
        assert dev.memory_used() == 0
        d = make_layer(rng, 2, 256, 64, 32)
        qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"], device=dev)
        resident = dev.memory_used()
        assert resident >= 64 * 256 // 2            # at least the packed weights
        vq.linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], qw, device=dev)
        assert dev.memory_used() > resident          # plus a recorded call's tensors
        del qw
        gc.collect()
        assert dev.memory_used() == 0
    assert dev.memory_used() == 0


@pytest.mark.usefixtures("device")
@pytest.mark.parametrize("algorithm", ["tiled", "shared", "cooperative"])
def test_symmetric_weights_hold_no_offsets_and_stay_right(rng, algorithm):
    """Where every offset is 0, or an integer zero point in [-8, 7] (held in the nibble
    sums' top bits), no offsets are uploaded (nor read): the layer holds N x G x 4 bytes
    less (less a 16-byte placeholder) than with one float offset; in the OpSDot kernels'
    layout symmetric weights and float offsets hold no nibble sums either (the kernels
    form them), integer zero points N x G x 2 bytes of them; and the results are the
    reference's within the contract. (N: the channels padded to the layout's
    interleave.)"""
    from vkqlinear import conformance as C
    n, k, g = 64, 256, 32
    d = make_layer(rng, 3, k, n, g, symmetric=True)
    assert not d["w_zeros"].any()
    with vq.Device() as dev:
        held = {}
        for name, kind in (("symmetric", 0), ("one zero point", 2), ("one float offset", 1)):
            zeros = d["w_zeros"].copy()
            offsets = -d["w_scales"] * zeros.astype(np.float32)
            if name != "symmetric":
                zeros[5, 3] = 1
                offsets[5, 3] = -d["w_scales"][5, 3] * (1 if kind == 2 else 0.5)
            qw = vq.prepack(d["w_packed"], g, d["w_scales"], w_offsets=offsets)
            before = dev.memory_used()
            dl = vq.DeviceLinear.of(qw, dev)
            buf = dl.buffers(dl.kernel(algorithm, 3))
            dl_layout = dl.kernel(algorithm, 3).layout
            held[name] = dev.memory_used() - before
            n_padded = buf.pieces[0][2]                  # channels padded to the layout's lanes
            assert buf.offsets == qw.offset_kind == kind
            out = vq.linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], qw,
                                        algorithm=algorithm, device=dev)
            ok, msg = C.check(out, dict(d, w_zeros=None, w_offsets=offsets))
            assert ok, f"{name}: {msg}"
            del dl, qw, buf
            gc.collect()
        formed = dl_layout == "dot"       # sums formed by the kernels, but for zero points
        assert held["one zero point"] - held["symmetric"] == formed * (n_padded * (k // g) * 2 - 16)
        assert held["one float offset"] - held["symmetric"] == n_padded * (k // g) * 4 - 16


@pytest.mark.usefixtures("device")
def test_out_of_memory_is_a_clear_error_and_resident_layers_keep_working(rng, monkeypatch):
    """Upload layers (and call each once) until the budget is exhausted (here a 1 MiB
    heap): the next upload or call is a DeviceMemoryError naming what was asked for and
    what is resident; the layers already resident still give the right answers; dropping
    some makes room again."""
    info = vq.devices()[0]
    tiny = dataclasses.replace(info, memory_heaps=[1 << 20], device_local_heaps=[True])
    monkeypatch.setattr(devmod, "devices", lambda: [tiny])
    with vq.Device() as dev:
        assert dev.memory_budget == 1 << 20
        layers, refs = [], []
        with pytest.raises(vq.DeviceMemoryError) as err:
            for _ in range(100):
                d = make_layer(rng, 2, 512, 256, 32)
                qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"], device=dev)
                vq.linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], qw,
                                      device=dev)
                layers.append((d, qw))
                refs.append(vq.linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"],
                                                  qw, algorithm="reference"))
        msg = str(err.value)
        assert "needs" in msg and "bytes" in msg and "memory_used" in msg
        assert isinstance(err.value, MemoryError) and len(layers) >= 2
        used = dev.memory_used()
        assert used <= dev.memory_budget
        for (d, qw), ref in zip(layers, refs):
            y = vq.linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], qw,
                                      device=dev)
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
        del layers[:2]         # an upload also needs room for its staging copy meanwhile
        gc.collect()
        assert dev.memory_used() < used
        d = make_layer(rng, 2, 512, 256, 32)
        vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"], device=dev)


@pytest.mark.parametrize("error,raised", [
    ("vk::Device::allocateMemory: ErrorOutOfDeviceMemory", vq.DeviceMemoryError),
    ("vk::Device::createBuffer: ErrorOutOfHostMemory", vq.DeviceMemoryError),
    ("something else", RuntimeError)])
def test_failed_vulkan_allocation(rng, device, monkeypatch, error, raised):
    """An allocation the driver refuses (Kompute raises) is a DeviceMemoryError, is not
    charged to the budget, and the device goes on working."""
    d = make_layer(rng, 2, 256, 64, 32)
    with vq.Device() as dev:
        before = dev.memory_used()

        def refuse(data):
            raise RuntimeError(error)
        with monkeypatch.context() as m:
            _watch_manager(m, refuse)
            with pytest.raises(raised) as e:
                vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"], device=dev)
        assert raised is RuntimeError or "bytes" in str(e.value)
        assert dev.memory_used() == before
        y = vq.linear_qta8a_qga4w(**d, algorithm="tiled", device=dev)
        np.testing.assert_allclose(y, vq.linear_qta8a_qga4w(**d, algorithm="reference"),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 0.5])
def test_cooperative_kernel_is_right_at_another_subgroup_size(rng, device, factor):
    """A device may run a pipeline at another subgroup size than the one it reports (some
    GPUs do unless the size is required): here the library is told twice or half the real
    size, so the subgroup COOPERATIVE kernel's rows are not one subgroup each. The kernel
    notices and reduces through shared memory: still within the contract."""
    from vkqlinear import conformance
    real = device.info.subgroup["size"]
    with vq.Device() as dev:
        dev.caps = dataclasses.replace(dev.caps, subgroup_size=max(4, int(real * factor)))
        variants = [v for v in dev.caps.variants("cooperative") if v.subgroup]
        if not variants:
            pytest.skip(f"{dev.name} has no subgroup arithmetic")
        for variant in variants:
            for case in [conformance.Case("wrong sg T=3", (3,), 256, 40, 32, bias=True,
                                          seed=5),
                         conformance.Case("wrong sg T=1 int8", (1,), 1280, 24, 32, "float",
                                          "int8", seed=6)]:
                ok, msg = conformance.run_case(case, "cooperative", dev, variant)
                assert ok, f"{variant.name} at subgroup size {dev.caps.subgroup_size}: {msg}"


@pytest.mark.usefixtures("device")
def test_fill_device_script(monkeypatch, capsys):
    """bench/fill_device.py on a 4 MiB budget: fills, fails cleanly, every layer right."""
    import importlib.util
    from pathlib import Path
    info = vq.devices()[0]
    tiny = dataclasses.replace(info, memory_heaps=[4 << 20], device_local_heaps=[True])
    monkeypatch.setattr(devmod, "devices", lambda: [tiny])
    path = Path(__file__).resolve().parent.parent / "bench" / "fill_device.py"
    spec = importlib.util.spec_from_file_location("fill_device", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--shape", "512x256"]) == 0
    out = capsys.readouterr().out
    assert "DeviceMemoryError" in out and "0 wrong" in out


@pytest.mark.parametrize("decode, prefill", [
    (("auto", None), ("auto", None)),
    # a GPU's untuned choices where OpSDot is accelerated, and where it is not (SWAR, the
    # int64 layout): both kernels read the "groups" order
    (("cooperative", "subgroup+dot"), ("shared", "dot")),
    (("cooperative", "subgroup+int64"), ("shared", "int64")),
])
def test_decode_and_prefill_hold_one_copy_of_the_weights(rng, device, decode, prefill):
    """A layer called at T = 1 and at T = 512 holds its weights on the device once
    (Device.memory_used() without the recorded calls' tensors): with auto's choices here,
    and with the subgroup GEMV and the SHARED GEMM, which read one layout."""
    from vkqlinear.kernels import Variant
    for alg, variant in (decode, prefill):
        if variant and Variant.parse(variant) not in device.caps.variants(alg):
            pytest.skip(f"{device.name} has no {variant} {alg} kernel")
    with vq.Device() as dev:
        d = make_layer(rng, 1, 512, 256, 32)
        qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
        dl = vq.DeviceLinear.of(qw, dev)
        # the kernels first: their self-checks hold a small layer of their own
        first = dl.kernel(decode[0], 1, variant=decode[1])
        dl.kernel(prefill[0], 512, variant=prefill[1])
        before = dev.memory_used()
        dl.buffers(first)
        one_copy = dev.memory_used() - before
        assert one_copy >= 256 * 512 // 2
        for (alg, variant), t in ((decode, 1), (prefill, 512), (decode, 1)):
            x = vq.quantize_per_token(rng.standard_normal((t, 512)).astype(np.float32))
            y = dl.run(alg, *x, variant=variant and Variant.parse(variant))[0]
            want = vq.linear_qta8a_qga4w(*x, qw, algorithm="reference")
            np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-3)
        assert dl.kernel(prefill[0], 512, variant=prefill[1]).order == first.order
        assert len(dl.layouts) == 1
        dl._calls.clear()          # the recorded calls' activations and outputs
        gc.collect()
        assert dev.memory_used() - before == one_copy
