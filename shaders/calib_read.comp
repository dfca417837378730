#version 450
// Calibration: streaming read bandwidth. Workgroup w reads its own contiguous chunk of
// CHUNK uvec4 (16-byte) words, its LOCAL_X invocations interleaved so that at each step
// they read LOCAL_X neighbouring words; each invocation folds what it read into one value
// (so nothing is optimised away) and writes it out. Used by the benchmark only.
layout(constant_id = 0) const uint LOCAL_X = 8;
layout(local_size_x_id = 0) in;
layout(push_constant) uniform Params { uint words; uint chunk; } p;
layout(std430, binding = 0) readonly buffer Src { uvec4 SRC[]; };
layout(std430, binding = 1) writeonly buffer Dst { uint DST[]; };

void main() {
    uint begin = gl_WorkGroupID.x * p.chunk;
    uint end = min(begin + p.chunk, p.words);
    uvec4 acc = uvec4(0u);
    for (uint i = begin + gl_LocalInvocationID.x; i < end; i += LOCAL_X) acc ^= SRC[i];
    DST[gl_GlobalInvocationID.x] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
