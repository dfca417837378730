"""The shaders ship inside the wheel (package data), not only in a checkout."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_the_shaders(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    whl = next(tmp_path.glob("vkqlinear-*.whl"))
    names = set(zipfile.ZipFile(whl).namelist())
    for f in (ROOT / "shaders").iterdir():
        if f.suffix in (".comp", ".glsl"):
            assert f"vkqlinear/shaders/{f.name}" in names
    assert "vkqlinear/conformance.py" in names and "vkqlinear/_probe.py" in names


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
