"""Every GPU algorithm against docs/spec.md on every case class (run on lavapipe in CI).

The cases live in vkqlinear.conformance, shared with `python -m vkqlinear conformance`;
each check names its case on failure.
"""

import pytest

from vkqlinear import conformance as C
from vkqlinear.kernels import Variant

CASES = C.cases()


# Every variant the library ships (a device runs those its features allow; lavapipe all).
KERNELS = ([("tiled", v) for v in ("portable", "int64", "texel+int64", "dot", "storage8")]
           + [("shared", v) for v in ("portable", "int64", "texel+int64", "dot")]
           + [("cooperative", v) for v in ("portable", "int64", "texel+int64", "dot", "storage8",
                                           "subgroup", "subgroup+int64",
                                           "subgroup+texel+int64", "subgroup+dot",
                                           "subgroup+storage8")]
           + [("auto", None)])


@pytest.mark.parametrize("algorithm,variant", KERNELS, ids=[f"{a}-{v}" for a, v in KERNELS])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gpu_conforms(case, algorithm, variant, device):
    if variant is not None and (algorithm, Variant.parse(variant)) not in \
            C.kernel_variants(device):
        pytest.skip(f"{algorithm}/{variant} not supported by {device.name}")
    ok, msg = C.run_case(case, algorithm, device, variant)
    assert ok, f"[{algorithm}/{variant}] {case.name}: {msg}"


def test_every_variant_is_exercised_on_lavapipe(device):
    """lavapipe enables every feature the variants use: none may be skipped there but those
    its driver version's quirks rule out (vkqlinear.policy)."""
    if not device.info.is_lavapipe:
        pytest.skip(f"{device.name} is not lavapipe: its variants are the ones it supports")
    expect = {(a, v) for a, v in KERNELS[:-1]
              if not ("texel" in v and device.avoided("texelBufferLoads"))}
    assert {(a, v.name) for a, v in C.kernel_variants(device)} == expect


def test_conformance_cli_passes(device):
    from vkqlinear.__main__ import main
    assert main(["conformance", "--quick", "--device", str(device.index)]) == 0


@pytest.mark.parametrize("out", ["float", "int8"])
def test_tiled_kernels_with_more_channel_blocks_conform(out, device):
    """The tuner's tiled candidates with 2 and 4 channel blocks per invocation, every
    variant: channels that leave the last invocation's blocks part empty, N not a multiple
    of 8, and a part-full token tile."""
    import vkqlinear as vq
    from vkqlinear.kernels import kernel_from_config, lanes_for
    lanes = lanes_for(device.caps)
    case = C.Case("cb", (3,), 128, 8 * lanes * 3 - 5, 32, out=out)
    d = C.make_inputs(case)
    qw = vq.prepack(d["w_packed"], 32, d["w_scales"], d["w_zeros"])
    dl = vq.DeviceLinear.of(qw, device)
    extra = (d["out_scale"], d["out_zero_point"]) if out == "int8" else ()
    for variant in device.caps.variants("tiled"):
        for tm in (1, 2):
            for cb in (2, 4):
                kernel = kernel_from_config({"algorithm": "tiled", "variant": variant.name,
                                             "tm": tm, "local_size": [lanes, 2], "cb": cb},
                                            case.t, 32, out == "int8", device.caps)
                y, _ = dl.run(kernel, d["x_q"], d["x_scale"], d["x_zero_point"], d["bias"],
                              *extra)
                ok, msg = C.check(y, dict(d, w_offsets=None))
                assert ok, f"{kernel.describe()}: {msg}"


def test_conformance_cli_of_the_default_variants(device, capsys):
    from vkqlinear.__main__ import main
    assert main(["conformance", "--quick", "--defaults-only", "--device",
                 str(device.index)]) == 0
    table = capsys.readouterr().out.split("algorithm ")[1].splitlines()[1:]
    rows = [line.split()[:2] for line in table if line.strip()]
    assert rows == [[a, device.caps.variants(a)[0].name] for a in C.KERNEL_ALGORITHMS
                    if device.caps.variants(a)]


# SHARED GEMM shapes: (group size, tokens per invocation, channel blocks, workgroup):
# a group of one octet (g = 8), a whole group of 5 octets (g = 40) and of 8 (g = 64), a
# group in two stages (g = 128) and in 9 stages of one octet (g = 72); 8 to 32
# invocations along the channels, 1 to 16 token tiles. The large tiles take lavapipe
# seconds to compile: one of them, in one test.
SHARED_SHAPES = [(8, 1, 1, (8, 16)), (8, 8, 1, (32, 1)), (40, 2, 1, (16, 4)),
                 (64, 4, 1, (8, 2)), (72, 2, 1, (16, 8)), (128, 8, 1, (16, 2)),
                 (32, 2, 2, (8, 4))]


@pytest.mark.parametrize("variant", ["dot", "int64"])
@pytest.mark.parametrize("zeros", ["int", "float", "sym"])
@pytest.mark.parametrize("out", ["float", "int8"])
def test_shared_gemm_shapes_conform(out, zeros, variant, device):
    """The SHARED GEMM, with OpSDot and SWAR, at every kind of stage and a spread of
    shapes, channels and tokens that leave the last workgroup part empty, with float
    offsets, integer zero points and symmetric weights."""
    import vkqlinear as vq
    from vkqlinear.kernels import kernel_from_config
    if Variant.parse(variant) not in device.caps.variants("shared"):
        pytest.skip(f"{device.name} has no {variant} SHARED GEMM")
    for g, tm, cb, local in SHARED_SHAPES[:-1] + (SHARED_SHAPES[-1:] if
                                                  (zeros, out) == ("int", "float") else []):
        case = C.Case("shared", (37,), g * max(3, 512 // g), 300, g, zeros, out,
                      bias=zeros != "sym", seed=g)
        d = C.make_inputs(case)
        if zeros == "float":
            qw = vq.prepack(d["w_packed"], g, d["w_scales"], w_offsets=d["w_offsets"])
            d_check = dict(d, w_zeros=None)
        else:
            qw = vq.prepack(d["w_packed"], g, d["w_scales"], d["w_zeros"])
            d_check = dict(d, w_offsets=None)
        assert qw.offset_kind == {"int": 2, "float": 1, "sym": 0}[zeros]
        kernel = kernel_from_config({"algorithm": "shared", "variant": variant, "tm": tm,
                                     "cb": cb, "local_size": list(local)}, case.t, g,
                                    out == "int8", device.caps)
        extra = (d["out_scale"], d["out_zero_point"]) if out == "int8" else ()
        y, _ = vq.DeviceLinear.of(qw, device).run(kernel, d["x_q"], d["x_scale"],
                                                  d["x_zero_point"], d["bias"], *extra)
        ok, msg = C.check(y, d_check)
        assert ok, f"{kernel.describe()} ({zeros} zeros): {msg}"


@pytest.mark.parametrize("out", ["float", "int8"])
def test_zero_points_in_the_sums_give_the_stored_offsets_results(out, device):
    """Integer zero points held as 4 bits beside the nibble sums give, bit for bit, the
    results of the same weights with their float32 offsets stored, in every variant of the
    TILED and COOPERATIVE kernels (the shaders form o = -s z as float32 does), at group
    sizes 32 and 8 (2 groups a chunk of 16) and with the extreme zero points -8 and 7."""
    import numpy as np

    import vkqlinear as vq
    from vkqlinear.kernels import OFFSETS_FLOAT
    for g in (32, 8):
        for alg, variant in C.kernel_variants(device):
            if alg == "shared":      # folds integer zero points its own way: its own tests
                continue
            case = C.Case("zp", (C.SPECS[alg].check_tokens,), 256, 72, g, out=out, seed=g)
            d = C.make_inputs(case)
            d["w_zeros"][:, 0] = -8
            d["w_zeros"][:, 1] = 7
            packed = vq.prepack(d["w_packed"], g, d["w_scales"], d["w_zeros"])
            stored = vq.prepack(d["w_packed"], g, d["w_scales"], d["w_zeros"])
            stored.offset_kind, stored.zero_points = OFFSETS_FLOAT, None
            assert packed.offset_kind == 2
            x = (d["x_q"], d["x_scale"], d["x_zero_point"], d["bias"]) + (
                (d["out_scale"], d["out_zero_point"]) if out == "int8" else ())
            a = vq.DeviceLinear.of(packed, device).run(alg, *x, variant=variant)[0]
            b = vq.DeviceLinear.of(stored, device).run(alg, *x, variant=variant)[0]
            assert np.array_equal(a, b), f"{alg}/{variant.name} g={g}"
            assert C.check(a, dict(d, w_offsets=None))[0], f"{alg}/{variant.name} g={g}"


@pytest.mark.parametrize("out", ["float", "int8"])
def test_half_group_data_gives_the_float32_results(out, device):
    """Scales and Q4_1-style offsets (o = m + 8 s, GGUF's d and m) held as float16 give,
    bit for bit, the results of the same weights with float32 group data, in every
    variant of every kernel (the shaders read float16 exactly and form o = m + 8 s as
    float32 does), at group sizes 32 and 8, for offsets o = m + 8 s, none and integer
    zero points."""
    import numpy as np

    import vkqlinear as vq
    from vkqlinear.weights import QuantizedWeights
    for g in (32, 8):
        for alg, variant in C.kernel_variants(device):
            case = C.Case("half", (C.SPECS[alg].check_tokens,), 256, 72, g, out=out, seed=g)
            d = C.make_inputs(case)
            rng = np.random.default_rng(g)
            s = d["w_scales"].astype(np.float16).astype(np.float32)
            m = (-s * rng.uniform(0.5, 8, s.shape)).astype(np.float16).astype(np.float64)
            x = (d["x_q"], d["x_scale"], d["x_zero_point"], d["bias"]) + (
                (d["out_scale"], d["out_zero_point"]) if out == "int8" else ())
            for offsets, half in ((m + 8 * s, 3), (0 * m, 1), (-3.0 * s.astype(np.float64), 1)):
                halved = QuantizedWeights(d["w_packed"], g, s, offsets)
                stored = QuantizedWeights(d["w_packed"], g, s, offsets)
                stored.half_scales = stored.offset_bases = None
                assert halved.half_data == half
                a = vq.DeviceLinear.of(halved, device).run(alg, *x, variant=variant)[0]
                b = vq.DeviceLinear.of(stored, device).run(alg, *x, variant=variant)[0]
                what = f"{alg}/{variant.name} g={g} half={half} kind={halved.offset_kind}"
                assert np.array_equal(a, b), what
                ref = dict(d, w_scales=s, w_zeros=None, w_offsets=offsets.astype(np.float32))
                assert C.check(a, ref)[0], what
