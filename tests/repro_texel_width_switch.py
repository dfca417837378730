"""Reproducer of a lavapipe fault (vkqlinear.policy): a texel-buffer kernel run from a
shader cache that a run at another LP_NATIVE_VECTOR_WIDTH filled.

    python tests/repro_texel_width_switch.py [device index]

Runs vkqlinear's TILED GEMM with texel loads (the quirk table and the self-check off) on
one layer twice, each in a process of its own sharing a new, empty Mesa shader cache:
first at LP_NATIVE_VECTOR_WIDTH=256, then at 512. Prints "right" when both runs match the
reference path, else "wrong" (a run that crashes is wrong too). lavapipe of Mesa 22.3.6
is right; of Mesa 25.0.7 the second run is wrong (and the other way round, 512 then 256,
it crashes); with an empty cache at each width both are right.
"""

import os
import subprocess
import sys
import tempfile

RUN = """
import sys
import numpy as np
import vkqlinear as vq
rng = np.random.default_rng(7)
w = rng.integers(-8, 8, (64, 256)).astype(np.int8)
qw = vq.prepack(vq.pack_int4(w), 32, rng.uniform(0.01, 0.1, (64, 8)).astype(np.float32),
                rng.integers(-8, 8, (64, 8)).astype(np.int32))
x = vq.quantize_per_token(rng.standard_normal((16, 256)).astype(np.float32))
dev = vq.Device(int(sys.argv[1]))
y = vq.linear_qta8a_qga4w(*x, qw, algorithm="tiled", device=dev, variant="texel+int64")
want = vq.linear_qta8a_qga4w(*x, qw, algorithm="reference")
print("right" if np.allclose(y, want, rtol=1e-4, atol=1e-3) else "wrong")
"""


def main(device_index=0):
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, MESA_SHADER_CACHE_DIR=cache, VKQLINEAR_DRIVER_QUIRKS="ignore",
                   VKQLINEAR_SELF_CHECK="0",
                   VKQLINEAR_TUNING_FILE=os.path.join(home, "tuning.json"))
        verdicts = []
        for width in ("256", "512"):
            proc = subprocess.run([sys.executable, "-c", RUN, str(device_index)],
                                  env=dict(env, LP_NATIVE_VECTOR_WIDTH=width),
                                  capture_output=True, text=True, timeout=300)
            lines = [v for v in proc.stdout.split() if v in ("right", "wrong")]
            verdict = lines[0] if lines and proc.returncode == 0 else "wrong"
            print(f"LP_NATIVE_VECTOR_WIDTH={width}: {verdict}"
                  + ("" if proc.returncode == 0 else f" (exit {proc.returncode})"))
            if proc.returncode > 0:
                print(proc.stderr[-2000:])
            verdicts.append(verdict)
    print("right" if verdicts == ["right", "right"] else "wrong")
    sys.stdout.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
