#version 450
#extension GL_GOOGLE_include_directive : require
// SHARED GEMM for linear_qta8a_qga4w (docs/spec.md): the workgroup computes a tile of
// BT tokens x BN channels and walks K in stages of SO octets (8 k each), one group or an
// equal part of one. Each stage's weights (unpacked to the two nibble words OpSDot takes)
// and int8 activations pass through shared memory once for the whole workgroup, with what
// the fold needs: per token S = sum (x - zp) and its zero point, per channel s, o and the
// stage's sum of q (formed here from the nibbles: nothing per group is read for it).
// Each invocation keeps one float accumulator per output of its TM tokens x TN channels
// and folds each stage's exact integer sum into it at once:
//   A = sum (x - zp) q = P - zp * sum q   (P = sum x * q; exact as floats: below 2^24)
//   acc += s * A + o * S,  or s * A with q - z for q where o = -s z (HAS_OFFSET 2)
// then y = x_scale * acc + bias, or its int8 requantization.
// Grid: x = channel tiles of BN, y = token tiles of BT from p.token_base. Workgroup:
// LOCAL_X invocations along the channels (each TN = 8 CB channels: CB x 2 quads of 4
// neighbouring channels, quads LOCAL_X apart, so that neighbouring invocations read and
// write neighbouring memory), LOCAL_Y along the tokens (TM neighbouring tokens each).
// Needs DOT_PRODUCT (OpSDot) and the "dot" weight layout; either unit order.
#include "common.glsl"

#ifndef DOT_PRODUCT
#error "gemm_shared.comp multiplies with OpSDot: compile with DOT_PRODUCT"
#endif

const uint TN = 8u * CB;                 // channels per invocation
const uint QUADS = TN / 4u;
const uint BN = LOCAL_X * TN;            // channels per workgroup
const uint BT = LOCAL_Y * TM;            // tokens per workgroup
const uint INVOCATIONS = LOCAL_X * LOCAL_Y;
const uint OCTETS = GROUP_SIZE / 8u;     // octets per group
// Octets per stage: the whole group up to 64 k, else the largest of 8, 4, 2, 1 dividing it
// (kernels.SharedSpec.stage_octets is the same rule: shared memory is sized by it).
const uint SO = (OCTETS <= 8u) ? OCTETS : ((OCTETS % 8u == 0u) ? 8u :
                ((OCTETS % 4u == 0u) ? 4u : ((OCTETS % 2u == 0u) ? 2u : 1u)));
const uint STAGES = OCTETS / SO;         // stages per group

shared uvec2 w_sh[SO][BN];   // octet o of channel j: q (- z) as int8 (k 8o..8o+3, 8o+4..)
shared uvec2 x_sh[SO][BT];   // octet o of token i: activation words 2o, 2o + 1
shared vec4 ch_sh[BN];       // channel j: s, o, sum q over the stage (exact as a float)
shared vec2 tok_sh[BT];      // token i: -zp, S (exact as floats)

// Loaders: invocation li stages channels li, li + INVOCATIONS, ... and tokens counted from
// the other end of the workgroup (the two loads spread over different invocations). Rows
// past the layer read its last one; their results are not stored.
const uint W_REPS = (BN + INVOCATIONS - 1u) / INVOCATIONS;
const uint X_REPS = (BT + INVOCATIONS - 1u) / INVOCATIONS;

// Channel j of the tile (layer channel n): stage h of group g.
void stage_channel(uint j, uint n, uint g, uint G, uint h) {
    uint b = n / 8u, c = n % 8u;
    uint stride, unit = weight_unit(b, g, G, stride);
    uint gb0 = group_base(b, g, G), gb = gb0 + c / 4u;   // the vec4 of channel c
    float s = HALF_SCALES ? unpackHalf2x16(WS16[gb0 / 2u][c / 2u])[c % 2u] : WS[gb][c % 4u];
    float off = 0.0;
    if (HAS_OFFSET == 1u) {
        off = HALF_OFFSETS ? unpackHalf2x16(WO16[gb0 / 2u][c / 2u])[c % 2u] + 8.0 * s
                           : WO[gb][c % 4u];
    }
    // Integer zero points (HAS_OFFSET 2: o = -s z, z in the nibble sum's top 4 bits):
    // the weights become q - z, which folds o * S into the integer sum.
    int z = 0;
    if (HAS_OFFSET == 2u) z = bitfieldExtract(int(WSU16[gb / 2u][c / 2u]), int(16u * (c % 2u) + 12u), 4);
    uint bias = uint(120 - z) * 0x01010101u;
    int sq = 0;
    [[unroll]] for (uint o = 0u; o < SO; o++) {
        uint w = W[2u * (unit + (h * SO + o) * stride) + c / 4u][c % 4u];
        // q - z = u - 8 - z in each byte: u + 120 - z stays in 0..255 (no carry into the
        // next byte), and flipping bit 7 subtracts 128 modulo 256
        uvec2 v = (uvec2(w & 0x0F0F0F0Fu, (w >> 4u) & 0x0F0F0F0Fu) + bias) ^ 0x80808080u;
        sq = dot4_acc(v.y, 0x01010101u, dot4_acc(v.x, 0x01010101u, sq));
        w_sh[o][j] = v;
    }
    ch_sh[j] = vec4(s, off, float(sq), 0.0);
}

// Token i of the tile (layer token t): stage h of group g.
void stage_token(uint i, uint t, uint g, uint h) {
    uint xw = t * (p.K / 4u) + 2u * (g * OCTETS + h * SO);
    int zp = XZ[t], sx = 0;
    [[unroll]] for (uint o = 0u; o < SO; o++) {
        uvec2 v = uvec2(X[xw + 2u * o], X[xw + 2u * o + 1u]);
        sx = dot4_acc(v.y, 0x01010101u, dot4_acc(v.x, 0x01010101u, sx));
        x_sh[o][i] = v;
    }
    tok_sh[i] = vec2(float(-zp), float(sx - zp * int(8u * SO)));
}

void main() {
    uint ix = gl_LocalInvocationID.x, iy = gl_LocalInvocationID.y;
    uint li = iy * LOCAL_X + ix;
    uint n0 = gl_WorkGroupID.x * BN;
    uint t0 = p.token_base + gl_WorkGroupID.y * BT;
    uint G = p.K / GROUP_SIZE;

    float acc[TM][TN];
    [[unroll]] for (uint r = 0u; r < TM; r++) {
        [[unroll]] for (uint c = 0u; c < TN; c++) acc[r][c] = 0.0;
    }

    for (uint g = 0u; g < G; g++) {
        for (uint h = 0u; h < STAGES; h++) {
            barrier();   // the previous stage is read by all
            [[unroll]] for (uint rep = 0u; rep < W_REPS; rep++) {
                uint j = li + rep * INVOCATIONS;
                if (j < BN) stage_channel(j, min(n0 + j, p.NP - 1u), g, G, h);
            }
            [[unroll]] for (uint rep = 0u; rep < X_REPS; rep++) {
                uint i = INVOCATIONS - 1u - li + rep * INVOCATIONS;
                if (i < BT) stage_token(i, min(t0 + i, p.T - 1u), g, h);
            }
            barrier();

            // The invocation's tokens, cached for all its channels.
            uvec2 xc[TM][SO];
            vec2 td[TM];
            [[unroll]] for (uint r = 0u; r < TM; r++) {
                td[r] = tok_sh[iy * TM + r];
                [[unroll]] for (uint o = 0u; o < SO; o++) xc[r][o] = x_sh[o][iy * TM + r];
            }
            [[unroll]] for (uint q = 0u; q < QUADS; q++) {
                [[unroll]] for (uint m = 0u; m < 4u; m++) {
                    uint j = 4u * (ix + LOCAL_X * q) + m;
                    vec4 cd = ch_sh[j];
                    uvec2 wv[SO];
                    [[unroll]] for (uint o = 0u; o < SO; o++) wv[o] = w_sh[o][j];
                    [[unroll]] for (uint r = 0u; r < TM; r++) {
                        int P = 0;
                        [[unroll]] for (uint o = 0u; o < SO; o++) {
                            P = dot4_acc(wv[o].y, xc[r][o].y, dot4_acc(wv[o].x, xc[r][o].x, P));
                        }
                        float A = float(P) + td[r].x * cd.z;
                        float v = acc[r][4u * q + m] + cd.x * A;
                        acc[r][4u * q + m] = (HAS_OFFSET == 1u) ? v + cd.y * td[r].y : v;
                    }
                }
            }
        }
    }

    // y = x_scale * acc + bias: 4 neighbouring channels a quad (one int8 word).
    [[unroll]] for (uint r = 0u; r < TM; r++) {
        uint t = t0 + iy * TM + r;
        if (t >= p.T) break;
        float xs = XS[t];
        float os = (OUT_INT8 != 0u) ? OS[t] : 1.0;
        int oz = (OUT_INT8 != 0u) ? OZ[t] : 0;
        [[unroll]] for (uint q = 0u; q < QUADS; q++) {
            uint n = n0 + 4u * (ix + LOCAL_X * q);
            if (n >= p.NP) continue;
            vec4 b = BIAS[n / 4u];
            vec4 y = xs * vec4(acc[r][4u * q], acc[r][4u * q + 1u], acc[r][4u * q + 2u],
                               acc[r][4u * q + 3u]) + b;
            if (OUT_INT8 == 0u) {
                [[unroll]] for (uint m = 0u; m < 4u; m++) Y[t * p.NP + n + m] = floatBitsToUint(y[m]);
            } else {
                uint word = 0u;
                [[unroll]] for (uint m = 0u; m < 4u; m++) {
                    word |= uint(requantize(y[m], os, oz) & 0xFF) << (8u * m);
                }
                Y[t * (p.NP / 4u) + n / 4u] = word;
            }
        }
    }
}
