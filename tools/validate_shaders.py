#!/usr/bin/env python3
"""Compile every shipped shader variant and check it with spirv-val.

For each shader file and define set that vkqlinear.kernels can choose, the SPIR-V is
compiled through the library's pipeline (so the cache is warmed too) and validated with
``spirv-val`` for the target environment; then, for the specialization constants chosen
for a set of representative devices and token counts, the module is specialized with
``spirv-opt --set-spec-const-default-value`` and validated again (this catches, e.g.,
shared arrays sized by specialization constants). Exits non-zero on any failure.

Usage: python tools/validate_shaders.py [--target-env vulkan1.1]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vkqlinear.compiler import DEFAULT_TARGET_ENV, compile_shader
from vkqlinear.dispatch import quantizer_constants
from vkqlinear.kernels import KERNEL_ALGORITHMS, DeviceCaps, candidates, choose_kernel
from vkqlinear.quant import CONVENTIONS

DEVICES = {
    "lavapipe": DeviceCaps(subgroup_size=8, max_invocations=1024, max_shared_memory=32768,
                           subgroup_arithmetic=True, integer_dot=True, storage8=True,
                           int64=True, texel=True),
    "gpu-subgroup-32": DeviceCaps(subgroup_size=32, max_invocations=1024,
                                  max_shared_memory=49152, subgroup_arithmetic=True,
                                  integer_dot=True, dot_accelerated=True, storage8=True,
                                  int64=True, texel=True),
    "gpu-subgroup-64-min-limits": DeviceCaps(subgroup_size=64, max_invocations=128,
                                             max_shared_memory=16384,
                                             subgroup_arithmetic=True),
    "no-subgroup-ops": DeviceCaps(subgroup_size=16, max_invocations=256,
                                  max_shared_memory=16384),
}
TOKENS = (1, 2, 3, 4, 8, 512)
GROUP_SIZES = (8, 32, 128, 4376)      # 4376: nibble sums past 16 bits


def variants():
    """``{(shader, defines): {spec_constants, ...}}`` over everything choose_kernel makes
    and every candidate the tuner may try (kernels.candidates: every TM, workgroup shape
    and CB; at one group size and output kind, which only set other constants)."""
    out = {}
    for caps in DEVICES.values():
        for alg in KERNEL_ALGORITHMS:
            for t in TOKENS:
                for k in candidates(alg, t, 32, False, caps):
                    out.setdefault((k.shader, k.defines), set()).add(k.pipeline_constants())
            for variant in caps.variants(alg):
                for t in TOKENS:
                    for g in GROUP_SIZES:
                        for int8 in (False, True):
                            k = choose_kernel(alg, t, g, int8, caps, variant=variant)
                            # HAS_OFFSET and HALF_DATA, which the weights add: each
                            # kind of offsets, float32 or float16 group data
                            out.setdefault((k.shader, k.defines), set()).update(
                                k.pipeline_constants(offsets, half) for offsets in (0, 1, 2)
                                for half in (0, 1, 3))
    # the on-device activation quantizer (vkqlinear.dispatch) and the calibration kernels
    out[("quantize_tokens.comp", ())] = {tuple(int(c) for c in quantizer_constants(name))
                                         for name in CONVENTIONS}
    out[("measure/calib_read.comp", ())] = set()
    out[("measure/calib_alu.comp", ())] = set()
    return out


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, (p.stdout + p.stderr).strip()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-env", default=DEFAULT_TARGET_ENV)
    args = ap.parse_args(argv)
    for tool in ("spirv-val", "spirv-opt"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install spirv-tools (or run tools/setup.sh)")
            return 2
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for (shader, defines), specs in sorted(variants().items()):
            label = f"{shader} {dict(defines) or ''}".strip()
            spv = Path(tmp) / "v.spv"
            spv.write_bytes(compile_shader(shader, dict(defines), args.target_env))
            rc, out = run(["spirv-val", "--target-env", args.target_env, str(spv)])
            detail = f": {out}" if out else ""
            print(f"{'ok  ' if rc == 0 else 'FAIL'} {label}: spirv-val{detail}")
            failures += rc != 0
            for spec in sorted(specs):
                sp = Path(tmp) / "s.spv"
                values = " ".join(f"{i}:{v}" for i, v in enumerate(spec))
                rc, out = run(["spirv-opt", f"--set-spec-const-default-value={values}",
                               "--freeze-spec-const", str(spv), "-o", str(sp)])
                if rc == 0:
                    rc, out = run(["spirv-val", "--target-env", args.target_env, str(sp)])
                if rc != 0:
                    print(f"FAIL {label} spec {spec}: {out}")
                    failures += 1
            print(f"     {len(specs)} specializations checked")
    print(f"{'FAILED' if failures else 'all variants valid'} ({args.target_env})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
