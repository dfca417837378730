"""The device weight layout: how :class:`~vkqlinear.QuantizedWeights` (SPEC.md's public
layout) is rearranged for the shaders, made once per (weights, device, kernel layout) by
:class:`~vkqlinear.device_linear.DeviceLinear` and read by ``shaders/common.glsl``.

* channels are padded to ``NP``, a multiple of ``8 * lanes``, and taken in blocks of 8;
* the weights come in *units*, what one shader load brings of one block:
  - layout ``"swar"`` (the SWAR int32 kernels): a unit is one uint32 word holding the raw
    nibbles ``u = q + 8`` of the 8 channels of a block at one k (bits ``4i .. 4i+3`` for
    channel ``8b + i``);
  - layout ``"swar64"`` (SWAR reading 64-bit words, ``int64`` variant): eight such words,
    k .. k + 7 side by side, read as one u64vec4 (lavapipe pays per load instruction);
  - layout ``"dot"`` (the OpSDot kernels): eight words, one per channel, each holding 8 k:
    byte m of k-octet j = ``u[8j + m] | u[8j + 4 + m] << 4``, so that ``w & 0x0F0F0F0F``
    and ``(w >> 4) & 0x0F0F0F0F`` pair with the two activation words of the octet;
* the units are ordered ``"blocks"`` (the TILED kernel and the shared-memory COOPERATIVE
  kernel, whose neighbouring invocations are neighbouring blocks):
  ``[b // lanes][k unit][b % lanes]``; or ``"groups"`` (the subgroup COOPERATIVE kernel,
  whose ``lanes`` neighbouring invocations are workers taking groups ``w, w + lanes, ...``
  of one block): ``[b][g // lanes][k unit within the group][g % lanes]``, the last round
  holding only the ``G % lanes`` groups left. Either way neighbouring invocations read
  neighbouring memory at each step;
* per group: ``s``, ``o`` (float32) and ``sum u``, ordered
  ``[b // lanes][g][b % lanes][8]`` (``"blocks"``) or ``[b][g][8]`` (``"groups"``).
  ``sum u`` is uint16 while ``15 * group_size`` fits 16 bits (:func:`sums16`; two per
  uint32 word, the lower channel in the low half), else int32; the ``"dot"`` layout
  stores none in groups of at most 32 (its kernels form them from the weight words,
  :func:`stores_sums`) unless they carry zero points. Where every ``o`` is 0
  (symmetric weights) the shaders do not read the offsets
  (:class:`~vkqlinear.device_linear.WeightBuffers` uploads none); where every ``o`` is
  ``-s z`` for an integer ``z`` in [-8, 7] and ``15 * group_size`` fits 12 bits
  (:func:`zeros_packed`), ``z`` rides in the top 4 bits of the uint16 sums and no offsets
  are uploaded either: the shaders form ``o = -s z`` as float32 does, so
  every result is the one the stored offsets give.
* in 16 bits where every value reads back exactly
  (:attr:`~vkqlinear.QuantizedWeights.half_data`): the scales as float16, and float
  offsets as the float16 ``m`` of ``o = m + 8 s`` (GGUF Q4_1's min; the shaders form
  ``o`` in float32, bit for bit the stored one), 8 a block and group in 16 bytes, the
  lower channel in the low half of each word.

Groups whose size is not a multiple of 8 (ExecuTorch allows multiples of 4) are padded to
the next multiple of 8 with ``q = 0`` (:func:`padded_group_size`, :func:`pad_groups`); the
activations are padded to match with their zero point, so that the padding adds nothing
to either integer sum.

``lanes`` is the number of neighbouring invocations that read neighbouring units;
:mod:`vkqlinear.kernels` picks it per device and kernel (the subgroup size; at least 8 for
``"blocks"``; the SHARED GEMM reads the subgroup GEMV's ``"groups"`` order and lanes where
the device's GEMV reduces in a subgroup). A layer that two kernels read in different
layouts (the TILED GEMM and the subgroup GEMV, where ``auto`` runs both, or a tuned
variant of another layout) keeps both on the device: twice the weight memory.
"""

from __future__ import annotations

import numpy as np

from .kernels import HALF_OFFSETS, HALF_SCALES, OFFSETS_FLOAT, OFFSETS_INTEGER
from .quant import unpack_int4

__all__ = ["device_layout", "padded_channels", "padded_group_size", "pad_groups",
           "split_channels", "sums16", "stores_sums", "FORMED_SUMS_MAX", "zeros_packed",
           "group_data_bytes", "call_bytes"]


# The largest group (k) whose nibble sums the OpSDot kernels form instead of reading: four
# octets, whose byte sums need no accumulator; longer groups cost the T <= 4 kernels more
# instructions and registers than the 2 bytes a group they save.
FORMED_SUMS_MAX = 32


def sums16(group_size):
    """Whether the nibble sums of groups of ``group_size`` (the shaders' size) are stored
    as uint16: ``sum u <= 15 * group_size`` fits. ``shaders/common.glsl``'s SUMS16."""
    return 15 * group_size <= 0xFFFF


def stores_sums(layout, offsets, group_size):
    """Whether weights of offset kind ``offsets`` in groups of ``group_size`` (the shaders'
    size) hold nibble sums in ``layout``: the OpSDot kernels (``"dot"``) form them where a
    group has at most :data:`FORMED_SUMS_MAX` k (one round of byte sums), so there only
    integer zero points, which ride in the sums, keep them. ``shaders/common.glsl``'s
    FORM_SUMS is the same rule."""
    return layout != "dot" or int(offsets) == OFFSETS_INTEGER or group_size > FORMED_SUMS_MAX


def zeros_packed(group_size):
    """Whether 4-bit integer zero points fit beside the nibble sums of groups of
    ``group_size`` (the shaders' size) in their 16 bits: ``sum u <= 15 * group_size`` in
    12 bits, the zero point in the top 4 (two's complement; the weights' offset kind
    :data:`~vkqlinear.kernels.OFFSETS_INTEGER`)."""
    return 15 * group_size <= 0x0FFF


def group_data_bytes(group_size, offsets=OFFSETS_FLOAT, layout="dot", half=0):
    """Bytes of group data the kernels of ``layout`` read per channel and group
    (``offsets``: the weights' offset kind; ``half``: their HALF_* bits): the scale
    (float32, or float16 with :data:`~vkqlinear.kernels.HALF_SCALES`), the offset where
    offsets are floats (float32, or the float16 ``m`` with
    :data:`~vkqlinear.kernels.HALF_OFFSETS`; integer zero points ride in the nibble sums'
    top bits) and the nibble sum where :func:`stores_sums` (16-bit where
    :func:`sums16`)."""
    scale = 2 if int(half) & HALF_SCALES else 4
    offset = 0 if int(offsets) != OFFSETS_FLOAT else 2 if int(half) & HALF_OFFSETS else 4
    g = padded_group_size(group_size)
    sums = (2 if sums16(g) else 4) if stores_sums(layout, offsets, g) else 0
    return scale + offset + sums


def call_bytes(weights, t, layout="dot"):
    """Bytes one call at ``t`` tokens moves (channels unpadded) with a kernel reading
    ``layout`` (the OpSDot kernels' by default, a GPU's): the nibbles as the kernels read
    them (groups padded to a multiple of 8), the group data, the activations with their
    scale and zero point, and the float output."""
    w = weights
    nibbles = w.N * w.G * padded_group_size(w.group_size) // 2
    group = w.N * w.G * group_data_bytes(w.group_size, w.offset_kind, layout, w.half_data)
    return nibbles + group + t * (w.K + 8) + t * w.N * 4


def padded_channels(n, lanes):
    """``NP``: ``n`` output channels padded to a whole number of ``8 * lanes`` blocks."""
    blk = 8 * lanes
    return -(-n // blk) * blk


def padded_group_size(group_size):
    """The group size the shaders see: ``group_size`` rounded up to a multiple of 8."""
    return -(-group_size // 8) * 8


def pad_groups(a, group_size, fill):
    """``a [..., K]`` with each group of ``group_size`` along its last axis padded to
    :func:`padded_group_size` with ``fill`` (a scalar, or one value per row of ``a``).
    ``a`` itself when no padding is needed."""
    g8 = padded_group_size(group_size)
    if g8 == group_size:
        return a
    lead, k = a.shape[:-1], a.shape[-1]
    out = np.empty(lead + (k // group_size, g8), a.dtype)
    out[..., :group_size] = a.reshape(lead + (k // group_size, group_size))
    out[..., group_size:] = np.asarray(fill, a.dtype).reshape(
        np.shape(fill) + (1, 1) if np.ndim(fill) else ())
    return out.reshape(lead + (k // group_size * g8,))


def device_layout(w_packed, group_size, w_scales, w_offsets, lanes, layout="swar",
                  order="blocks", w_zeros=None, scales16=None, bases16=None):
    """The shaders' weight layout: ``layout`` ``"swar"``, ``"swar64"`` or ``"dot"`` in
    ``order`` ``"blocks"`` or ``"groups"`` (see the module doc).

    Returns ``(words uint32, s float32, o float32, sum_u, NP)``, each flat; ``sum_u`` is
    int32, or uint16 pairs in uint32 words where :func:`sums16`, or ``None`` where the
    layout's kernels form the sums (:func:`stores_sums`). With ``w_zeros`` (integer zero
    points in [-8, 7], ``[N, G]``, where :func:`zeros_packed`) each uint16 holds ``sum u``
    in its low 12 bits and ``z`` in its top 4 (two's complement).
    ``scales16`` / ``bases16`` (float16 ``[N, G]``): the scales / the ``m`` of the offsets
    to store instead, as float16 pairs in uint32 words.
    """
    n, k2 = w_packed.shape
    k = 2 * k2
    g = k // group_size
    n_padded = padded_channels(n, lanes)
    nb = n_padded // 8
    u = np.zeros((n_padded, k), dtype=np.uint8)          # raw nibbles; padding channels are 0
    u[:n] = unpack_int4(w_packed) + 8
    # units[b][j][:]: the uint32 words one load of block b at k-unit j brings
    if layout in ("swar", "swar64"):
        ub = u.reshape(nb, 8, k)
        words = np.zeros((nb, k), dtype=np.uint32)
        for i in range(8):
            words |= ub[:, i, :].astype(np.uint32) << np.uint32(4 * i)
        per = 1 if layout == "swar" else 8       # swar64: k .. k + 7 side by side
        units = words.reshape(nb, k // per, per)
    elif layout == "dot":
        uo = u.reshape(n_padded, k // 8, 2, 4).astype(np.uint32)   # [channel][octet][half][m]
        byte = uo[:, :, 0, :] | (uo[:, :, 1, :] << np.uint32(4))
        words = (byte << (np.arange(4, dtype=np.uint32) * np.uint32(8))).sum(
            axis=2, dtype=np.uint32)                              # [channel][octet]
        units = words.reshape(nb, 8, k // 8).transpose(0, 2, 1)   # [block][octet][8]
    else:
        raise ValueError(f"layout: expected 'swar', 'swar64' or 'dot', got {layout!r}")
    ku, width = units.shape[1], units.shape[2]
    if order == "blocks":       # [b // lanes][j][b % lanes]
        units = units.reshape(nb // lanes, lanes, ku, width).transpose(0, 2, 1, 3)
    elif order == "groups":     # [b][g // lanes][j within the group][g % lanes]
        per_group = units.reshape(nb, g, ku // g, width)
        units = np.concatenate([per_group[:, r:r + lanes].transpose(0, 2, 1, 3)
                                .reshape(nb, -1) for r in range(0, g, lanes)], axis=1)
    else:
        raise ValueError(f"order: expected 'blocks' or 'groups', got {order!r}")

    def groups(a, dtype):
        full = np.zeros((n_padded, g), dtype=dtype)
        full[:n] = a
        if order == "groups":   # [b][g][8]
            return full.reshape(nb, 8, g).transpose(0, 2, 1).ravel()
        return full.reshape(nb // lanes, lanes, 8, g).transpose(0, 3, 1, 2).ravel()

    sums = None
    if stores_sums(layout, OFFSETS_INTEGER if w_zeros is not None else OFFSETS_FLOAT,
                   group_size):
        sum_u = u.reshape(n_padded, g, group_size).sum(axis=2, dtype=np.int32)[:n]
        if w_zeros is not None:
            if not zeros_packed(group_size) or np.any((w_zeros < -8) | (w_zeros > 7)):
                raise ValueError("w_zeros: zero points in [-8, 7] with groups of at most "
                                 "273 ride in the nibble sums; these do not fit")
            sum_u = sum_u | ((np.asarray(w_zeros, np.int32) & 0xF) << 12)
        sums = groups(sum_u, np.int32) if not sums16(group_size) else \
            np.ascontiguousarray(groups(sum_u, np.uint16)).view(np.uint32)

    def data(a, a16):
        if a16 is None:
            return groups(a, np.float32)
        return np.ascontiguousarray(groups(a16, np.float16)).view(np.uint32)
    return (np.ascontiguousarray(units).ravel(), data(w_scales, scales16),
            data(w_offsets, bases16), sums, n_padded)


def split_channels(n, k, group_size, lanes, t, out_bytes, limit):
    """The output channels of an ``N x K`` layer in pieces whose buffers each fit one
    binding of ``limit`` bytes: ``[(n0, n1), ...]``, one piece when the layer fits.

    A piece's buffers scale with its padded channel count ``NP``: the weight units
    (``NP * K / 2`` bytes), each array of group data (``NP * G * 4``), the bias
    (``NP * 4``) and the output at ``t`` tokens (``t * NP * out_bytes``). Pieces are whole
    blocks of ``8 * lanes`` channels (the layout's interleave), as equal as they can be.
    """
    blk = 8 * lanes
    weights = max(blk * k // 2, blk * (k // group_size) * 4, blk * 4)
    output = t * blk * out_bytes
    fit = limit // max(weights, output)
    if fit < 1:
        if output > weights:
            raise ValueError(f"x_q: the output of {t} tokens for one block of {blk} channels "
                             f"needs {output} bytes in one binding, more than the limit of "
                             f"{limit}; call with fewer tokens at a time")
        raise ValueError(f"w_packed: one block of {blk} channels at K={k} needs {weights} "
                         f"bytes in one binding, more than the limit of {limit}")
    blocks = -(-n // blk)
    pieces = -(-blocks // fit)
    per = -(-blocks // pieces)
    edges = [min(n, i * per * blk) for i in range(pieces)] + [n]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
