"""Every class of invalid input gets a TypeError/ValueError naming the argument; odd but
valid inputs (lists, torch tensors, non-contiguous, big-endian, read-only) are converted;
after any error the next valid call on the same device is right."""

import numpy as np
import pytest

import vkqlinear as vq

from .conftest import make_layer

ALGS = ["reference", "tiled", "cooperative"]


@pytest.fixture
def layer(rng):
    d = make_layer(rng, 3, 64, 16, 32)
    d["bias"] = rng.standard_normal(16).astype(np.float32)
    return d


def call(d, algorithm="tiled", device=None):
    return vq.linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], d["w_packed"],
                                 d["group_size"], d["w_scales"], d["w_zeros"],
                                 bias=d.get("bias"), algorithm=algorithm, device=device)


BAD = [
    # (description, changes, exception, argument named in the message)
    ("x_q float", dict(x_q=lambda d: d["x_q"].astype(np.float32)), TypeError, "x_q"),
    ("x_q uint8", dict(x_q=lambda d: d["x_q"].view(np.uint8)), TypeError, "x_q"),
    ("x_q 0-d", dict(x_q=lambda d: np.int8(3)), ValueError, "x_q"),
    ("x_q K odd", dict(x_q=lambda d: d["x_q"][:, :63]), ValueError, "x_q"),
    ("x_q K mismatch", dict(x_q=lambda d: np.zeros((3, 32), np.int8)), ValueError,
     "w_packed"),
    ("x_scale float64", dict(x_scale=lambda d: d["x_scale"].astype(np.float64)), TypeError,
     "x_scale"),
    ("x_scale wrong T", dict(x_scale=lambda d: d["x_scale"][:2]), ValueError, "x_scale"),
    ("x_scale 2-D", dict(x_scale=lambda d: d["x_scale"][:, None]), ValueError, "x_scale"),
    ("x_scale zero", dict(x_scale=lambda d: d["x_scale"] * 0), ValueError, "x_scale"),
    ("x_scale negative", dict(x_scale=lambda d: -d["x_scale"]), ValueError, "x_scale"),
    ("x_scale nan", dict(x_scale=lambda d: d["x_scale"] * np.nan), ValueError, "x_scale"),
    ("x_scale inf", dict(x_scale=lambda d: d["x_scale"] * np.inf), ValueError, "x_scale"),
    ("x_zero_point float", dict(x_zero_point=lambda d: d["x_zero_point"].astype(np.float32)),
     TypeError, "x_zero_point"),
    ("x_zero_point 128", dict(x_zero_point=lambda d: d["x_zero_point"] * 0 + 128), ValueError,
     "x_zero_point"),
    ("x_zero_point -129", dict(x_zero_point=lambda d: d["x_zero_point"] * 0 - 129),
     ValueError, "x_zero_point"),
    ("x_zero_point wrong T", dict(x_zero_point=lambda d: d["x_zero_point"][:1]), ValueError,
     "x_zero_point"),
    ("w_packed int8", dict(w_packed=lambda d: d["w_packed"].view(np.int8)), TypeError,
     "w_packed"),
    ("w_packed 1-D", dict(w_packed=lambda d: d["w_packed"].ravel()), ValueError, "w_packed"),
    ("w_packed wrong K", dict(w_packed=lambda d: d["w_packed"][:, :16]), ValueError,
     "w_packed"),
    ("group_size not multiple of 8", dict(group_size=lambda d: 12), ValueError, "group_size"),
    ("group_size not dividing K", dict(group_size=lambda d: 24), ValueError, "group_size"),
    ("group_size > K", dict(group_size=lambda d: 128), ValueError, "group_size"),
    ("group_size 0", dict(group_size=lambda d: 0), ValueError, "group_size"),
    ("group_size float", dict(group_size=lambda d: 32.0), TypeError, "group_size"),
    ("group_size bool", dict(group_size=lambda d: True), TypeError, "group_size"),
    ("w_scales float64", dict(w_scales=lambda d: d["w_scales"].astype(np.float64)), TypeError,
     "w_scales"),
    ("w_scales wrong G", dict(w_scales=lambda d: d["w_scales"][:, :1]), ValueError,
     "w_scales"),
    ("w_scales wrong N", dict(w_scales=lambda d: d["w_scales"][:3]), ValueError, "w_scales"),
    ("w_scales nan", dict(w_scales=lambda d: d["w_scales"] * np.nan), ValueError, "w_scales"),
    ("w_scales inf", dict(w_scales=lambda d: d["w_scales"] * np.inf), ValueError, "w_scales"),
    ("w_zeros float", dict(w_zeros=lambda d: d["w_zeros"].astype(np.float32)), TypeError,
     "w_zeros"),
    ("w_zeros 200", dict(w_zeros=lambda d: d["w_zeros"] * 0 + 200), ValueError, "w_zeros"),
    ("w_zeros wrong shape", dict(w_zeros=lambda d: d["w_zeros"].T), ValueError, "w_zeros"),
    ("bias float64", dict(bias=lambda d: d["bias"].astype(np.float64)), TypeError, "bias"),
    ("bias wrong N", dict(bias=lambda d: d["bias"][:5]), ValueError, "bias"),
    ("x_q a string", dict(x_q=lambda d: "hello"), TypeError, "x_q"),
    ("x_q ragged list", dict(x_q=lambda d: [[1, 2], [3]]), ValueError, "x_q"),
    ("x_q list out of range", dict(x_q=lambda d: [[300, 0] * 32] * 3), ValueError, "x_q"),
]


@pytest.mark.parametrize("algorithm", ALGS)
@pytest.mark.parametrize("desc,changes,exc,name", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_argument(layer, desc, changes, exc, name, algorithm, device):
    d = dict(layer)
    for k, f in changes.items():
        d[k] = f(layer)
    with pytest.raises(exc, match=name):
        call(d, algorithm, device)
    # the device stays usable: the next valid call is right
    y = call(layer, algorithm, device)
    ref = call(layer, "reference")
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_unknown_algorithm_and_bad_device(layer, device):
    with pytest.raises(ValueError, match="algorithm"):
        call(layer, "fastest")
    with pytest.raises(TypeError, match="algorithm"):
        call(layer, 3)
    with pytest.raises(TypeError, match="device"):
        call(layer, "tiled", device=0)
    with pytest.raises(TypeError, match="device"):
        call(layer, "reference", device="cpu")


def test_qta8o_bad_output_qparams(layer, device):
    sz = vq.offsets_to_scales_and_zeros(
        layer["w_scales"], vq.offsets_from_zero_points(layer["w_scales"], layer["w_zeros"]))
    base = dict(out_scale=np.ones(3, np.float32), out_zero_point=np.zeros(3, np.int32))

    def run(**kw):
        a = dict(base, **kw)
        return vq.linear_qta8a_qga4w_qta8o(layer["x_q"], layer["x_scale"],
                                           layer["x_zero_point"], layer["w_packed"], 32, sz,
                                           a["out_scale"], a["out_zero_point"],
                                           algorithm="tiled", device=device)
    for kw, exc, name in [
        (dict(out_scale=np.zeros(3, np.float32)), ValueError, "out_scale"),
        (dict(out_scale=np.full(3, np.inf, np.float32)), ValueError, "out_scale"),
        (dict(out_scale=np.ones(2, np.float32)), ValueError, "out_scale"),
        (dict(out_scale=np.ones(3, np.float64)), TypeError, "out_scale"),
        (dict(out_zero_point=np.full(3, 128, np.int32)), ValueError, "out_zero_point"),
        (dict(out_zero_point=np.zeros(3, np.float32)), TypeError, "out_zero_point"),
        (dict(out_scale=None), TypeError, "out_scale"),
        (dict(out_zero_point=None), TypeError, "out_zero_point"),
    ]:
        with pytest.raises(exc, match=name):
            run(**kw)
    with pytest.raises(ValueError, match="scales_and_zeros"):
        vq.linear_qta8a_qga4w_qta8o(layer["x_q"], layer["x_scale"], layer["x_zero_point"],
                                    layer["w_packed"], 32, sz[:, :3], **base)
    with pytest.raises(TypeError, match="scales_and_zeros"):
        vq.linear_qta8a_qga4w_qta8o(layer["x_q"], layer["x_scale"], layer["x_zero_point"],
                                    layer["w_packed"], 32, sz.astype(np.float64), **base)
    with pytest.raises(ValueError, match="scales_and_zeros"):
        vq.linear_qta8a_qga4w_qta8o(layer["x_q"], layer["x_scale"], layer["x_zero_point"],
                                    layer["w_packed"], 32, sz * np.nan, **base)
    assert run().dtype == np.int8


def test_converted_inputs_give_the_same_answer(layer, device):
    torch = pytest.importorskip("torch")
    ref = call(layer, "reference")
    variants = {
        "lists": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                  for k, v in layer.items()},
        "torch": {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
                  for k, v in layer.items()},
        "fortran": {k: (np.asfortranarray(v) if isinstance(v, np.ndarray) else v)
                    for k, v in layer.items()},
        "big-endian": {k: (v.astype(v.dtype.newbyteorder(">")) if isinstance(v, np.ndarray)
                           else v) for k, v in layer.items()},
    }
    ro = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in layer.items()}
    for v in ro.values():
        if isinstance(v, np.ndarray):
            v.setflags(write=False)
    variants["read-only"] = ro
    strided = dict(layer)
    big = np.zeros((3, 128), np.int8)
    big[:, ::2] = layer["x_q"]
    strided["x_q"] = big[:, ::2]
    assert not strided["x_q"].flags.c_contiguous
    variants["non-contiguous"] = strided
    for name, d in variants.items():
        for alg in ALGS:
            y = call(d, alg, device)
            # torch activations in, a torch tensor out; numpy (or lists) in, numpy out
            assert isinstance(y, torch.Tensor) == (name == "torch"), (name, type(y))
            y = y.numpy() if name == "torch" else y
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5, err_msg=f"{name} {alg}")


@pytest.mark.usefixtures("device")
def test_closed_device_raises_and_others_still_work(layer):
    dev = vq.Device()
    qw = vq.prepack(layer["w_packed"], 32, layer["w_scales"], layer["w_zeros"], device=dev)
    y = vq.linear_qta8a_qga4w(layer["x_q"], layer["x_scale"], layer["x_zero_point"], qw,
                              algorithm="tiled", device=dev)
    dev.close()
    with pytest.raises(vq.DeviceClosedError, match="device"):
        vq.linear_qta8a_qga4w(layer["x_q"], layer["x_scale"], layer["x_zero_point"], qw,
                              algorithm="tiled", device=dev)
    with pytest.raises(ValueError, match="closed"):
        vq.prepack(layer["w_packed"], 32, layer["w_scales"], layer["w_zeros"], device=dev)
    # the same weights still work on another (new) device
    y2 = vq.linear_qta8a_qga4w(layer["x_q"], layer["x_scale"], layer["x_zero_point"], qw,
                               algorithm="tiled")
    np.testing.assert_array_equal(y, y2)


def test_prepacked_weights_refuse_extra_arguments(layer):
    qw = vq.prepack(layer["w_packed"], 32, layer["w_scales"], layer["w_zeros"])
    with pytest.raises(ValueError, match="group_size"):
        vq.linear_qta8a_qga4w(layer["x_q"], layer["x_scale"], layer["x_zero_point"], qw, 32)
    with pytest.raises(TypeError, match="w_zeros"):
        vq.prepack(layer["w_packed"], 32, layer["w_scales"])
    with pytest.raises(ValueError, match="scales_and_zeros"):
        vq.prepack(layer["w_packed"], 32, layer["w_scales"], layer["w_zeros"],
                   scales_and_zeros=np.zeros((2, 16, 2), np.float32))


@pytest.mark.parametrize("t", [1, 16, 17, 100])   # both sides of args.PYTHON_CHECK_MAX
@pytest.mark.parametrize("bad", [0.0, -0.0, -1.0, np.nan, np.inf, -np.inf])
def test_one_bad_scale_among_many_is_found(t, bad):
    from vkqlinear import args
    x_q = np.zeros((t, 8), np.int8)
    xs, xz = np.ones(t, np.float32), np.zeros(t, np.int32)
    args.activations(x_q, xs, xz)
    xs[-1] = bad
    with pytest.raises(ValueError, match="^x_scale"):
        args.activations(x_q, xs, xz)
    with pytest.raises(ValueError, match="^out_scale"):
        args.output_qparams(xs, xz, (t,), t)
    xs[-1] = np.finfo(np.float32).tiny / 2          # subnormal: finite and > 0
    args.activations(x_q, xs, xz)


# the one-pass path (T = 1), both sides of PYTHON_CHECK_MAX
@pytest.mark.parametrize("t", [1, 2, 16, 17])
def test_extreme_valid_qparams_are_accepted(t):
    from vkqlinear import args
    x_q = np.zeros((t, 8), np.int8)
    for scale in (np.finfo(np.float32).max, np.finfo(np.float32).smallest_subnormal):
        xs = np.full(t, scale, np.float32)
        for zp in (-128, 127):
            got = args.activations(x_q, xs, np.full(t, zp, np.int32))
            assert got[0] is x_q and got[3] == (t,)
            np.testing.assert_array_equal(got[1], xs)
            np.testing.assert_array_equal(got[2], zp)


@pytest.mark.parametrize("t", [1, 16, 17, 100])
@pytest.mark.parametrize("bad,dtype", [(128, np.int32), (-129, np.int32), (2**40, np.int64),
                                       (-32768, np.int16)])
def test_one_bad_zero_point_among_many_is_found(t, bad, dtype):
    from vkqlinear import args
    x_q = np.zeros((t, 8), np.int8)
    xs, xz = np.ones(t, np.float32), np.full(t, 127, dtype)
    xz[0] = -128
    assert args.activations(x_q, xs, xz)[2].dtype == np.int32
    xz[-1] = bad
    with pytest.raises(ValueError, match=r"^x_zero_point: expected values in \[-128, 127\]"):
        args.activations(x_q, xs, xz)
    with pytest.raises(ValueError, match="^out_zero_point"):
        args.output_qparams(xs, xz, (t,), t)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 5, -1])
def test_check_finite_finds_one_bad_value_anywhere(bad, where):
    from vkqlinear import args
    a = np.ones((3, 7), np.float32)
    a.ravel()[where] = bad
    with pytest.raises(ValueError, match="^x: expected finite values"):
        args.check_finite(a, "x")


def test_check_finite_passes_the_largest_finite_values():
    from vkqlinear import args
    big = np.full(4, np.finfo(np.float32).max, np.float32)
    args.check_finite(big, "x")
    args.check_finite(-big, "x")
    with pytest.raises(ValueError, match="^x: expected finite values"):
        args.check_finite(np.array([np.inf, -np.inf], np.float32), "x")


@pytest.mark.parametrize("change, exc, name", [
    (dict(w_packed=np.zeros((4, 16), np.int8)), TypeError, "w_packed"),
    (dict(w_packed=np.zeros((0, 16), np.uint8)), ValueError, "w_packed"),
    (dict(group_size=6), ValueError, "group_size"),
    (dict(group_size=12), ValueError, "group_size"),      # not a divisor of K = 32
    (dict(w_scales=np.ones((4, 2), np.float64)), TypeError, "w_scales"),
    (dict(w_scales=np.ones((4, 3), np.float32)), ValueError, "w_scales"),
    (dict(w_offsets64=np.full((4, 2), np.nan)), ValueError, "w_offsets"),
    (dict(w_zeros=np.zeros((2, 4), np.int32)), ValueError, "w_zeros"),
])
def test_quantized_weights_check_their_parts(change, exc, name):
    """CPU only: QuantizedWeights built from parts (the importers, the benchmark) checks
    them as prepack does, naming the part."""
    parts = dict(w_packed=np.zeros((4, 16), np.uint8), group_size=16,
                 w_scales=np.ones((4, 2), np.float32), w_offsets64=np.zeros((4, 2)),
                 w_zeros=None)
    qw = vq.QuantizedWeights(**parts)
    assert (qw.N, qw.K, qw.G, qw.has_offsets) == (4, 32, 2, False)
    with pytest.raises(exc, match=name):
        vq.QuantizedWeights(**dict(parts, **change))
