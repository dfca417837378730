"""The prepacked weight layouts, decoded independently from their description in
vkqlinear/weights.py and shaders/common.glsl (no GPU needed)."""

import numpy as np
import pytest

from vkqlinear.quant import pack_int4
from vkqlinear.weights import device_layout


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
    words, ws, wo, wsu, np_ = device_layout(packed, g, s, o, lanes, "swar")
    assert np_ % (8 * lanes) == 0 and np_ >= n and words.size == np_ * k // 8
    for ch in range(n):
        b, i = divmod(ch, 8)
        for kk in range(k):
            w = int(words[((b // lanes) * k + kk) * lanes + b % lanes])
            assert (w >> (4 * i)) & 0xF == q[ch, kk] + 8


@pytest.mark.parametrize("lanes", [8, 16])
def test_swar64_layout_pairs_k(lanes):
    k, g, n = 64, 32, 70
    q, packed, s, o = _weights(n, k, g, seed=2)
    words, *_ = device_layout(packed, g, s, o, lanes, "swar64")
    for ch in range(n):
        b, i = divmod(ch, 8)
        for kk in range(k):
            pair = ((b // lanes) * (k // 2) + kk // 2) * lanes + b % lanes
            w = int(words[2 * pair + kk % 2])
            assert (w >> (4 * i)) & 0xF == q[ch, kk] + 8


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("n", [8, 70])
def test_dot_layout(lanes, n):
    k, g = 64, 32
    q, packed, s, o = _weights(n, k, g, seed=1)
    words, ws, wo, wsu, np_ = device_layout(packed, g, s, o, lanes, "dot")
    assert words.size == np_ * k // 8
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
    for a, b_ in zip((ws, wo, wsu), same[1:4]):
        np.testing.assert_array_equal(a, b_)
    for ch in range(n):
        b, c = divmod(ch, 8)
        for gi in range(k // g):
            idx = (((b // lanes) * (k // g) + gi) * lanes + b % lanes) * 8 + c
            assert ws[idx] == s[ch, gi] and wo[idx] == o[ch, gi]
            assert wsu[idx] == int(q[ch, gi * g:(gi + 1) * g].astype(int).sum() + 8 * g)


def test_unknown_layout_is_refused():
    q, packed, s, o = _weights(8, 32, 32)
    with pytest.raises(ValueError, match="layout"):
        device_layout(packed, 32, s, o, 8, "nibbles")
