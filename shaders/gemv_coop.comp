#version 450
#extension GL_GOOGLE_include_directive : require
// COOPERATIVE GEMV for linear_qta8a_qga4w (SPEC.md): a workgroup of LOCAL_X x LOCAL_Y
// invocations owns LOCAL_X blocks of 8 output channels for TM tokens; its LOCAL_Y workers
// split K (worker w takes groups w, w + LOCAL_Y, ...) and their partial sums are reduced
// through shared memory. The weights are read once per TM tokens, not once per token.
// Grid: x = channel blocks / LOCAL_X, y = token tiles of TM from p.token_base.
// LOCAL_Y must be a power of two.
#include "common.glsl"
#include "tile.glsl"

shared float partial[LOCAL_Y][LOCAL_X * TM * 8u];

void main() {
    uint lx = gl_LocalInvocationID.x;
    uint w = gl_LocalInvocationID.y;
    uint b = gl_WorkGroupID.x * LOCAL_X + lx;
    uint t0 = p.token_base + gl_WorkGroupID.y * TM;
    uint G = p.K / GROUP_SIZE;
    // Every invocation reaches the barriers below; only real blocks do work.
    bool live = b < p.NP / 8u && t0 < p.T;

    tile_begin(min(t0, p.T - 1u));
    if (live) {
        uint n = 0u;
        for (uint g = w; g < G; g += LOCAL_Y) {
            tile_group(b, g, G);
            if (++n == GROUP_BLOCK) { tile_flush(); n = 0u; }
        }
    }
    tile_flush();

    [[unroll]] for (uint i = 0u; i < TM; i++) {
        [[unroll]] for (uint c = 0u; c < 8u; c++) partial[w][(lx * TM + i) * 8u + c] = tile_total[i][c];
    }
    barrier();
    for (uint s = LOCAL_Y / 2u; s > 0u; s >>= 1u) {
        if (w < s) {
            [[unroll]] for (uint i = 0u; i < TM * 8u; i++) partial[w][lx * TM * 8u + i] += partial[w + s][lx * TM * 8u + i];
        }
        barrier();
    }
    if (w == 0u && live) {
        [[unroll]] for (uint i = 0u; i < TM; i++) {
            [[unroll]] for (uint c = 0u; c < 8u; c++) tile_total[i][c] = partial[0][(lx * TM + i) * 8u + c];
        }
        tile_store(b, t0);
    }
}
