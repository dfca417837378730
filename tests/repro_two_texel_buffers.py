"""Minimal reproducer of a lavapipe fault (vkqlinear.policy): one dispatch that reads two
uniform texel buffers of R32G32B32A32_UINT and stores what it fetched, component by
component. Needs only kp (built by tools/setup.sh: its patch binds texel buffers) and
glslangValidator. Prints "right" or "wrong" (and what was fetched).

    python tests/repro_two_texel_buffers.py [device index]

lavapipe of Mesa 22.3.6 is right; of Mesa 25.0.7 it fetches (0, 2, 1, 0) from a texel
holding (0, 1, 2, 3), at every LP_NATIVE_VECTOR_WIDTH, and without the (unused) int64
extension line the same dispatch crashes the process. The fault depends on the code's
shape: one texel buffer alone, whole-uvec4 stores, or a swizzled second fetch read right.
"""

import os
import subprocess
import sys
import tempfile

import kp
import numpy as np

SHADER = """#version 450
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
layout(local_size_x = 8) in;
layout(binding = 0) uniform usamplerBuffer A;
layout(binding = 1) uniform usamplerBuffer B;
layout(std430, binding = 2) writeonly buffer Y { uint y[]; };
void main() {
    uint i = gl_GlobalInvocationID.x;
    uvec4 a = texelFetch(A, int(i)), b = texelFetch(B, int(i));
    y[8u * i] = a.x; y[8u * i + 1u] = a.y; y[8u * i + 2u] = a.z; y[8u * i + 3u] = a.w;
    y[8u * i + 4u] = b.x; y[8u * i + 5u] = b.y; y[8u * i + 6u] = b.z; y[8u * i + 7u] = b.w;
}
"""
R32G32B32A32_UINT = 107
TEXELS = 64


def spirv():
    with tempfile.TemporaryDirectory() as d:
        comp, spv = os.path.join(d, "repro.comp"), os.path.join(d, "repro.spv")
        with open(comp, "w") as f:
            f.write(SHADER)
        subprocess.run(["glslangValidator", "-V", "--target-env", "vulkan1.1", "-o", spv,
                        comp], check=True, capture_output=True)
        with open(spv, "rb") as f:
            return f.read()


def main(device_index=0):
    mgr = kp.Manager(device_index)
    a = np.arange(4 * TEXELS, dtype=np.uint32)
    b = a + 1000
    ta, tb = mgr.tensor_t(a), mgr.tensor_t(b)
    ty = mgr.tensor_t(np.zeros(8 * TEXELS, np.uint32))
    kp.Algorithm.set_next_texel_formats([R32G32B32A32_UINT, R32G32B32A32_UINT, 0])
    algo = mgr.algorithm([ta, tb, ty], spirv(), (TEXELS // 8, 1, 1),
                         np.array([], np.uint32), np.array([], np.uint32))
    (mgr.sequence().record(kp.OpTensorSyncDevice([ta, tb, ty]))
     .record(kp.OpAlgoDispatch(algo)).record(kp.OpTensorSyncLocal([ty])).eval())
    got = ty.data().reshape(TEXELS, 2, 4)
    want = np.stack([a.reshape(-1, 4), b.reshape(-1, 4)], axis=1)
    print(mgr.get_device_properties()["device_name"])
    print("right" if np.array_equal(got, want) else "wrong")
    if not np.array_equal(got, want):
        print(f"texel 0 of A: fetched {got[0, 0].tolist()}, holds {want[0, 0].tolist()}")
    sys.stdout.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
