"""The shaders ship inside the wheel (package data), not only in a checkout."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_the_shaders(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    whl = next(tmp_path.glob("vkqlinear-*.whl"))
    names = set(zipfile.ZipFile(whl).namelist())
    shaders = [f for f in (ROOT / "shaders").rglob("*") if f.suffix in (".comp", ".glsl")]
    assert any(f.parent.name == "measure" for f in shaders)
    for f in shaders:
        assert f"vkqlinear/shaders/{f.relative_to(ROOT / 'shaders').as_posix()}" in names
    for module in ("conformance", "_probe", "measure/bench", "measure/common"):
        assert f"vkqlinear/{module}.py" in names


def test_importing_the_package_loads_no_measurement_code():
    """`import vkqlinear` loads the runtime only; the benchmark, tuner, calibration and
    model benchmark load when used (vq.tune, the command line)."""
    code = ("import sys, vkqlinear; print(' '.join(sorted(m for m in sys.modules "
            "if m.startswith('vkqlinear'))))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True, cwd=ROOT).stdout.split())
    assert "vkqlinear.device" in loaded
    measurement = {m for m in loaded if m.startswith("vkqlinear.measure")}
    assert not measurement, measurement
    code = ("import vkqlinear; from vkqlinear.measure.tuner import tune; "
            "assert vkqlinear.tune is tune")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _help(cmd, *args):
    p = subprocess.run(cmd + list(args) + ["--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("sub", [None, "info", "demo", "conformance", "bench", "tune",
                                 "shader-stats"])
def test_every_command_explains_itself_with_an_example(sub):
    """CPU only: each subcommand's --help says what it does, shows an example under its
    own name, and prints no reStructuredText markup or checkout-only paths."""
    out = _help([sys.executable, "-m", "vkqlinear"], *([sub] if sub else []))
    prog = "python -m vkqlinear" + (f" {sub}" if sub else "")
    assert out.startswith(f"usage: {prog} ")
    assert f"examples:\n  {prog}" in out
    assert "``" not in out and ":func:" not in out and "docs/" not in out


def test_the_console_script_prints_its_own_name():
    script = Path(sys.executable).with_name("vkqlinear")
    if not script.exists():
        pytest.skip("the vkqlinear console script is not installed beside this Python")
    for sub in ([], ["tune"]):
        assert _help([str(script)], *sub).startswith(
            "usage: " + " ".join(["vkqlinear"] + sub) + " ")
