#version 450
#extension GL_GOOGLE_include_directive : require
#ifdef SUBGROUP_REDUCE
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
// COOPERATIVE GEMV for linear_qta8a_qga4w (docs/spec.md): the workers of a workgroup split K
// for the same output channels (worker w takes weight groups w, w + W, w + 2W, ...) and
// their partial sums are reduced. The weights are read once per TM tokens, not once per
// token. One block of 8 channels per invocation (TILE_CB 1; the CB constant is not read).
// Grid: x = channel
// blocks / blocks per workgroup, y = token tiles of TM tokens from p.token_base. Two code
// shapes (#define):
//
//   default          workgroup LOCAL_X blocks x LOCAL_Y workers; the reduction goes through
//                    shared memory (LOCAL_Y must be a power of two).
//   SUBGROUP_REDUCE  workgroup LOCAL_X workers x LOCAL_Y blocks; the workers of a block are
//                    the lanes of one subgroup (the host sets LOCAL_X to the device's
//                    subgroup size) and reduce with subgroupAdd: no shared memory and no
//                    barrier, which also keeps CPU implementations (lavapipe) from
//                    splitting the kernel at barriers. A device may run the pipeline at
//                    another subgroup size than the one it reports; the kernel checks, and
//                    then reduces each row through shared memory instead (slower, right).
#include "common.glsl"
#define TILE_CB 1u
#include "tile.glsl"

#ifdef SUBGROUP_REDUCE
const uint WORKERS = LOCAL_X;
// The fallback's scratch: one value per invocation (LOCAL_X * LOCAL_Y <= the device's
// maxComputeWorkGroupInvocations, so it fits any device's shared memory).
shared float row_sum[LOCAL_Y][LOCAL_X];

// tile_total summed over the workers of each block through shared memory, one value at a
// time (call in uniform control flow: every invocation of the workgroup). The loops stay
// loops: every barrier a CPU driver meets in the code is a split point of the shader
// (lavapipe turns barriers into coroutines), and unrolled, TM x 8 x (log2 LOCAL_X + 2)
// of them took LLVM minutes to compile in Mesa 25's lavapipe.
void reduce_rows_shared(uint w, uint lb) {
    float v[TM * 8u];
    [[unroll]] for (uint i = 0u; i < TM; i++) {
        [[unroll]] for (uint c = 0u; c < 8u; c++) v[i * 8u + c] = tile_total[0][i][c];
    }
    [[dont_unroll]] for (uint j = 0u; j < TM * 8u; j++) {
        row_sum[lb][w] = v[j];
        barrier();
        [[dont_unroll]] for (uint s = LOCAL_X / 2u; s > 0u; s >>= 1u) {
            if (w < s) row_sum[lb][w] += row_sum[lb][w + s];
            barrier();
        }
        v[j] = row_sum[lb][0];
        barrier();
    }
    [[unroll]] for (uint i = 0u; i < TM; i++) {
        [[unroll]] for (uint c = 0u; c < 8u; c++) tile_total[0][i][c] = v[i * 8u + c];
    }
}
#else
const uint WORKERS = LOCAL_Y;
shared float partial[LOCAL_Y][LOCAL_X * TM * 8u];
#endif

void main() {
#ifdef SUBGROUP_REDUCE
    uint w = gl_LocalInvocationID.x;
    uint lb = gl_LocalInvocationID.y;
    uint b = gl_WorkGroupID.x * LOCAL_Y + lb;
#else
    uint w = gl_LocalInvocationID.y;
    uint lb = gl_LocalInvocationID.x;
    uint b = gl_WorkGroupID.x * LOCAL_X + lb;
#endif
    uint t0 = p.token_base + gl_WorkGroupID.y * TM;
    uint G = p.K / GROUP_SIZE;
    // Every invocation reaches the reduction below; only real blocks and tokens do work.
    bool live = b < p.NP / 8u && t0 < p.T;

    tile_begin(b, min(t0, p.T - 1u));
    if (live) {
        // every GROUP_BLOCK groups of this worker, a flush: a loop of its own (a test in
        // the group loop costs selects on every iteration)
        for (uint g0 = w; g0 < G; g0 += WORKERS * GROUP_BLOCK) {
            uint end = min(G, g0 + WORKERS * GROUP_BLOCK);
            for (uint g = g0; g < end; g += WORKERS) tile_group(g, G);
            if (g0 + WORKERS * GROUP_BLOCK <= G) tile_flush();
        }
    }
    tile_flush();

#ifdef SUBGROUP_REDUCE
    // One subgroup per row of LOCAL_X workers only when the pipeline runs at the reported
    // size; gl_SubgroupSize and gl_NumSubgroups are uniform across the workgroup.
    if (gl_SubgroupSize == LOCAL_X && gl_NumSubgroups == LOCAL_Y) {
        [[unroll]] for (uint i = 0u; i < TM; i++) {
            [[unroll]] for (uint c = 0u; c < 8u; c++) tile_total[0][i][c] = subgroupAdd(tile_total[0][i][c]);
        }
    } else {
        reduce_rows_shared(w, lb);
    }
#else
    [[unroll]] for (uint i = 0u; i < TM; i++) {
        [[unroll]] for (uint c = 0u; c < 8u; c++) partial[w][(lb * TM + i) * 8u + c] = tile_total[0][i][c];
    }
    barrier();
    [[dont_unroll]] for (uint s = LOCAL_Y / 2u; s > 0u; s >>= 1u) {   // one barrier site
        if (w < s) {
            [[unroll]] for (uint i = 0u; i < TM * 8u; i++) partial[w][lb * TM * 8u + i] += partial[w + s][lb * TM * 8u + i];
        }
        barrier();
    }
    [[unroll]] for (uint i = 0u; i < TM; i++) {
        [[unroll]] for (uint c = 0u; c < 8u; c++) tile_total[0][i][c] = partial[0][(lb * TM + i) * 8u + c];
    }
#endif
    if (w == 0u && live) tile_store(t0);
}
