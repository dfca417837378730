#version 450
// Calibration: int32 multiply-add throughput. Each invocation runs p.iters iterations of
// UNROLL steps of CHAINS independent chains a = a * m + c (one multiply-add each): the
// loop's own counter and branch are then a small share (the kernels' inner loops are
// unrolled; a limit measured with loop overhead let them pass it). How many chains keep
// the ALU busy without spilling registers depends on the device: the benchmark takes the
// fastest of several. Used by the benchmark only.
#extension GL_EXT_control_flow_attributes : require
layout(constant_id = 0) const uint LOCAL_X = 64;
layout(constant_id = 1) const uint CHAINS = 32;
layout(constant_id = 2) const uint UNROLL = 1;
layout(local_size_x_id = 0) in;
layout(push_constant) uniform Params { uint iters; int m; int c; } p;
layout(std430, binding = 0) writeonly buffer Dst { int DST[]; };

void main() {
    int a[CHAINS];
    [[unroll]] for (uint j = 0u; j < CHAINS; j++) a[j] = int(gl_GlobalInvocationID.x + j);
    for (uint i = 0u; i < p.iters; i++) {
        [[unroll]] for (uint u = 0u; u < UNROLL; u++) {
            [[unroll]] for (uint j = 0u; j < CHAINS; j++) a[j] = a[j] * p.m + p.c;
        }
    }
    int r = 0;
    [[unroll]] for (uint j = 0u; j < CHAINS; j++) r ^= a[j];
    DST[gl_GlobalInvocationID.x] = r;
}
