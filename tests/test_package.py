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
