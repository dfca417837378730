"""The prepacked weight layouts, decoded independently from their description in
vkqlinear/weights.py and shaders/common.glsl (no GPU needed)."""

import numpy as np
import pytest

from vkqlinear.layout import call_bytes, device_layout, group_data_bytes, sums16
from vkqlinear.quant import pack_int4


def _sums(wsu, g):
    """The nibble sums of a layout, one value per channel and group."""
    return wsu.view(np.uint16) if sums16(g) else wsu


def _weights(n, k, g, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.integers(-8, 8, size=(n, k), dtype=np.int8)
    s = rng.uniform(0.5, 2, size=(n, k // g)).astype(np.float32)
    o = rng.uniform(-1, 1, size=(n, k // g)).astype(np.float32)
    return q, pack_int4(q), s, o


@pytest.mark.parametrize("lanes", [8, 32])
@pytest.mark.parametrize("n", [8, 70])
def test_swar_layout(lanes, n):
    k, g = 64, 32
    q, packed, s, o = _weights(n, k, g)
    words, ws, wo, wsu, n_padded = device_layout(packed, g, s, o, lanes, "swar")
    assert n_padded % (8 * lanes) == 0 and n_padded >= n and words.size == n_padded * k // 8
    for ch in range(n):
        b, i = divmod(ch, 8)
        for kk in range(k):
            w = int(words[((b // lanes) * k + kk) * lanes + b % lanes])
            assert (w >> (4 * i)) & 0xF == q[ch, kk] + 8


@pytest.mark.parametrize("lanes", [8, 16])
def test_swar64_layout_octets_of_k(lanes):
    k, g, n = 64, 32, 70
    q, packed, s, o = _weights(n, k, g, seed=2)
    words, *_ = device_layout(packed, g, s, o, lanes, "swar64")
    for ch in range(n):
        b, i = divmod(ch, 8)
        for kk in range(k):
            octet = ((b // lanes) * (k // 8) + kk // 8) * lanes + b % lanes
            w = int(words[8 * octet + kk % 8])
            assert (w >> (4 * i)) & 0xF == q[ch, kk] + 8


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("n", [8, 70])
def test_dot_layout(lanes, n):
    k, g = 64, 32
    q, packed, s, o = _weights(n, k, g, seed=1)
    words, ws, wo, wsu, n_padded = device_layout(packed, g, s, o, lanes, "dot")
    assert wsu is None               # the OpSDot kernels form the sums (no zero points here)
    assert words.size == n_padded * k // 8
    for ch in range(n):
        b, c = divmod(ch, 8)
        for j in range(k // 8):
            w = int(words[(((b // lanes) * (k // 8) + j) * lanes + b % lanes) * 8 + c])
            for m in range(4):
                byte = (w >> (8 * m)) & 0xFF
                assert byte & 0xF == q[ch, 8 * j + m] + 8
                assert byte >> 4 == q[ch, 8 * j + 4 + m] + 8
    # group data is the same in both layouts
    same = device_layout(packed, g, s, o, lanes, "swar")
    for a, b_ in zip((ws, wo), same[1:3]):
        np.testing.assert_array_equal(a, b_)
    for ch in range(n):
        b, c = divmod(ch, 8)
        for gi in range(k // g):
            idx = (((b // lanes) * (k // g) + gi) * lanes + b % lanes) * 8 + c
            assert ws[idx] == s[ch, gi] and wo[idx] == o[ch, gi]
            want = int(q[ch, gi * g:(gi + 1) * g].astype(int).sum() + 8 * g)
            assert _sums(same[3], g)[idx] == want


def _unit_of(layout, b, kk, k, g, lanes, order):
    """Index of the unit holding (block b, k = kk), decoded from the docs: blocks order
    [b // lanes][j][b % lanes]; groups order [b][g // lanes][j in group][g % lanes], the
    last round holding only the groups left."""
    kpu = {"swar": 1, "swar64": 8, "dot": 8}[layout]
    j = kk // kpu
    if order == "blocks":
        return ((b // lanes) * (k // kpu) + j) * lanes + b % lanes
    ng, upg = k // g, g // kpu
    gi, jin = divmod(j, upg)
    r0 = gi - gi % lanes
    width = min(lanes, ng - r0)
    return b * (k // kpu) + r0 * upg + jin * width + gi - r0


@pytest.mark.parametrize("order", ["blocks", "groups"])
@pytest.mark.parametrize("layout", ["swar", "swar64", "dot"])
@pytest.mark.parametrize("k,g,lanes", [(64, 32, 8), (96, 8, 8), (160, 32, 4), (64, 16, 32)])
def test_every_layout_and_order(layout, order, k, g, lanes):
    n = 20
    q, packed, s, o = _weights(n, k, g, seed=3)
    z = np.random.default_rng(4).integers(-8, 8, size=s.shape).astype(np.int32)
    words, ws, wo, wsu, n_padded = device_layout(packed, g, s, o, lanes, layout, order, z)
    sums = wsu.view(np.uint16)
    assert words.size == n_padded * k // 8 and ws.size == n_padded * (k // g)
    width = {"swar": 1, "swar64": 8, "dot": 8}[layout]
    seen = set()
    for ch in range(n):
        b, i = divmod(ch, 8)
        for kk in range(k):
            unit = _unit_of(layout, b, kk, k, g, lanes, order)
            seen.add(unit)
            if layout == "dot":
                w = int(words[unit * 8 + i])
                m = kk % 8
                nib = (w >> (8 * (m % 4) + 4 * (m // 4))) & 0xF
            else:
                w = int(words[unit * width + kk % width])
                nib = (w >> (4 * i)) & 0xF
            assert nib == q[ch, kk] + 8
        for gi in range(k // g):
            if order == "blocks":
                idx = (((b // lanes) * (k // g) + gi) * lanes + b % lanes) * 8 + i
            else:
                idx = (b * (k // g) + gi) * 8 + i
            assert ws[idx] == s[ch, gi] and wo[idx] == o[ch, gi]
            # the nibble sum in the low 12 bits, the zero point in the top 4
            assert sums[idx] & 0xFFF == int(q[ch, gi * g:(gi + 1) * g].astype(int).sum() + 8 * g)
            assert np.int16(sums[idx]) >> 12 == z[ch, gi]
    assert len(seen) == -(-n // 8) * (k // {"swar": 1, "swar64": 8, "dot": 8}[layout])


def test_unknown_layout_is_refused():
    q, packed, s, o = _weights(8, 32, 32)
    with pytest.raises(ValueError, match="layout"):
        device_layout(packed, 32, s, o, 8, "nibbles")
    with pytest.raises(ValueError, match="order"):
        device_layout(packed, 32, s, o, 8, "swar", "rows")


@pytest.mark.parametrize("g", [8, 4368, 4376])
def test_nibble_sums_are_16_bit_while_they_fit(g):
    """All nibbles 15: the largest sums; uint16 up to g = 4369, int32 past it."""
    n, k = 8, g * 2
    packed = np.full((n, k // 2), 0xFF, np.uint8)
    s = np.ones((n, 2), np.float32)
    *_, wsu, n_padded = device_layout(packed, g, s, np.zeros_like(s), 8)
    assert sums16(g) == (g <= 4369)
    assert wsu.dtype == (np.uint32 if sums16(g) else np.int32)
    assert wsu.nbytes == n_padded * 2 * (2 if sums16(g) else 4)
    v = _sums(wsu, g)                     # padding channels sum to 0
    assert (v != 0).sum() == n * 2 and (v[v != 0] == 15 * g).all()


@pytest.mark.parametrize("g", [8, 32, 40, 272])
def test_the_dot_layout_stores_nibble_sums_with_integer_zero_points_or_long_groups(g):
    """All nibbles 15 and z = -8: the largest sums beside the most negative zero point,
    12 + 4 bits; without zero points the "dot" layout stores none in groups of at most 32
    (its kernels form the sums), and the sums of longer groups; zero points past what 12
    bits of sums allow are refused."""
    from vkqlinear.layout import FORMED_SUMS_MAX
    n, k = 8, g * 2
    packed = np.full((n, k // 2), 0xFF, np.uint8)
    s = np.ones((n, 2), np.float32)
    wsu = device_layout(packed, g, s, np.zeros_like(s), 8, "dot")[3]
    if g <= FORMED_SUMS_MAX:
        assert wsu is None
    else:
        v = wsu.view(np.uint16)
        assert (v != 0).sum() == n * 2 and (v[v != 0] == 15 * g).all()
    *_, wsu, n_padded = device_layout(packed, g, s, 8 * s, 8, "dot",
                                      w_zeros=np.full((n, 2), -8))
    assert wsu.dtype == np.uint32 and wsu.nbytes == n_padded * 2 * 2
    v = wsu.view(np.uint16)               # padding channels: sum 0, z 0
    assert (v != 0).sum() == n * 2 and (v[v != 0] == (15 * g | 0x8000)).all()
    with pytest.raises(ValueError, match="w_zeros"):
        device_layout(np.full((n, 280), 0xFF, np.uint8), 280, s, 8 * s, 8, "dot",
                      w_zeros=np.full((n, 2), -8))


@pytest.mark.parametrize("layout", ["dot", "swar64"])
@pytest.mark.parametrize("g,k", [(32, 64), (20, 40), (4376, 4376)])
@pytest.mark.parametrize("kind", ["symmetric", "integer", "float"])
def test_call_bytes_counts_what_the_kernels_read(g, k, kind, layout):
    """Nibbles of groups padded to 8, per channel and group a scale, a float offset (only
    for float offsets: integer zero points in [-8, 7] ride in the nibble sums' top bits
    where the sums fit 12 bits), the nibble sum (16-bit while it fits; with the OpSDot
    kernels' layout only where it holds the zero points or a group is longer than 32: they
    form the others), then activations and output."""
    import vkqlinear as vq
    from vkqlinear.layout import zeros_packed
    n, t = 16, 3
    g8 = -(-g // 8) * 8
    zeros = np.zeros((n, k // g), np.int32)
    # (groups of 20: as from_executorch makes; scales not float16, so stored as float32)
    s = np.full((n, k // g), 1.1, np.float32)
    if kind != "symmetric":
        zeros[0, 0] = 1
    offsets = -s * zeros
    if kind == "float":
        offsets[1, 0] = 0.25
    qw = vq.QuantizedWeights(np.zeros((n, k // 2), np.uint8), g, s, offsets)
    floats = kind == "float" or (kind == "integer" and not zeros_packed(g8))
    assert qw.offset_kind == (0 if kind == "symmetric" else 1 if floats else 2)
    assert qw.half_data == 0
    stored = layout != "dot" or qw.offset_kind == 2 or g8 > 32
    per = 4 + 4 * floats + stored * (2 if sums16(g8) else 4)
    assert group_data_bytes(g, qw.offset_kind, layout) == per
    assert call_bytes(qw, t, layout) == n * (k // g) * (g8 // 2 + per) + t * (k + 8) + t * n * 4


@pytest.mark.parametrize("g, sym, integer, floats", [(32, 0.625, 0.6875, 0.75),
                                                    (128, 0.546875, 0.546875, 0.578125)])
def test_bytes_per_weight(g, sym, integer, floats):
    """What a T = 1 call of the OpSDot kernels (a GPU's) reads per weight of a 4096 x 4096
    layer, activations and output aside: symmetric weights read the nibbles and a float32
    scale a group; integer zero points in [-8, 7] the 16-bit nibble sum holding them
    besides; float offsets a float32 offset besides the scale; groups longer than 32 the
    16-bit nibble sum with every kind, as the SWAR kernels do (0.0625 more a weight at
    g = 32)."""
    import vkqlinear as vq
    from vkqlinear.quant import quantize_weights
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 4096)).astype(np.float32)
    packed, scales, zeros = quantize_weights(w, g)
    qws = {"sym": vq.prepack(packed, g, scales, np.zeros_like(zeros)),
           "integer": vq.prepack(packed, g, scales, zeros),
           "floats": vq.prepack(packed, g, scales,
                                w_offsets=(-scales * zeros + scales / 3).astype(np.float32))}
    assert [qws[k].offset_kind for k in qws] == [0, 2, 1]
    assert [qws[k].half_data for k in qws] == [0, 0, 0]
    for key, want in (("sym", sym), ("integer", integer), ("floats", floats)):
        assert call_bytes(qws[key], 0) / (4096 * 4096) == want, key
        swar = want + (1 / 16 if key != "integer" and g <= 32 else 0) * 32 / g
        assert call_bytes(qws[key], 0, "swar64") / (4096 * 4096) == swar, key


@pytest.mark.parametrize("g, q4_0, q4_1", [(32, 0.5625, 0.625), (128, 0.53125, 0.546875)])
def test_bytes_per_weight_with_float16_group_data(g, q4_0, q4_1):
    """GGUF's forms, float16 d (and m): Q4_0 reads the nibbles and a float16 scale a group
    (GGUF's own 18 bytes a block of 32), Q4_1 a float16 m besides (GGUF's 20); groups
    longer than 32 a 16-bit nibble sum besides."""
    import vkqlinear as vq
    rng = np.random.default_rng(1)
    n, k = 256, 4096
    packed = rng.integers(0, 256, (n, k // 2), dtype=np.uint8)
    d = rng.uniform(1e-3, 0.1, (n, k // g)).astype(np.float16).astype(np.float32)
    m = (-d * rng.uniform(0.5, 8, d.shape)).astype(np.float16).astype(np.float64)
    a = vq.QuantizedWeights(packed, g, d, 0 * m)
    b = vq.QuantizedWeights(packed, g, d, m + 8 * d)
    assert (a.half_data, b.half_data) == (1, 3)
    assert call_bytes(a, 0) / (n * k) == q4_0 and call_bytes(b, 0) / (n * k) == q4_1


@pytest.mark.parametrize("order", ["blocks", "groups"])
def test_half_group_data(order):
    """float16 scales and offset bases in the group data's order, 8 a block and group in
    16 bytes, the lower channel in the low half of each word."""
    n, k, g, lanes = 20, 64, 16, 8
    q, packed, s, o = _weights(n, k, g, seed=5)
    s16, m16 = s.astype(np.float16), (o / 4).astype(np.float16)
    words, ws, wo, wsu, n_padded = device_layout(packed, g, s, o, lanes, "dot", order,
                                                 scales16=s16, bases16=m16)
    assert ws.dtype == wo.dtype == np.uint32 and ws.nbytes == wo.nbytes == n_padded * (k // g) * 2
    hs, ho = ws.view(np.float16), wo.view(np.float16)
    for ch in range(n):
        b, i = divmod(ch, 8)
        for gi in range(k // g):
            idx = ((((b // lanes) * (k // g) + gi) * lanes + b % lanes) if order == "blocks"
                   else b * (k // g) + gi) * 8 + i
            assert hs[idx] == s16[ch, gi] and ho[idx] == m16[ch, gi]


def test_half_data_is_chosen_where_every_value_reads_back_exactly():
    """Scales in float16 where every one is 0 or a normal float16; float offsets as the
    float16 m of o = m + 8 s where float32's m + 8 s is every offset (GGUF Q4_1)."""
    import vkqlinear as vq
    from vkqlinear.kernels import HALF_OFFSETS, HALF_SCALES
    n, k, g = 8, 64, 32
    packed = np.zeros((n, k // 2), np.uint8)
    d = np.random.default_rng(0).uniform(0.01, 1, (n, 2)).astype(np.float16).astype(np.float32)
    m = (-3 * d).astype(np.float16).astype(np.float64)

    def half(s, o):
        return vq.QuantizedWeights(packed, g, s, np.asarray(o, np.float64)).half_data
    assert half(d, m + 8 * d) == HALF_SCALES | HALF_OFFSETS          # Q4_1
    assert half(d, 0 * m) == HALF_SCALES                             # Q4_0, symmetric
    assert half(d, -2.0 * d) == HALF_SCALES                          # integer zero points
    assert half(d, m + 8 * d + 1e-3) == HALF_SCALES                  # offsets not m + 8 s
    assert half(d + np.float32(1e-4), m + 8 * d) == 0                # scales not float16
    tiny = d.copy()
    tiny[0, 0] = 2.0 ** -20                                          # float16 subnormal
    assert half(tiny, 0 * m) == 0
    tiny[0, 0] = 0.0                                                 # zero is exact
    assert half(tiny, 0 * m) == HALF_SCALES
    big = d.copy()
    big[0, 0] = 1e5                                                  # past float16's range
    assert half(big, 0 * m) == 0
