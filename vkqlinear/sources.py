"""Weights people already have, as :class:`~vkqlinear.QuantizedWeights`, without
re-quantizing: torchao's 8da4w tensors and modules, ExecuTorch's Vulkan packed tensors, and
GGUF Q4_0 / Q4_1 tensors. Each maps exactly onto ``w = s * q + o`` (docs/spec.md, "Other
sources of the same weights"); the nibble orders live in :mod:`vkqlinear.quant`
(:data:`~vkqlinear.quant.NIBBLE_ORDERS`).

``torchao`` and ``gguf`` are optional: they are imported only by the functions that need
them (install ``vkqlinear[torchao]`` or ``vkqlinear[gguf]``).
"""

from __future__ import annotations

import importlib

import numpy as np

from . import args
from .quant import pack_int4, unpack_int4
from .weights import QuantizedWeights

__all__ = ["from_torchao", "from_executorch", "load_gguf", "executorch_q",
           "executorch_scales", "executorch_weight_sums", "GGUF_TYPES"]


def require(module, extra):
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed here but cannot be imported ({e}): "
                          f"pip install 'vkqlinear[{extra}]' (or pip install {module})") from None


def _weights(q, group_size, scales, offsets=None, zeros=None):
    """``QuantizedWeights`` from signed 4-bit ``q [N, K]``, float32 ``scales [N, G]`` and
    either integer ``zeros`` or exact float64 ``offsets``, checked."""
    n, k = q.shape
    if scales.shape != (n, k // group_size):
        raise ValueError(f"scales: expected shape [{n}, {k // group_size}], got "
                         f"{list(scales.shape)}")
    args.check_finite(scales, "scales")
    if zeros is not None:
        args.check_int8_range(zeros, "zero_point")
        zeros = zeros.astype(np.int32)
        offsets = -scales.astype(np.float64) * zeros
    elif offsets is None:
        offsets = np.zeros(scales.shape, np.float64)
        zeros = np.zeros(scales.shape, np.int32)
    args.check_finite(offsets, "zero_point")
    return QuantizedWeights(pack_int4(q), group_size, np.ascontiguousarray(scales, np.float32),
                            np.ascontiguousarray(offsets, np.float64), zeros)


# -- torchao -----------------------------------------------------------------------------
def _torch_array(t, name):
    """A CPU torch tensor as a numpy array (float types widened to float32, exactly)."""
    import torch
    t = t.detach()
    if t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got one on {t.device}")
    if t.is_floating_point() and t.dtype != torch.float64:
        t = t.to(torch.float32)
    return t.contiguous().numpy()


def _torchao_parts(obj):
    """``(qdata, scale, zero_point, group_size)`` (torch tensors) of a torchao 8da4w weight,
    or ``None`` if ``obj`` is not one."""
    if type(obj).__name__ == "IntxUnpackedToInt8Tensor":
        import torch
        if obj.target_dtype != torch.int4:
            raise ValueError(f"weight: vkqlinear takes 4-bit weights; this torchao tensor has "
                             f"target_dtype {obj.target_dtype}")
        bs = tuple(obj.block_size)
        if len(bs) != 2 or bs[0] != 1:
            raise ValueError(f"weight: expected torchao groups along K (block_size (1, g)), "
                             f"got block_size {bs}")
        return obj.qdata, obj.scale, obj.zero_point, bs[1]
    if type(obj).__name__ == "Int8DynActInt4WeightLinear":
        return obj.weight, obj.scales, obj.zeros, int(obj.groupsize)
    weight = getattr(obj, "weight", None)
    if weight is not None and type(weight).__name__ == "IntxUnpackedToInt8Tensor":
        return _torchao_parts(weight)
    return None


def from_torchao(obj):
    """The :class:`~vkqlinear.QuantizedWeights` of a torchao 8da4w weight, exactly.

    ``obj``: an ``IntxUnpackedToInt8Tensor`` (``quantize_(model,
    Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, ...))``), an
    ``nn.Linear`` holding one, or an ``Int8DynActInt4WeightLinear``
    (``Int8DynActInt4WeightQuantizer``). ``q = qdata`` (int8 in [-8, 7]), ``s = scale``;
    integer zero points give ``o = -s * z``; float zero points (``w = s * (q - zp)``)
    give the offsets ``-s * zp``. The activations of such a model are quantized with
    torchao's convention: pass ``act_quant="torchao"`` to :class:`~vkqlinear.QLinear` (or
    use :func:`vkqlinear.torch.convert_torchao`) to reproduce its integers.
    """
    require("torch", "torchao")
    parts = _torchao_parts(obj)
    if parts is None:
        raise TypeError(f"obj: expected a torchao IntxUnpackedToInt8Tensor, a Linear holding "
                        f"one, or an Int8DynActInt4WeightLinear; got {type(obj).__name__}")
    qdata, scale, zero_point, group_size = parts
    qdata = _torch_array(qdata, "qdata")
    scale = _torch_array(scale, "scale")
    zero_point = _torch_array(zero_point, "zero_point")
    if qdata.ndim != 2 or qdata.dtype != np.int8:
        raise ValueError(f"qdata: expected int8 [N, K], got {qdata.dtype} {list(qdata.shape)}")
    if qdata.size and (qdata.min() < -8 or qdata.max() > 7):
        raise ValueError("qdata: expected 4-bit values in [-8, 7]")
    group_size = args.check_group_size(group_size, qdata.shape[1])
    if zero_point.dtype.kind == "f" and np.array_equal(zero_point, np.rint(zero_point)) and \
            (zero_point.size == 0 or np.abs(zero_point).max() <= 128):
        zero_point = zero_point.astype(np.int32)      # integral float zero points
    if zero_point.dtype.kind == "f":
        return _weights(qdata, group_size, scale.astype(np.float32),
                        offsets=-scale.astype(np.float64) * zero_point.astype(np.float64))
    return _weights(qdata, group_size, scale.astype(np.float32), zeros=zero_point)


# -- ExecuTorch ----------------------------------------------------------------------------
def _ceil(v, m):
    return -(-v // m) * m


def executorch_weight_sums(q, group_size):
    """ExecuTorch's ``weight_sums`` for signed 4-bit ``q [N, K]``: int32 ``[G, ceil8(N)]``,
    the per-group sum of ``q``, zero in the padding columns."""
    n, k = q.shape
    sums = q.reshape(n, k // group_size, group_size).sum(axis=2, dtype=np.int32).T
    out = np.zeros((k // group_size, _ceil(n, 8)), np.int32)
    out[:, :n] = sums
    return out


def executorch_q(weights, group_size, in_features, out_features):
    """``(q [N, K], group_size)``: signed ``q`` from ExecuTorch's packed uint8
    ``[N, ceil8(K)/2]`` (low nibble first), the shapes and the padding checked."""
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise TypeError(f"{name}: expected a positive int, got {v!r}")
    k, n = int(in_features), int(out_features)
    w = args.as_array(weights, "weights", (np.uint8,))
    if w.shape != (n, _ceil(k, 8) // 2):
        raise ValueError(f"weights: expected uint8 [out_features, ceil8(in_features)/2] = "
                         f"[{n}, {_ceil(k, 8) // 2}], got {list(w.shape)}")
    group_size = args.check_group_size(group_size, k, multiple=4)
    q = unpack_int4(w, "low_first")
    if np.any(q[:, k:]):
        raise ValueError(f"weights: the padding past in_features={k} must hold q = 0 "
                         "(ExecuTorch pads with 0); is in_features right?")
    return np.ascontiguousarray(q[:, :k]), group_size


def executorch_scales(weight_scales, g, n):
    """``s [N, G]`` float32 from ExecuTorch's transposed, padded ``[G, ceil4(N)]``."""
    s = args.as_array(weight_scales, "weight_scales", (np.float32, np.float16))
    if s.ndim != 2 or s.shape[0] != g or s.shape[1] not in (n, _ceil(n, 4)):
        raise ValueError(f"weight_scales: expected [G, ceil4(N)] = [{g}, {_ceil(n, 4)}] "
                         f"(transposed), got {list(s.shape)}")
    return np.ascontiguousarray(s[:, :n].T.astype(np.float32))


def from_executorch(weights, weight_scales, group_size, in_features, out_features):
    """The :class:`~vkqlinear.QuantizedWeights` of ExecuTorch's Vulkan ``linear_q4gsw`` /
    ``linear_dq8ca_q4gsw`` tensors, exactly: ``weights`` uint8 ``[N, ceil8(K)/2]`` (byte
    ``j`` holds element ``2j`` in the LOW nibble, K padded with ``q = 0``), ``weight_scales``
    float32 ``[G, ceil4(N)]`` (transposed, padded), symmetric (``o = 0``). ``group_size``
    is a multiple of 4, as ExecuTorch allows; groups that are not a multiple of 8 are
    padded for the kernels (:mod:`vkqlinear.layout`)."""
    q, group_size = executorch_q(weights, group_size, in_features, out_features)
    s = executorch_scales(weight_scales, q.shape[1] // group_size, q.shape[0])
    return _weights(q, group_size, s)


# -- GGUF ----------------------------------------------------------------------------------
GGUF_TYPES = ("Q4_0", "Q4_1")      # what load_gguf converts


def _gguf_block(name, data, n, k, type_name):
    """``(q [N, K] int8, d [N, K/32], m [N, K/32] or None)`` float32, from GGUF blocks."""
    per = 18 if type_name == "Q4_0" else 20
    want = (n, k // 32 * per)
    if data.dtype != np.uint8 or data.shape != want:
        raise ValueError(f"{name}: expected {want[0] * want[1]} bytes of {type_name} blocks "
                         f"as {list(want)}, got {data.dtype} {list(data.shape)} (truncated "
                         "or corrupt file?)")
    b = np.ascontiguousarray(data).reshape(n, k // 32, per)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) \
        if type_name == "Q4_1" else None
    q = unpack_int4(b[..., per - 16:].reshape(n, k // 2), "gguf")
    return q, d, m


def load_gguf(path, names=None):
    """Every Q4_0 / Q4_1 2-D tensor of the GGUF file ``path`` (or only those in ``names``)
    as ``{name: QuantizedWeights}``, in the file's order; an ``[N, K]`` weight (ggml shape
    ``[K, N]``) gives ``N x K`` weights with group size 32.

    Q4_0 (``w = d * (u - 8)``) gives ``q = u - 8``, ``s = d``, ``o = 0``; Q4_1
    (``w = d * u + m``) gives ``q = u - 8``, ``s = d``, ``o = m + 8 d`` (exact in float64;
    the kernels read it rounded to float32). The device holds ``d`` and ``m`` as the
    float16 they are (:attr:`~vkqlinear.QuantizedWeights.half_data`, where every one is 0
    or a normal float16), and the kernels form ``o`` from them as float32 does. A tensor
    named in ``names`` that is missing, or of another type, is a ``ValueError`` naming
    it; an unreadable, truncated or corrupt file is a ``ValueError`` too.
    """
    gguf = require("gguf", "gguf")
    wanted = None if names is None else [names] if isinstance(names, str) else list(names)
    try:
        reader = gguf.GGUFReader(path)
        tensors = list(reader.tensors)
    except FileNotFoundError:
        raise
    except Exception as e:  # the reader raises many kinds on a damaged file
        raise ValueError(f"path: {path} is not a readable GGUF file ({type(e).__name__}: "
                         f"{e})") from None
    if wanted is not None:
        missing = sorted(set(wanted) - {t.name for t in tensors})
        if missing:
            raise ValueError(f"names: no tensor {', '.join(map(repr, missing))} in {path}")
    out = {}
    for t in tensors:
        if wanted is not None and t.name not in wanted:
            continue
        type_name = t.tensor_type.name
        dims = [int(v) for v in t.shape]
        if type_name not in GGUF_TYPES or len(dims) != 2:
            if wanted is None:
                continue          # not a 4-bit matrix: not ours to load
            what = f"type {type_name}" if type_name not in GGUF_TYPES else f"{len(dims)}-D"
            raise ValueError(f"names: tensor {t.name!r} is {what}; vkqlinear loads 2-D "
                             f"{' and '.join(GGUF_TYPES)} tensors")
        k, n = dims                               # ggml order: the innermost first
        q, d, m = _gguf_block(f"tensor {t.name!r}", t.data, n, k, type_name)
        if not (np.all(np.isfinite(d)) and (m is None or np.all(np.isfinite(m)))):
            raise ValueError(f"tensor {t.name!r}: non-finite block scales (corrupt file?)")
        if m is None:
            out[t.name] = _weights(q, 32, d)
        else:
            out[t.name] = _weights(q, 32, d, offsets=m.astype(np.float64) + 8.0 * d)
    return out
