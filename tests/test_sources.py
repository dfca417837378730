"""Bring your own weights: the nibble orders, torchao's activation conventions, GGUF files,
ExecuTorch's packed tensors and its linear_dq8ca_q4gsw op, torchao models converted in place.
Each source is checked against its own library (gguf, torchao) or its documented formulas
(ExecuTorch), and the device against the contract's tolerance."""

import warnings

import numpy as np
import pytest

import vkqlinear as vq
from vkqlinear import conformance
from vkqlinear.quant import NIBBLE_ORDERS, pack_int4, unpack_int4


@pytest.mark.parametrize("order", list(NIBBLE_ORDERS))
def test_nibble_orders_round_trip(order):
    q = np.random.default_rng(0).integers(-8, 8, (5, 64)).astype(np.int8)
    assert np.array_equal(unpack_int4(pack_int4(q, order), order), q)


def test_nibble_orders_place_the_first_element():
    q = np.zeros((1, 32), np.int8)
    q[0, 0], q[0, 1], q[0, 16] = 1, 2, 3          # nibbles 9, 10, 11
    assert pack_int4(q, "spec")[0, 0] == 0x9A     # 2j high, 2j + 1 low
    assert pack_int4(q, "low_first")[0, 0] == 0xA9
    assert pack_int4(q, "gguf")[0, 0] == 0xB9     # j low, j + 16 high
    with pytest.raises(ValueError, match="order"):
        pack_int4(q, "big")
    with pytest.raises(ValueError, match="order"):
        unpack_int4(np.zeros((1, 8), np.uint8), "gguf")   # not whole blocks of 32


# -- activation conventions ----------------------------------------------------------------
def _rows(k=64):
    rng = np.random.default_rng(3)
    fixed = [np.zeros(k), np.full(k, 3.0), np.full(k, -2.5), np.linspace(-100, 155, k),
             (np.arange(k) % 9 - 4) + 0.5, rng.standard_normal(k) * 1e-30,
             rng.standard_normal(k) * 1e-20, rng.standard_normal(k) * 1e30]
    rand = rng.standard_normal((120, k)) * rng.uniform(0.01, 100, (120, 1))
    return np.concatenate([np.stack(fixed), rand]).astype(np.float32)


@pytest.mark.parametrize("convention", ["torchao", "torchao-legacy"])
def test_torchao_convention_is_bit_identical_to_torchao(convention):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.quantization.quant_primitives import (
            MappingType,
            choose_qparams_affine,
            quantize_affine,
        )
    x = _rows()
    eps = None if convention == "torchao" else torch.finfo(torch.float32).eps
    xt = torch.from_numpy(x)
    s, z = choose_qparams_affine(xt, MappingType.ASYMMETRIC, (1, x.shape[1]), torch.int8,
                                 -128, 127, eps=eps, zero_point_dtype=torch.int8)
    q = quantize_affine(xt, (1, x.shape[1]), s, z, torch.int8, -128, 127)
    x_q, xs, xz = vq.quantize_per_token(x, convention=convention)
    np.testing.assert_array_equal(x_q, q.numpy())
    np.testing.assert_array_equal(xs, s.numpy().ravel())
    np.testing.assert_array_equal(xz, z.numpy().ravel())
    assert xz[0] == -128 and vq.quantize_per_token(x[:1])[2][0] == 127   # all-zero row


@pytest.mark.parametrize("convention", ["spec", "torchao", "torchao-legacy"])
def test_device_quantizer_matches_the_cpu_one(convention, device):
    x = _rows(256)
    wp, s, z = vq.quantize_weights(np.ones((8, 256), np.float32), 32)
    layer = vq.QLinear(vq.prepack(wp, 32, s, z), device=device, act_quant=convention)
    _, call = vq.DeviceLinear.of(layer.weights, device).run_float(
        "tiled", x.shape[0], x, act_quant=convention)
    got = call.quantized_activations()
    want = vq.quantize_per_token(x, convention=convention)
    for g, w, name in zip(got, want, ("x_q", "scale", "zero point")):
        np.testing.assert_array_equal(g, w, err_msg=name)


def test_unknown_convention_is_refused():
    with pytest.raises(ValueError, match="convention"):
        vq.quantize_per_token(np.ones((1, 8), np.float32), convention="torch")
    with pytest.raises(ValueError, match="convention"):
        vq.QLinear(vq.prepack(*vq.quantize_weights(np.ones((8, 8), np.float32), 8)[:1], 8,
                              np.ones((8, 1), np.float32), np.zeros((8, 1), np.int32)),
                   act_quant="int8")


# -- GGUF ----------------------------------------------------------------------------------
def _write_gguf(path, tensors):
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "test")
    for name, (data, qtype) in tensors.items():
        if qtype in ("Q4_0", "Q4_1"):
            t = getattr(gguf.GGMLQuantizationType, qtype)
            writer.add_tensor(name, gguf.quants.quantize(data, t), raw_dtype=t)
        else:
            writer.add_tensor(name, data.astype(qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def gguf_file(tmp_path):
    rng = np.random.default_rng(5)
    w0 = (rng.standard_normal((48, 256)) * 0.1).astype(np.float32)
    w1 = (rng.standard_normal((40, 128)) * 0.1 + 0.03).astype(np.float32)
    path = tmp_path / "model.gguf"
    _write_gguf(path, {"blk.0.attn_q.weight": (w0, "Q4_0"), "blk.0.ffn_up.weight": (w1, "Q4_1"),
                       "token_embd.norm": (rng.standard_normal(256), np.float32),
                       "blk.0.vector": (rng.standard_normal(64).astype(np.float32), "Q4_0"),
                       "blk.0.extra": (rng.standard_normal((4, 32)), np.float16)})
    return path, {"blk.0.attn_q.weight": (w0, "Q4_0"), "blk.0.ffn_up.weight": (w1, "Q4_1")}


def test_gguf_weights_equal_ggufs_own_dequantization(gguf_file):
    gguf = pytest.importorskip("gguf")
    path, written = gguf_file
    loaded = vq.load_gguf(path)
    assert list(loaded) == list(written)            # only the Q4 matrices, in file order
    for name, (w, qtype) in written.items():
        qw = loaded[name]
        assert (qw.N, qw.K, qw.group_size) == (w.shape[0], w.shape[1], 32)
        t = getattr(gguf.GGMLQuantizationType, qtype)
        theirs = gguf.quants.dequantize(gguf.quants.quantize(w, t), t)
        ours = vq.dequantize_weights(qw.w_packed, 32, qw.w_scales, qw.w_offsets)
        if qtype == "Q4_0":
            np.testing.assert_array_equal(ours, theirs)
        else:   # d * u + m against d * (u - 8) + (m + 8 d), each rounded in float32
            ulp = np.spacing(np.abs(theirs).astype(np.float32))
            assert np.all(np.abs(ours - theirs) <= ulp), name
            differ = np.count_nonzero(ours != theirs)
            assert differ < ours.size // 4, f"{differ} of {ours.size} differ by 1 ulp"


def test_gguf_weights_run_within_the_contract(gguf_file, device):
    path, written = gguf_file
    for name, qw in vq.load_gguf(path).items():
        x = np.random.default_rng(6).standard_normal((3, qw.K)).astype(np.float32)
        x_q, xs, xz = vq.quantize_per_token(x)
        y = vq.linear_qta8a_qga4w(x_q, xs, xz, qw, device=device)
        d = dict(x_q=x_q, x_scale=xs, x_zero_point=xz, w_packed=qw.w_packed, group_size=32,
                 w_scales=qw.w_scales, w_offsets=qw.w_offsets64, bias=None)
        ok, msg = conformance.check(y, d)
        assert ok, f"{name}: {msg}"


def test_gguf_names_select_and_are_checked(gguf_file):
    path, written = gguf_file
    assert list(vq.load_gguf(path, names=["blk.0.ffn_up.weight"])) == ["blk.0.ffn_up.weight"]
    with pytest.raises(ValueError, match="names: no tensor 'nope'"):
        vq.load_gguf(path, names=["nope"])
    with pytest.raises(ValueError, match="'blk.0.extra' is type F16.*Q4_0 and Q4_1"):
        vq.load_gguf(path, names=["blk.0.extra"])
    with pytest.raises(ValueError, match="'token_embd.norm' is type F32"):
        vq.load_gguf(path, names="token_embd.norm")
    with pytest.raises(ValueError, match="'blk.0.vector' is 1-D"):
        vq.load_gguf(path, names="blk.0.vector")


@pytest.mark.parametrize("damage", ["truncated", "half", "magic", "empty", "garbage"])
def test_damaged_gguf_is_a_clear_error(gguf_file, tmp_path, damage):
    path, _ = gguf_file
    data = path.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes({"truncated": data[:-100], "half": data[:len(data) // 2],
                     "magic": b"GGUX" + data[4:], "empty": b"",
                     "garbage": bytes(range(256)) * 8}[damage])
    with pytest.raises(ValueError, match="bad.gguf|truncated"):
        vq.load_gguf(bad)


def test_missing_gguf_file():
    pytest.importorskip("gguf")
    with pytest.raises(FileNotFoundError):
        vq.load_gguf("/nonexistent/model.gguf")


# -- ExecuTorch ----------------------------------------------------------------------------
def _ceil(v, m):
    return -(-v // m) * m


def executorch_pack(q, s, g):
    """ExecuTorch's tensors for linear_dq8ca_q4gsw, from its documented formulas
    (patterns/quantized_linear.py): q [N, K] int8 padded along K to a multiple of 8 with 0,
    byte = (odd + 8) << 4 | (even + 8); scales transposed to [G, N], padded to a multiple
    of 4; weight_sums [G, N] of the unpadded q, padded to a multiple of 8."""
    n, k = q.shape
    qp = np.zeros((n, _ceil(k, 8)), np.int16)
    qp[:, :k] = q
    u = (qp + 8).astype(np.uint8)
    packed = (u[:, 1::2] << 4) | u[:, 0::2]
    scales = np.zeros((k // g, _ceil(n, 4)), np.float32)
    scales[:, :n] = s.T
    sums = np.zeros((k // g, _ceil(n, 8)), np.int32)
    sums[:, :n] = q.reshape(n, k // g, g).sum(axis=2).T
    return packed.astype(np.uint8), scales, sums


def _dq8ca_problem(t, k, n, g, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.integers(-8, 8, (n, k)).astype(np.int8)
    s = (rng.uniform(0.5, 2, (n, k // g)) * 0.02).astype(np.float32)
    x = (rng.standard_normal((t, k)) * 2).astype(np.float32)
    _, xs, xz = vq.quantize_per_token(x, convention="torchao")
    return q, s, x, xs, xz.astype(np.int8)


def _dq8ca_reference(q, s, x, xs, xz, g, bias=None):
    """The op in float64 from its definition: x quantized with the given qparams
    (ExecuTorch's rounding), then the contract's formula; and the tolerance's bound."""
    x_q = vq.quant.quantize_with_qparams(x, xs, xz, "torchao")
    d = dict(x_q=x_q, x_scale=xs, x_zero_point=xz.astype(np.int32), w_packed=pack_int4(q),
             group_size=g, w_scales=s, w_offsets=np.zeros_like(s), bias=bias)
    return d


@pytest.mark.parametrize("t,k,n,g", [(3, 64, 16, 32), (1, 128, 20, 32), (2, 20, 12, 20),
                                     (4, 36, 9, 12), (5, 96, 24, 8), (2, 24, 8, 4)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_dq8ca_q4gsw_within_the_contract(t, k, n, g, bias, device):
    """Including K not a multiple of 8 (the packed weights' padding), N not a multiple of 8
    (padded scales and sums), and group sizes that are multiples of 4 only."""
    q, s, x, xs, xz = _dq8ca_problem(t, k, n, g, seed=t * k + n)
    packed, scales, sums = executorch_pack(q, s, g)
    b = np.random.default_rng(1).standard_normal(n).astype(np.float32) if bias else None
    ref = _dq8ca_reference(q, s, x, xs, xz, g, b)
    for alg in ("tiled", "cooperative", "reference"):
        y = vq.linear_dq8ca_q4gsw(x, xs, xz, packed, sums, scales, g, b, algorithm=alg,
                                  device=None if alg == "reference" else device)
        ok, msg = conformance.check(y, ref)
        assert ok, f"{alg}: {msg}"
    qw = vq.from_executorch(packed, scales, g, k, n)
    y = vq.linear_dq8ca_q4gsw(x, xs, xz, qw, sums, scales, g, b, device=device)
    assert conformance.check(y, ref)[0]
    # the same weights through the general op, with the activations quantized by hand
    y2 = vq.linear_qta8a_qga4w(ref["x_q"], xs, xz, qw, bias=b, device=device)
    assert conformance.check(y2, ref)[0]


def test_from_executorch_is_exact():
    q, s, *_ = _dq8ca_problem(1, 36, 9, 12)
    packed, scales, _ = executorch_pack(q, s, 12)
    qw = vq.from_executorch(packed, scales, 12, 36, 9)
    assert np.array_equal(unpack_int4(qw.w_packed), q) and np.array_equal(qw.w_scales, s)
    assert not np.any(qw.w_offsets64) and (qw.K, qw.N, qw.group_size) == (36, 9, 12)


def test_linear_dq8ca_q4gsw_with_torch_tensors(device):
    torch = pytest.importorskip("torch")
    q, s, x, xs, xz = _dq8ca_problem(2, 64, 8, 32)
    packed, scales, sums = executorch_pack(q, s, 32)
    args = [torch.from_numpy(a) for a in (x, xs[:, None], xz[:, None], packed, sums, scales)]
    y = vq.linear_dq8ca_q4gsw(*args, 32, device=device)
    assert isinstance(y, torch.Tensor)
    assert conformance.check(y.numpy(), _dq8ca_reference(q, s, x, xs, xz, 32))[0]


def test_linear_dq8ca_q4gsw_bad_input(device):
    q, s, x, xs, xz = _dq8ca_problem(2, 64, 12, 32)
    packed, scales, sums = executorch_pack(q, s, 32)
    good = dict(input=x, input_scales=xs, input_zp=xz, weights=packed, weight_sums=sums,
                weight_scales=scales, group_size=32)
    bad_sums = sums.copy()
    bad_sums[1, 3] += 1
    wrong = [("weight_sums", bad_sums, ValueError, "weight_sums: do not match"),
             ("weight_sums", sums[:, :12], ValueError, "weight_sums"),
             ("weight_sums", sums.astype(np.int64), TypeError, "weight_sums"),
             ("weights", packed.astype(np.int8), TypeError, "weights"),
             ("weights", packed[:, :-1], ValueError, "weights"),
             ("weight_scales", scales.T, ValueError, "weight_scales"),
             ("weight_scales", scales.astype(np.float64), TypeError, "weight_scales"),
             ("input", x.astype(np.float64), TypeError, "input"),
             ("input", x[:, :32], ValueError, "weights"),
             ("input_scales", -xs, ValueError, "input_scales"),
             ("input_scales", xs[:1], ValueError, "input_scales"),
             ("input_zp", xz.astype(np.float32), TypeError, "input_zp"),
             ("group_size", 24, ValueError, "group_size"),
             ("group_size", 6, ValueError, "group_size"),
             ("group_size", 32.0, TypeError, "group_size")]
    for name, value, err, match in wrong:
        with pytest.raises(err, match=match):
            vq.linear_dq8ca_q4gsw(**dict(good, **{name: value}), device=device)
    padded = packed.copy()
    padded[:, -1] = 0x00                           # q = -8 in the padding: not ExecuTorch's
    with pytest.raises(ValueError, match="padding"):
        vq.from_executorch(padded, np.ones((5, 12), np.float32), 12, 60, 12)
    # asymmetric weights passed to the symmetric op
    wp, ws, wz = vq.quantize_weights(np.random.default_rng(0).standard_normal((12, 64))
                                     .astype(np.float32), 32)
    with pytest.raises(ValueError, match="symmetric"):
        vq.linear_dq8ca_q4gsw(**dict(good, weights=vq.prepack(wp, 32, ws, wz)), device=device)
    # and the device is still right afterwards
    y = vq.linear_dq8ca_q4gsw(**good, device=device)
    assert conformance.check(y, _dq8ca_reference(q, s, x, xs, xz, 32))[0]


# -- torchao models ------------------------------------------------------------------------
def _torchao_model(flow, k=64, hidden=96, n=48, g=32, seed=0, mapping="symmetric"):
    """A small Sequential quantized by torchao with one of its two 8da4w flows."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(k, hidden), torch.nn.GELU(),
                                torch.nn.Linear(hidden, n, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if flow == "tensor":
            from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
            from torchao.quantization.granularity import PerGroup
            from torchao.quantization.quant_primitives import MappingType
            quantize_(model, Int8DynamicActivationIntxWeightConfig(
                weight_dtype=torch.int4, weight_granularity=PerGroup(g),
                weight_mapping_type=getattr(MappingType, mapping.upper())))
        else:
            from torchao.quantization.linear_quant_modules import Int8DynActInt4WeightQuantizer
            model = Int8DynActInt4WeightQuantizer(groupsize=g).quantize(model)
    return model


FLOWS = [("tensor", "symmetric"), ("tensor", "asymmetric"), ("module", "symmetric")]


@pytest.mark.parametrize("flow,mapping", FLOWS)
def test_from_torchao_keeps_the_exact_weights(flow, mapping):
    torch = pytest.importorskip("torch")
    model = _torchao_model(flow, mapping=mapping)
    for layer in (model[0], model[2]):
        qw = vq.from_torchao(layer)
        if flow == "tensor":
            w = layer.weight
            q, scale, zp = w.qdata, w.scale, w.zero_point
            deq = w.dequantize()
        else:
            q, scale, zp = layer.weight, layer.scales, layer.zeros
            deq = (q.float() - zp.repeat_interleave(32, 1)) * scale.repeat_interleave(32, 1)
        assert np.array_equal(unpack_int4(qw.w_packed), q.numpy())
        assert np.array_equal(qw.w_scales, scale.float().numpy())
        if mapping == "asymmetric":
            assert np.any(qw.w_zeros)
        ours = vq.dequantize_weights(qw.w_packed, qw.group_size, qw.w_scales, qw.w_offsets)
        np.testing.assert_allclose(ours, deq.detach().float().numpy(), rtol=1e-6, atol=1e-7)
        assert isinstance(torch.from_numpy(ours), torch.Tensor)


@pytest.mark.parametrize("flow,mapping", FLOWS)
def test_converted_layers_match_torchao_layer_by_layer(flow, mapping, device):
    """Each converted layer on the layer's own input: the integers torchao's activation
    quantization makes are exact, the result within the contract's float tolerance."""
    torch = pytest.importorskip("torch")
    model = _torchao_model(flow, mapping=mapping)
    x = torch.randn(5, 64)
    inputs, outputs = {}, {}
    def keep(idx):
        def hook(module, args, output):
            inputs[idx], outputs[idx] = args[0].detach(), output.detach()
        return hook
    hooks = [model[idx].register_forward_hook(keep(idx)) for idx in (0, 2)]
    with torch.no_grad():
        want = model(x)
    [h.remove() for h in hooks]
    report = vkqlinear_torch().convert_torchao(model, device=device)
    assert set(report.converted) == {"0", "2"} and not report.kept
    assert set(report.converted.values()) == {"torchao" if flow == "tensor"
                                              else "torchao-legacy"}
    for idx in (0, 2):
        layer = model[idx]
        xin = inputs[idx].numpy()
        y = layer(inputs[idx]).numpy()
        ql = layer.qlinear
        x_q, xs, xz = vq.quantize_per_token(xin, convention=ql.act_quant)
        w = ql.weights
        d = dict(x_q=x_q, x_scale=xs, x_zero_point=xz, w_packed=w.w_packed,
                 group_size=w.group_size, w_scales=w.w_scales, w_offsets=w.w_offsets64,
                 bias=ql.bias)
        ok, msg = conformance.check(y, d)
        assert ok, f"layer {idx}: {msg}"
        # torchao's float result is itself within the same bound of the exact value
        ok, msg = conformance.check(outputs[idx].numpy().astype(np.float32), d)
        assert ok, f"torchao layer {idx}: {msg}"
    with torch.no_grad():
        got = model(x)
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert float(cos.min()) > 0.9999


def vkqlinear_torch():
    pytest.importorskip("torch")
    import vkqlinear.torch as vt
    return vt


def test_convert_torchao_reports_what_it_kept(device):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.quantization import (
            Int8DynamicActivationIntxWeightConfig,
            IntxWeightOnlyConfig,
            quantize_,
        )
        from torchao.quantization.granularity import PerGroup
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64),
                                    torch.nn.Linear(64, 64), torch.nn.Linear(64, 32))
        quantize_(model[0], Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=PerGroup(32)))
        quantize_(model[1], IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                                 granularity=PerGroup(32)))
        quantize_(model[2], Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int8, weight_granularity=PerGroup(32)))
    report = vkqlinear_torch().convert_torchao(model, device=device, act_quant="spec")
    assert report.converted == {"0": "spec"}
    assert set(report.kept) == {"1", "2", "3"}
    assert "weight-only" in report.kept["1"] and "int8" in report.kept["2"]
    assert "float" in report.kept["3"] and "kept 3" in str(report)
    assert type(model[0]).__name__ == "QuantizedLinear"
    assert type(model[3]) is torch.nn.Linear
    with pytest.raises(TypeError, match="model"):
        vkqlinear_torch().convert_torchao([model])
    with pytest.raises(ValueError, match="act_quant"):
        vkqlinear_torch().convert_torchao(model, act_quant="int4")


def test_from_torchao_refuses_other_objects():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="obj"):
        vq.from_torchao(torch.nn.Linear(8, 8))
    with pytest.raises(TypeError, match="obj"):
        vq.from_torchao(np.zeros((8, 8)))
