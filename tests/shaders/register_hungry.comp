#version 450
#extension GL_EXT_control_flow_attributes : require
// A test shader for the pipeline-statistics path: N accumulators stay live across a loop,
// so at N = 320 an invocation needs more registers than any GPU has and must spill; at
// N = 8 it needs few.
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint N = 8u;
layout(std430, binding = 0) buffer Values { float v[]; };
layout(push_constant) uniform Params { uint rounds; } p;

void main() {
    uint i = gl_GlobalInvocationID.x;
    float acc[N];
    [[unroll]] for (uint j = 0u; j < N; j++) acc[j] = v[i * N + j];
    for (uint k = 0u; k < p.rounds; k++) {
        float x = v[k * 7u + i];
        [[unroll]] for (uint j = 0u; j < N; j++) acc[j] = acc[j] * x + v[k + j];
    }
    [[unroll]] for (uint j = 0u; j < N; j++) v[i * N + j] = acc[j];
}
