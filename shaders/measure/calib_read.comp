#version 450
// Calibration: streaming read bandwidth. Workgroup w reads its own contiguous chunk of
// CHUNK uvec4 (16-byte) words, its LOCAL_X invocations interleaved so that at each step
// they read LOCAL_X neighbouring words; each invocation folds what it read into one value
// (so nothing is optimised away) and writes it out. Used by the benchmark only.
// TEXEL_LOADS: the same bytes read as a uniform texel buffer of R32G32B32A32_UINT, the
// way the texel kernel variants read their weights.
layout(constant_id = 0) const uint LOCAL_X = 8;
layout(local_size_x_id = 0) in;
layout(push_constant) uniform Params { uint words; uint chunk; } p;
#ifdef TEXEL_LOADS
layout(binding = 0) uniform usamplerBuffer SRCT;
uvec4 load(uint i) { return texelFetch(SRCT, int(i)); }
#else
layout(std430, binding = 0) readonly buffer Src { uvec4 SRC[]; };
uvec4 load(uint i) { return SRC[i]; }
#endif
layout(std430, binding = 1) writeonly buffer Dst { uint DST[]; };

void main() {
    uint begin = gl_WorkGroupID.x * p.chunk;
    uint end = min(begin + p.chunk, p.words);
    uvec4 acc = uvec4(0u);
    for (uint i = begin + gl_LocalInvocationID.x; i < end; i += LOCAL_X) acc ^= load(i);
    DST[gl_GlobalInvocationID.x] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
