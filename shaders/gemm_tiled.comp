#version 450
#extension GL_GOOGLE_include_directive : require
// TILED GEMM for linear_qta8a_qga4w (docs/spec.md): each invocation computes a tile of
// TM tokens x CB blocks of 8 output channels over all of K.
// Grid: x = invocations along the channels (NP / 8 / CB rounded up, LOCAL_X per
// workgroup), y = token tiles of TM (LOCAL_Y per workgroup), starting at token
// p.token_base.
#include "common.glsl"
#include "tile.glsl"

void main() {
    uint v = gl_GlobalInvocationID.x;
    uint t0 = p.token_base + gl_GlobalInvocationID.y * TM;
    if (tile_block_of(v, 0u) >= p.NP / 8u || t0 >= p.T) return;
    uint G = p.K / GROUP_SIZE;

    tile_begin(v, t0);
    // a flush after every GROUP_BLOCK groups: a loop of its own (a test in the group loop
    // costs selects on every iteration)
    for (uint g0 = 0u; g0 < G; g0 += GROUP_BLOCK) {
        uint end = min(G, g0 + GROUP_BLOCK);
        for (uint g = g0; g < end; g++) tile_group(g, G);
        if (end - g0 == GROUP_BLOCK) tile_flush();
    }
    tile_flush();
    tile_store(t0);
}
