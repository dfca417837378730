"""Conformance: named cases and the contract's tolerance (docs/spec.md), shared by the
pytest suite and by ``python -m vkqlinear conformance`` (so a user can check a device
without the repository).

The checker is independent of :mod:`vkqlinear.reference`: it dequantizes everything to
float64 and multiplies (``y* = xr @ w.T + bias``), then applies the contract's bound::

    B[t, n] = |x_scale[t]| * sum_k |x_q[t, k] - zp[t]| * (|s q| + |o|) + |bias[n]|
    float output: |y - y*| <= 2**-16 * B + 1e-30
    int8 output:  |out - out*| <= 1 everywhere, and >= 99% exactly equal
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels import KERNEL_ALGORITHMS, SPECS
from .ops import linear_qta8a_qga4w, linear_qta8a_qga4w_qta8o
from .quant import offsets_to_scales_and_zeros, quantize_per_token, quantize_weights, unpack_int4
from .weights import prepack

__all__ = ["Case", "cases", "make_inputs", "expected", "check", "run_case",
           "kernel_variants", "self_checked_variants", "run_suite", "MAX_FAILURES"]

# A variant that fails this many cases is not run on the rest (the run stays short).
MAX_FAILURES = 3


def kernel_variants(device):
    """``[(algorithm, Variant)]`` for every kernel variant ``device`` runs (those its
    self-check found wrong left out)."""
    return [(a, v) for a in KERNEL_ALGORITHMS for v in device.caps.variants(a)]


def self_checked_variants(device):
    """``[(algorithm, Variant, wrong)]`` for every variant the device's features allow,
    each through its self-check first (:meth:`vkqlinear.Device.verify`); ``wrong`` is the
    self-check's finding, ``None`` where it answered right."""
    from dataclasses import replace

    from .kernels import choose_kernel
    caps = replace(device.caps, excluded=frozenset())
    out = []
    for a in KERNEL_ALGORITHMS:
        for v in caps.variants(a):
            kernel = choose_kernel(a, SPECS[a].check_tokens, 32, False, caps, variant=v)
            ok = device.verify(kernel)
            out.append((a, v, None if ok else device.wrong_variants().get(f"{a}/{v.name}")))
    return out


def run_suite(device, quick=False, max_failures=MAX_FAILURES, report=print,
              defaults_only=False):
    """Every case through every variant the device runs (``defaults_only``: the variant
    each kernel uses by default on it); a variant stops after ``max_failures`` failed
    cases. ``report(line)`` gets each failure as it happens. Returns ``[(algorithm,
    Variant, passed, run, total, note)]``; ``note`` says why a variant was not run (its
    self-check) or stopped."""
    cs = cases(quick=quick)
    rows = []
    variants = self_checked_variants(device)
    if defaults_only:
        variants = [(a, v, w) for a, v, w in variants
                    if w is None and v == device.caps.variants(a)[0]]
    for alg, var, wrong in variants:
        if wrong is not None:
            rows.append((alg, var, 0, 0, len(cs), f"its self-check answered wrong: {wrong}"))
            continue
        passed = failed = run = 0
        for c in cs:
            try:
                ok, msg = run_case(c, alg, device, var)
            except Exception as e:  # a crash in one case is a failure, not the end
                ok, msg = False, f"{type(e).__name__}: {e}"
            run += 1
            passed += ok
            if not ok:
                failed += 1
                report(f"  FAIL [{alg}/{var}] {c.name}: {msg}")
                if failed >= max_failures:
                    break
        note = f"stopped after {failed} failures" if run < len(cs) else ""
        rows.append((alg, var, passed, run, len(cs), note))
    return rows


# (T, K, N, g): ExecuTorch's own test shapes for linear_qta8a_qga4w(_qta8o).
EXECUTORCH_SHAPES = [(2, 8, 8, 8), (2, 16, 8, 8), (4, 64, 32, 32), (4, 128, 32, 32),
                     (8, 64, 16, 32), (256, 256, 256, 32), (1, 256, 256, 32),
                     (1, 32, 32, 32), (1, 64, 16, 32)]


@dataclass(frozen=True)
class Case:
    """One conformance case: shape, conventions and value regime."""
    name: str
    lead: tuple            # leading dims of x_q (T = their product)
    k: int
    n: int
    group_size: int
    zeros: str = "int"     # "int" (w = s (q - z)), "sym" (z = 0) or "float" (w = s q + zf)
    out: str = "float"     # "float" or "int8"
    bias: bool = True
    regime: str = "normal"  # see make_inputs
    seed: int = 0
    quick: bool = True     # part of --quick

    @property
    def t(self):
        return int(np.prod(self.lead, dtype=np.int64))


def cases(quick=False):
    """All named cases (a quick subset with ``quick=True``)."""
    out = []
    for i, (t, k, n, g) in enumerate(EXECUTORCH_SHAPES):
        for zeros, outk in (("int", "float"), ("float", "int8")):
            out.append(Case(f"executorch T{t} K{k} N{n} g{g} {zeros}-zeros {outk}",
                            (t,), k, n, g, zeros, outk, bias=(i % 2 == 0), seed=i,
                            quick=(t * n <= 4096)))
    edge = [
        ("N=1", (3,), 64, 1, 32), ("T=1", (1,), 128, 40, 32), ("T=0", (0,), 64, 16, 32),
        ("T one past a tile", (5,), 64, 24, 16), ("T=9", (9,), 64, 16, 32),
        ("N one past a tile", (4,), 64, 65, 32), ("N one past 8", (2,), 32, 9, 8),
        ("g=8", (3,), 64, 16, 8), ("g=K", (3,), 256, 16, 256),
        ("large K", (2,), 4096, 16, 128), ("large K, g=8", (1,), 2048, 8, 8),
        ("batch dims", (2, 3), 64, 16, 32), ("batch dims with 0", (2, 0), 64, 16, 32),
        # groups not a multiple of the cooperative workers (subgroup size 8, 16, 32 or 64):
        # the last round of the "groups" weight order is partial
        ("G=12", (3,), 96, 16, 8), ("G=40", (2,), 1280, 24, 32),
        # nibble sums past 16 bits (15 * g > 65535): int32 in every layout; the SHARED
        # GEMM forms them a stage at a time
        ("g=4376", (2,), 4376, 16, 4376),
    ]
    for j, (name, lead, k, n, g) in enumerate(edge):
        for zeros, outk, bias in (("int", "float", True), ("float", "int8", False),
                                  ("float", "float", False), ("int", "int8", True),
                                  ("sym", "float", True)):
            out.append(Case(f"{name} {zeros}-zeros {outk}{' bias' if bias else ''}", lead, k,
                            n, g, zeros, outk, bias, seed=100 + j,
                            quick=(zeros, outk) in (("int", "float"), ("float", "int8"),
                                                    ("sym", "float"))))
    for j, regime in enumerate(("x=-128", "x=127", "zp=-128", "zp=127", "tiny scales",
                                "huge scales", "x=zp", "q=0")):
        for outk in ("float", "int8"):
            out.append(Case(f"extreme {regime} {outk}", (4,), 128, 16, 32,
                            "int" if j % 2 else "float", outk, True, regime, seed=200 + j))
    # weight zero points far from the nibbles' range: to 120 a kernel may fold them into its
    # integer sums (q - z fits int8), past it not
    for j, regime in enumerate(("z=+-120", "z=-128..127")):
        for outk in ("float", "int8"):
            out.append(Case(f"extreme {regime} {outk}", (5,), 128, 24, 32, "int", outk, True,
                            regime, seed=300 + j))
    return [c for c in out if c.quick] if quick else out


def make_inputs(case):
    """Deterministic inputs for ``case``: a dict of the op's arguments (SPEC layouts) plus
    ``w_offsets`` (float32 ``[N, G]``) for the checker."""
    rng = np.random.default_rng(case.seed)
    t, k, n, g = case.t, case.k, case.n, case.group_size
    x = rng.standard_normal((t, k)).astype(np.float32) * 3
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.2
    x_q, x_scale, x_zp = quantize_per_token(x) if t else (
        np.zeros((0, k), np.int8), np.zeros(0, np.float32), np.zeros(0, np.int32))
    w_packed, w_scales, w_zeros = quantize_weights(w, g, symmetric=case.zeros == "sym")
    r = case.regime
    if r == "x=-128":
        x_q[:] = -128
    elif r == "x=127":
        x_q[:] = 127
    elif r == "zp=-128":
        x_zp[:] = -128
    elif r == "zp=127":
        x_zp[:] = 127
    elif r == "x=zp":
        x_q[:] = 100
        x_zp[:] = 100
    elif r == "q=0":
        w_packed[:] = 0x88
    elif r == "tiny scales":
        x_scale[:] = np.float32(1e-6)
        w_scales[:] = np.float32(1e-6)
    elif r == "huge scales":
        x_scale[:] = np.float32(1e6)
        w_scales[:] = np.float32(1e6)
    if r.startswith("zp"):
        w_zeros[:] = -8 if r == "zp=-128" else 7
    elif r == "z=+-120":
        w_zeros[:] = rng.choice([-120, -119, 119, 120], w_zeros.shape)
    elif r == "z=-128..127":
        w_zeros[:] = rng.integers(-128, 128, w_zeros.shape)
        w_zeros[0, 0] = -128
    if case.zeros in ("int", "sym"):
        w_offsets = -w_scales * w_zeros.astype(np.float32)
    else:  # float zeros: an arbitrary offset, not tied to an integer zero point
        w_offsets = (rng.standard_normal(w_scales.shape).astype(np.float32)
                     * w_scales * 4).astype(np.float32)
    bias = (rng.standard_normal(n).astype(np.float32) * 2) if case.bias else None
    lead = case.lead
    d = dict(x_q=x_q.reshape(*lead, k), x_scale=x_scale.reshape(lead),
             x_zero_point=x_zp.reshape(lead), w_packed=w_packed, group_size=g,
             w_scales=w_scales, w_zeros=w_zeros, w_offsets=w_offsets, bias=bias)
    if case.out == "int8":
        out_scales, out_zps = covering_qparams(expected(d)[0])
        d["out_scale"] = out_scales.reshape(lead)
        d["out_zero_point"] = out_zps.reshape(lead)
    return d


def covering_qparams(y):
    """Per-token int8 output ``(scale float32 [T], zero point int32 [T])`` that cover each
    row of ``y [T, N]`` and zero, so that the int8 values are meaningful."""
    lo = np.minimum(y.min(axis=1, initial=0), 0)
    hi = np.maximum(y.max(axis=1, initial=0), 0)
    out_scales = np.maximum((hi - lo) / 255.0, 1e-30).astype(np.float32)
    out_zps = np.clip(np.rint(-128 - lo / out_scales), -128, 127).astype(np.int32)
    return out_scales, out_zps


def _weights_f64(d):
    q = unpack_int4(d["w_packed"]).astype(np.float64)
    n, k = q.shape
    g = d["group_size"]
    if d.get("w_offsets") is None:   # integer zero points: o = -s * z
        o = -np.asarray(d["w_scales"], np.float64) * d["w_zeros"]
    else:
        o = np.asarray(d["w_offsets"], np.float64)
    s = np.repeat(np.asarray(d["w_scales"], np.float64), g, axis=1)
    o = np.repeat(o, g, axis=1)
    return s, q, o


def expected(d):
    """``(y*, B)``, float64 ``[T, N]``, by plain dequantize-and-multiply."""
    k = d["x_q"].shape[-1]
    xq = np.asarray(d["x_q"], np.float64).reshape(-1, k)
    zp = np.asarray(d["x_zero_point"], np.float64).reshape(-1, 1)
    x_scales = np.asarray(d["x_scale"], np.float64).reshape(-1, 1)
    s, q, o = _weights_f64(d)
    xd = xq - zp
    w = s * q + o
    y = x_scales * (xd @ w.T)
    bound = np.abs(x_scales) * (np.abs(xd) @ (np.abs(s * q) + np.abs(o)).T)
    if d.get("bias") is not None:
        b = np.asarray(d["bias"], np.float64)
        y = y + b
        bound = bound + np.abs(b)
    return y, bound


def check(out, d, expect=None):
    """``(ok, message)``: ``out`` against the contract's tolerance for inputs ``d``
    (``expect``: :func:`expected`'s ``(y*, B)`` for them, if already computed)."""
    y, bound = expected(d) if expect is None else expect
    n = y.shape[1]
    lead = d["x_q"].shape[:-1]
    if "out_scale" in d:
        if out.dtype != np.int8 or out.shape != tuple(lead) + (n,):
            return False, f"expected int8 {tuple(lead) + (n,)}, got {out.dtype} {out.shape}"
        out_scales = np.asarray(d["out_scale"], np.float64).reshape(-1, 1)
        out_zps = np.asarray(d["out_zero_point"], np.float64).reshape(-1, 1)
        ref = np.clip(np.rint(y / out_scales) + out_zps, -128, 127)
        diff = np.abs(out.reshape(-1, n).astype(np.float64) - ref)
        worst = diff.max(initial=0)
        exact = float((diff == 0).mean()) if diff.size else 1.0
        ok = worst <= 1 and exact >= 0.99
        return ok, f"max |out - out*| = {worst:g}, exact {100 * exact:.2f}%"
    if out.dtype != np.float32 or out.shape != tuple(lead) + (n,):
        return False, f"expected float32 {tuple(lead) + (n,)}, got {out.dtype} {out.shape}"
    err = np.abs(out.reshape(-1, n).astype(np.float64) - y)
    tol = 2.0 ** -16 * bound + 1e-30
    bad = err > tol
    if bad.any():
        i = np.unravel_index(np.argmax(err - tol), err.shape)
        return False, (f"{int(bad.sum())} elements out of tolerance; worst at {i}: "
                       f"got {out.reshape(-1, n)[i]!r}, want {y[i]!r}, tol {tol[i]:.3g}")
    ratio = float((err / tol).max(initial=0))
    return True, f"max error / tolerance = {ratio:.3g}"


def run_case(case, algorithm, device=None, variant=None):
    """Run ``case`` through the public op with ``algorithm`` (and ``variant`` forced, if
    given); returns ``(ok, message)``."""
    d = make_inputs(case)
    common = dict(algorithm=algorithm, device=device, variant=variant)
    if case.zeros in ("int", "sym"):
        d_check = dict(d, w_offsets=None)
        if case.out == "float":
            out = linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], d["w_packed"],
                                     d["group_size"], d["w_scales"], d["w_zeros"],
                                     bias=d["bias"], **common)
        else:
            qw = prepack(d["w_packed"], d["group_size"], d["w_scales"], d["w_zeros"])
            out = linear_qta8a_qga4w_qta8o(d["x_q"], d["x_scale"], d["x_zero_point"], qw,
                                           out_scale=d["out_scale"],
                                           out_zero_point=d["out_zero_point"],
                                           bias=d["bias"], **common)
    else:
        d_check = dict(d, w_zeros=None)
        sz = offsets_to_scales_and_zeros(d["w_scales"], d["w_offsets"])
        if case.out == "int8":
            out = linear_qta8a_qga4w_qta8o(d["x_q"], d["x_scale"], d["x_zero_point"],
                                           d["w_packed"], d["group_size"], sz,
                                           d["out_scale"], d["out_zero_point"],
                                           bias=d["bias"], **common)
        else:
            qw = prepack(d["w_packed"], d["group_size"], scales_and_zeros=sz)
            out = linear_qta8a_qga4w(d["x_q"], d["x_scale"], d["x_zero_point"], qw,
                                     bias=d["bias"], **common)
    return check(out, d_check)
