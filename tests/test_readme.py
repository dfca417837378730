"""The README's Python examples run as written (in order, sharing one namespace), and
give the right values."""

import re
from pathlib import Path

import numpy as np

import vkqlinear as vq
from vkqlinear import conformance

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _check_usage(ns):
    """The ops' block: y and y2 within the contract's tolerance, y8 as the reference."""
    d = dict(x_q=ns["x_q"], x_scale=ns["x_scale"], x_zero_point=ns["x_zp"],
             w_packed=ns["w_packed"], group_size=32, w_scales=ns["w_scales"],
             w_zeros=ns["w_zeros"], w_offsets=None, bias=None)
    for name in ("y", "y2", "ref"):
        ok, msg = conformance.check(ns[name], d)
        assert ok, f"{name}: {msg}"
    y8_ref = vq.linear_qta8a_qga4w_qta8o(ns["x_q"], ns["x_scale"], ns["x_zp"], ns["qw"],
                                         out_scale=ns["out_scale"],
                                         out_zero_point=ns["out_zp"], algorithm="reference")
    assert ns["y8"].dtype == np.int8 and np.abs(ns["y8"].astype(int) - y8_ref).max() <= 1
    # and 4-bit weights keep the float layer's result close
    exact = ns["x"] @ ns["w"].T
    assert np.linalg.norm(ns["y"] - exact) / np.linalg.norm(exact) < 0.1


def _check_qlinear(ns):
    layer = vq.QLinear.from_float(ns["w"], ns["b"], group_size=32)
    x = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    np.testing.assert_allclose(layer(x), layer(x, algorithm="reference"), rtol=1e-4,
                               atol=1e-3)
    assert ns["y"].shape == (8, 96) and ns["y8"].dtype == np.int8


def _check_chaining(ns):
    want = ns["down"](ns["up"](ns["x"]))
    np.testing.assert_allclose(ns["y"], want, rtol=1e-5, atol=1e-5)


def _check_torch(ns):
    import torch
    ref = ns["model"]
    assert ns["y"].shape == (4, 256) and torch.isfinite(ns["y"]).all()
    assert type(ref[0]).__name__ == "QuantizedLinear"


CHECKS = {"linear_qta8a_qga4w(": _check_usage, "QLinear.from_float(w, b": _check_qlinear,
          'output="device"': _check_chaining, "quantize_linears(model": _check_torch}


def test_readme_python_blocks_run_and_are_right(device):
    blocks = _blocks()
    assert len(blocks) >= 4
    ns, checked = {}, set()
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"README.md python block {i + 1}", "exec"), ns)
        except Exception as e:  # name the block that broke
            raise AssertionError(f"README python block {i + 1} failed: {e!r}\n{code}") from e
        for marker, check in CHECKS.items():
            if marker in code and marker not in checked:
                check(ns)
                checked.add(marker)
    assert checked == set(CHECKS)
