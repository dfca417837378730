"""Argument checking: every public entry point turns its inputs into canonical numpy arrays
here, so that each kind of bad input gets the same ``TypeError`` / ``ValueError`` naming
the argument, whatever the algorithm.

Accepted and converted (never misread): Python lists and tuples of numbers, torch CPU
tensors, non-contiguous / Fortran-ordered arrays, byte-swapped (big-endian) dtypes,
read-only arrays. Refused: a numpy array or tensor of the wrong dtype (no silent casts of
floats to ints or back), wrong shapes, out-of-range values.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .device import check_device
from .kernels import ALGORITHMS

_ALGORITHM_SET = frozenset(ALGORITHMS)
_INT_KINDS = "iu"


def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch"


def like_input(out, x):
    """``out`` as a torch tensor when ``x`` (the activations) is one, else unchanged."""
    if type(x) is not np.ndarray and _is_torch(x):
        import torch
        return torch.from_numpy(out)
    return out


def as_array(x, name, dtypes):
    """``x`` as a C-contiguous, native-endian ndarray whose dtype is one of ``dtypes``.

    ``dtypes`` is a tuple of numpy scalar types (``np.int8``, ...); the first one is the
    canonical one that lists and tuples are converted to (if their values fit exactly).
    """
    if (type(x) is np.ndarray and x.dtype.type in dtypes and x.dtype.isnative
            and x.flags.c_contiguous):
        return x                 # the common case, first: an op call checks five arrays
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    if _is_torch(x):
        if getattr(x, "device", None) is not None and str(x.device) != "cpu":
            raise ValueError(f"{name}: expected a CPU tensor, got one on {x.device}")
        x = x.detach().resolve_conj().resolve_neg().numpy() if hasattr(x, "detach") else x
    if isinstance(x, (list, tuple)) or isinstance(x, numbers.Number):
        try:
            a = np.asarray(x)
        except ValueError as e:  # ragged lists
            raise ValueError(f"{name}: expected a rectangular array: {e}") from None
        if a.dtype == object or a.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected numbers, got {a.dtype}")
        want = np.dtype(dtypes[0])
        if a.size and a.dtype.kind == "f" and want.kind in _INT_KINDS:
            if not np.all(np.isfinite(a)) or np.any(a != np.rint(a)):
                raise TypeError(f"{name}: expected integers for dtype {want}, got {a.dtype}")
        if a.size and want.kind in _INT_KINDS:
            info = np.iinfo(want)
            if a.min() < info.min or a.max() > info.max:
                raise ValueError(f"{name}: values out of range for {want} "
                                 f"[{info.min}, {info.max}]")
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range floats -> inf,
            return np.ascontiguousarray(a.astype(want))      # refused by the range checks
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, list or torch tensor, "
                        f"got {type(x).__name__}")
    dt = x.dtype
    if not dt.isnative:
        dt = dt.newbyteorder("=")
    if dt not in [np.dtype(d) for d in dtypes]:
        names = " or ".join(str(np.dtype(d)) for d in dtypes)
        raise TypeError(f"{name}: expected dtype {names}, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=dt)


def check_shape(a, name, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(a.shape)}")


def per_token(x, name, dtypes, lead, t):
    """A per-token vector given as ``[T]`` or with the leading dims of ``x_q``."""
    if (type(x) is np.ndarray and x.shape == (t,) and x.dtype.type in dtypes
            and x.dtype.isnative and x.flags.c_contiguous):
        return x                 # as_array's common case, without the call
    a = as_array(x, name, dtypes)
    if a.shape == (t,):
        return a
    if a.shape != tuple(lead):
        raise ValueError(f"{name}: expected shape [{t}] or {list(lead)} (one per token), "
                         f"got {list(a.shape)}")
    return a.reshape(t)


# Vectors up to this size are checked element by element in Python: cheaper than numpy's
# reductions for the few tokens of a decode step (an op call right after a kernel finds
# the host's caches cold, where each numpy call costs several microseconds).
PYTHON_CHECK_MAX = 16


def check_finite_positive(a, name):
    """Every element finite and > 0. Small vectors as a list with builtins: the least is
    > 0 (no -inf, no zero) and the sum is finite (a NaN or +inf anywhere makes it NaN or
    inf; 16 float32 values cannot overflow a float64 sum)."""
    if a.size <= PYTHON_CHECK_MAX:
        v = a.tolist() if a.ndim == 1 else a.ravel().tolist()
        ok = not v or (0.0 < min(v) and math.isfinite(sum(v)))
    else:   # min and max propagate NaN, which fails both comparisons
        ok = a.min() > 0 and a.max() < np.inf
    if not ok:
        raise ValueError(f"{name}: expected finite values > 0")


def check_finite(a, name):
    # the array method, not np.all: its Python wrapper costs ~10 us a call after a kernel
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite values")


def check_int8_range(a, name):
    """Every element in [-128, 127] (small vectors as a list with builtins)."""
    if a.size <= PYTHON_CHECK_MAX:
        v = a.tolist() if a.ndim == 1 else a.ravel().tolist()
        ok = not v or (-128 <= min(v) and max(v) <= 127)
    else:
        ok = a.min() >= -128 and a.max() <= 127
    if not ok:
        raise ValueError(f"{name}: expected values in [-128, 127], "
                         f"got [{a.min()}, {a.max()}]")


def check_group_size(group_size, k, multiple=8):
    """``group_size`` as an int: a positive multiple of ``multiple`` (8 for the ops'
    contract; ExecuTorch's layouts allow 4) that divides ``k``; else the error, by name."""
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"group_size: expected an int, got {type(group_size).__name__}")
    g = int(group_size)
    if g <= 0 or g % multiple:
        raise ValueError(f"group_size: expected a positive multiple of {multiple}, got {g}")
    if g > k or k % g:
        raise ValueError(f"group_size: expected a divisor of K={k}, got {g}")
    return g


_SIGNED_INTS = (np.int32, np.int8, np.int16, np.int64)
_INT8, _FLOAT32 = (np.int8,), (np.float32,)
# numpy's native dtypes are singletons: `a.dtype is _F32` is the cheapest exact test
_I8, _F32, _I32 = np.dtype(np.int8), np.dtype(np.float32), np.dtype(np.int32)


def _int32(a):
    return a if a.dtype.type is np.int32 else a.astype(np.int32)


def activations(x_q, x_scale, x_zero_point):
    """Check ``x_q [..., K]`` int8 and its per-token qparams; returns
    ``(x_q [T, K], x_scale [T], x_zero_point [T], lead)``."""
    if (type(x_q) is np.ndarray and type(x_scale) is np.ndarray
            and type(x_zero_point) is np.ndarray and x_q.dtype is _I8
            and x_scale.dtype is _F32 and x_zero_point.dtype is _I32 and x_q.ndim == 2
            and x_q.shape[0] == 1 and x_scale.shape == x_zero_point.shape == (1,)):
        # a decode step's canonical arguments (one token), accepted in one pass: right
        # after a kernel the host's caches are cold and every call below costs
        # microseconds; anything else (and every refusal) takes the general path
        k = x_q.shape[1]
        if (k and not k % 2 and x_q.flags.c_contiguous and 0.0 < x_scale.item() < math.inf
                and -128 <= x_zero_point.item() <= 127):      # NaN fails both comparisons
            return x_q, x_scale, x_zero_point, (1,)
    x = as_array(x_q, "x_q", _INT8)
    shape = x.shape
    if not shape:
        raise ValueError(f"x_q: expected shape [..., K], got {list(shape)}")
    k = shape[-1]
    if k == 0 or k % 2:
        raise ValueError(f"x_q: K (last dimension) must be even and > 0, got K={k}")
    lead = shape[:-1]
    t = shape[0] if len(shape) == 2 else math.prod(lead)
    x_scales = per_token(x_scale, "x_scale", _FLOAT32, lead, t)
    check_finite_positive(x_scales, "x_scale")
    x_zps = per_token(x_zero_point, "x_zero_point", _SIGNED_INTS, lead, t)
    check_int8_range(x_zps, "x_zero_point")
    if x_zps.dtype.type is not np.int32:
        x_zps = x_zps.astype(np.int32)
    return (x if len(shape) == 2 else x.reshape(t, k)), x_scales, x_zps, lead


def packed_weights(w_packed, k):
    w = as_array(w_packed, "w_packed", (np.uint8,))
    if w.ndim != 2 or w.shape[0] == 0:
        raise ValueError(f"w_packed: expected shape [N, K/2] = [N, {k // 2}] with N > 0 "
                         f"(K={k} from x_q), got {list(w.shape)}")
    check_weights_k(2 * w.shape[1], k, w.shape[0])
    return w


def check_weights_k(k_weights, k, n):
    """The weights' K against the activations' (``x_q [..., K]``)."""
    if k_weights != k:
        raise ValueError(f"w_packed: expected shape [N, K/2] = [{n}, {k // 2}] to match "
                         f"x_q's K={k}, got K={k_weights}")


def output_qparams(out_scale, out_zero_point, lead, t):
    out_scales = per_token(out_scale, "out_scale", (np.float32,), lead, t)
    check_finite_positive(out_scales, "out_scale")
    out_zps = per_token(out_zero_point, "out_zero_point", _SIGNED_INTS, lead, t)
    check_int8_range(out_zps, "out_zero_point")
    return out_scales, _int32(out_zps)


def bias_vector(bias, n, padded=None):
    """``bias [n]`` float32, or ``None``; ``padded``: a longer length also accepted (its
    first ``n`` values are the bias)."""
    if bias is None:
        return None
    b = as_array(bias, "bias", (np.float32,))
    if padded is not None and b.ndim == 1 and b.shape[0] == padded:
        return np.ascontiguousarray(b[:n])
    if padded is not None and (b.ndim != 1 or b.shape[0] != n):
        raise ValueError(f"bias: expected [{n}] (or padded to [{padded}]), got "
                         f"{list(b.shape)}")
    check_shape(b, "bias", (n,))
    return b


def algorithm_name(algorithm):
    if type(algorithm) is str and algorithm in _ALGORITHM_SET:
        return algorithm
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm: expected a str, got {type(algorithm).__name__}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {algorithm!r}")
    return algorithm


def device_arg(device):
    """``device``: a :class:`~vkqlinear.Device` or ``None``."""
    return check_device(device)
