#version 450
#extension GL_GOOGLE_include_directive : require
// SHARED GEMM for linear_qta8a_qga4w (docs/spec.md): the workgroup computes a tile of
// BT tokens x BN channels and walks K in stages of SO octets (8 k each), one group or an
// equal part of one. Each stage's weights and activations pass through shared memory once
// for the whole workgroup, with what the fold needs: per token its zero point and S =
// sum (x - zp) over the stage, per channel s and o. Each invocation keeps one float
// accumulator per output of its TM tokens x TN channels and folds each stage's exact
// integer sum A = sum (x - zp)(q - z) into it at once: acc += s * A (+ o * S with float
// offsets), then y = x_scale * acc + bias, or its int8 requantization. Two code shapes:
//
//   DOT_PRODUCT  the weights staged as q - z in int8 (z: the integer zero point,
//                HAS_OFFSET 2), else as 16 q (QSCALE: one operation fewer a nibble to
//                unpack; the fold's integers and acc are then 16 times their value, exact,
//                divided out at the output), four products per OpSDot;
//                A = P - zp * sum (q - z), P = sum x (q - z), the sum of the weights
//                formed by the loader (nothing per group is read for it). The loaders'
//                addresses are a part fixed for the invocation (prepare, before the group
//                loop) plus a part of the group, the same for every invocation.
//   otherwise    SWAR: the weights staged as the four nibble pairs of each word (channels
//                j and j + 4 in the 16-bit halves, common.glsl), the activations as
//                x + 128 (0..255, unsigned); each multiply-add forms two products, the
//                halves split every 16 k (16 * 255 * 15 < 2^16). With the stage's
//                nibble sums Su (formed by the loader):
//                A = P' - (128 + zp) Su - 8 S, P' = sum (x + 128) u, u = q + 8;
//                o = -s z for integer zero points, as the TILED GEMM forms it.
//
// Grid: x = channel tiles of BN, y = token tiles of BT from p.token_base. Workgroup:
// LOCAL_X invocations along the channels, each TN = 8 CB channels (DOT_PRODUCT: CB x 2
// quads of 4 neighbouring channels, quads LOCAL_X apart; SWAR: CB blocks of 8, blocks
// LOCAL_X apart), so that neighbouring invocations read and write neighbouring memory;
// LOCAL_Y along the tokens (TM neighbouring tokens each). Either unit order; every
// weight layout but 8-bit storage's.
#include "common.glsl"

#ifdef STORAGE8
#error "gemm_shared.comp reads 32- or 64-bit words: compile without STORAGE8"
#endif

const uint TN = 8u * CB;                 // channels per invocation
const uint QUADS = TN / 4u;
const uint BN = LOCAL_X * TN;            // channels per workgroup
const uint BB = BN / 8u;                 // channel blocks per workgroup
const uint BT = LOCAL_Y * TM;            // tokens per workgroup
const uint INVOCATIONS = LOCAL_X * LOCAL_Y;
const uint OCTETS = GROUP_SIZE / 8u;     // octets per group
// Octets per stage: the whole group up to MAX_SO octets, else the largest of 8 (OpSDot
// only), 4, 2, 1 dividing it (kernels.SharedSpec.stage_octets is the same rule: shared
// memory is sized by it). SWAR stages hold twice the weight bytes: at most 4 octets.
#ifdef DOT_PRODUCT
const uint MAX_SO = 8u;
#else
const uint MAX_SO = 4u;
#endif
const uint SO = (OCTETS <= MAX_SO) ? OCTETS : ((OCTETS % 8u == 0u && MAX_SO >= 8u) ? 8u :
                ((OCTETS % 4u == 0u) ? 4u : ((OCTETS % 2u == 0u) ? 2u : 1u)));
const uint STAGES = OCTETS / SO;         // stages per group
const uint SK = 8u * SO;                 // k per stage

// The 8 int8 activations of octet word pair `word`, `word` + 1 of X.
uvec2 x_octet(uint word) {
#ifdef INT64_LOADS
    return unpack32(x8(word / 2u));
#else
    return uvec2(X[word], X[word + 1u]);
#endif
}

// Loaders: work items are spread over the workgroup's invocations, the kinds counted from
// different ends so that they fall on different invocations. Rows past the layer read its
// last one; their results are not stored.
uint reps(uint items) { return (items + INVOCATIONS - 1u) / INVOCATIONS; }
uint channel_item(uint li, uint rep) { return li + rep * INVOCATIONS; }
uint token_item(uint li, uint rep) { return INVOCATIONS - 1u - li + rep * INVOCATIONS; }

#ifdef DOT_PRODUCT
const uint QSCALE = (HAS_OFFSET == 2u) ? 1u : 16u;   // the weights staged as QSCALE q (above)
// word e of channel j: its octets 2e (x, y) and 2e + 1 (z, w) of the stage, QSCALE (q - z)
// as int8 (k 8o..8o+3 in one word, 8o+4.. in the next); an odd last octet alone
shared uvec4 w_sh[(SO + 1u) / 2u][BN];
shared uvec2 x_sh[BT][SO];   // token i, octet o: activation words 2o, 2o + 1
shared vec4 ch_sh[BN];       // channel j: s, QSCALE o, QSCALE sum q over the stage (exact)
shared float tok_zp_sh[BT];  // token i: -zp (written once, before the group loop)
shared float tok_sh[BT];     // token i: S (exact as a float)

// The same buffers as 32-bit words (descriptor aliasing), indexed from the loaders' fixed
// parts (prepare) plus a part of the group.
layout(std430, binding = 3) readonly buffer W32Buf { uint W32[]; };
layout(std430, binding = 4) readonly buffer WS32Buf { uint WS32[]; };
layout(std430, binding = 5) readonly buffer WO32Buf { uint WO32[]; };
layout(std430, binding = 6) readonly buffer WSU32Buf { uint WSU32[]; };

// The loaders' items of this invocation, with what of their addresses the group loop
// does not change (set once by prepare): a channel's first weight word and first
// group-data float at group 0, a token's first activation word and -zp SK (the start of
// its sum S = sum (x - zp)).
const uint CH_REPS = (BN + INVOCATIONS - 1u) / INVOCATIONS;
const uint TOK_REPS = (BT + INVOCATIONS - 1u) / INVOCATIONS;
uint ch_word[CH_REPS], ch_data[CH_REPS];
uint tok_word[TOK_REPS];
int tok_s0[TOK_REPS];

void prepare(uint n0, uint t0, uint G, uint li) {
    [[unroll]] for (uint rep = 0u; rep < CH_REPS; rep++) {
        uint n = min(n0 + channel_item(li, rep), p.NP - 1u), b = n / 8u, c = n % 8u;
        ch_word[rep] = 8u * block_unit(b) + c;          // a unit: 8 channels' words
        ch_data[rep] = 4u * group_base(b, 0u, G) + c;
    }
    [[unroll]] for (uint rep = 0u; rep < TOK_REPS; rep++) {
        uint i = token_item(li, rep), t = min(t0 + i, p.T - 1u);
        int zp = XZ[t];
        tok_word[rep] = t * (p.K / 4u);
        tok_s0[rep] = -zp * int(SK);
        if (BT % INVOCATIONS == 0u || i < BT) tok_zp_sh[i] = float(-zp);
    }
}

// Channel item j (the invocation's rep-th): stage h of group g.
void stage_channel(uint j, uint rep, uint g, uint G, uint h) {
    uint stride, unit = group_unit(g, G, stride);
    uint d = ch_data[rep] + 4u * GROUP_STEP * g;        // float index of its group data
    // fp16 data: two values a word, the lower channel in the low half
    float s = HALF_SCALES ? unpackHalf2x16(WS32[d / 2u])[d % 2u] : uintBitsToFloat(WS32[d]);
    float off = 0.0;
    if (HAS_OFFSET == 1u) {
        off = HALF_OFFSETS ? unpackHalf2x16(WO32[d / 2u])[d % 2u] + 8.0 * s
                           : uintBitsToFloat(WO32[d]);
        off *= float(QSCALE);   // exact
    }
    // Integer zero points (HAS_OFFSET 2: o = -s z, z in the nibble sum's top 4 bits):
    // the weights become q - z, which folds o * S into the integer sum.
    int z = 0;
    if (HAS_OFFSET == 2u) z = bitfieldExtract(int(WSU32[d / 2u]), int(16u * (d % 2u) + 12u), 4);
    uint bias = uint(120 - z) * 0x01010101u;
    int sq = 0;
    [[unroll]] for (uint o = 0u; o < SO; o++) {
        uint w = W32[ch_word[rep] + 8u * (unit + (h * SO + o) * stride)];
        uvec2 v;
        if (QSCALE == 1u) {
            // q - z = u - 8 - z in each byte: u + 120 - z stays in 0..255 (no carry into
            // the next byte), and flipping bit 7 subtracts 128 modulo 256
            v = (uvec2(w & 0x0F0F0F0Fu, (w >> 4u) & 0x0F0F0F0Fu) + bias) ^ 0x80808080u;
        } else {
            // 16 q = 16 (u - 8) in each byte: u ^ 8 in the byte's top nibble, read signed
            w ^= 0x88888888u;
            v = uvec2(w << 4u, w) & 0xF0F0F0F0u;
        }
        sq = dot4_acc(v.y, 0x01010101u, dot4_acc(v.x, 0x01010101u, sq));
        if (o % 2u == 0u) w_sh[o / 2u][j].xy = v; else w_sh[o / 2u][j].zw = v;
    }
    ch_sh[j].xyz = vec3(s, off, float(sq));
}

// Token item i (the invocation's rep-th): stage h of group g.
void stage_token(uint i, uint rep, uint g, uint h) {
    uint xw = tok_word[rep] + 2u * (g * OCTETS + h * SO);
    int S = tok_s0[rep];
    [[unroll]] for (uint o = 0u; o < SO; o++) {
        uvec2 v = x_octet(xw + 2u * o);
        S = dot4_acc(v.y, 0x01010101u, dot4_acc(v.x, 0x01010101u, S));
        x_sh[i][o] = v;
    }
    tok_sh[i] = float(S);
}

void stage(uint g, uint G, uint h, uint li) {
    [[unroll]] for (uint rep = 0u; rep < CH_REPS; rep++) {
        uint j = channel_item(li, rep);
        if (BN % INVOCATIONS == 0u || j < BN) stage_channel(j, rep, g, G, h);
    }
    [[unroll]] for (uint rep = 0u; rep < TOK_REPS; rep++) {
        uint i = token_item(li, rep);
        if (BT % INVOCATIONS == 0u || i < BT) stage_token(i, rep, g, h);
    }
}

// Tile channel of channel c of quad q of invocation ix: 4 neighbouring ones a quad.
uint quad_channel(uint ix, uint q) { return 4u * (ix + LOCAL_X * q); }

// Adds the staged products of the invocation's tokens and channels into acc.
void multiply(uint ix, uint iy, inout float acc[TM][TN]) {
    // The invocation's tokens, cached for all its channels.
    uvec2 xc[TM][SO];
    vec2 td[TM];
    [[unroll]] for (uint r = 0u; r < TM; r++) {
        td[r] = vec2(tok_zp_sh[iy * TM + r], tok_sh[iy * TM + r]);
        [[unroll]] for (uint o = 0u; o < SO; o++) xc[r][o] = x_sh[iy * TM + r][o];
    }
    [[unroll]] for (uint q = 0u; q < QUADS; q++) {
        [[unroll]] for (uint m = 0u; m < 4u; m++) {
            uint j = quad_channel(ix, q) + m;
            vec4 cd = ch_sh[j];
            uvec2 wv[SO];
            [[unroll]] for (uint o = 0u; o < SO; o++) {
                wv[o] = (o % 2u == 0u) ? w_sh[o / 2u][j].xy : w_sh[o / 2u][j].zw;
            }
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
#else
const uint QSCALE = 1u;      // the fold's integers at their value
shared uvec4 w_sh[SK][BB];   // k of block jb: its four nibble pairs
shared uvec4 su_sh[SO][BB];  // octet o of block jb: the sums of its four nibble pairs
shared uvec2 x_sh[SO][BT];   // octet o of token i: x + 128 in each byte
shared vec2 ch_sh[BN];       // channel j: s, o
shared vec4 tok_sh[BT];      // token i: -(128 + zp), -8 S, S (exact as floats)

// Octet o of block jb of the tile (layer block b): stage h of group g.
void stage_octet(uint jb, uint b, uint g, uint G, uint h, uint o) {
    uint stride, unit = weight_unit(b, g, G, stride);
    uint k = 8u * (h * SO + o);          // within the group
    uint w[8];
#ifdef INT64_LOADS
    u64vec4 v = w_unit(unit + (k / 8u) * stride);
    [[unroll]] for (uint m = 0u; m < 4u; m++) {
        uvec2 pair = unpack32(v[m]);
        w[2u * m] = pair.x;
        w[2u * m + 1u] = pair.y;
    }
#else
    [[unroll]] for (uint m = 0u; m < 8u; m++) w[m] = W[unit + (k + m) * stride];
#endif
    uvec4 sum = uvec4(0u);               // at most 8 * 15 a half
    [[unroll]] for (uint m = 0u; m < 8u; m++) {
        uvec4 pr = uvec4(nibble_pair(w[m], 0u), nibble_pair(w[m], 1u),
                         nibble_pair(w[m], 2u), nibble_pair(w[m], 3u));
        w_sh[8u * o + m][jb] = pr;
        sum += pr;
    }
    su_sh[o][jb] = sum;
}

// The group data of block jb of the tile (layer block b) at group g.
void stage_block(uint jb, uint b, uint g, uint G) {
    vec4 s[2], off[2];
    ivec4 su[2];   // the stored group sums: not needed, the stage's are formed
    group_data(group_base(b, g, G), s, off, su);
    [[unroll]] for (uint c = 0u; c < 8u; c++) {
        ch_sh[8u * jb + c] = vec2(s[c / 4u][c % 4u], off[c / 4u][c % 4u]);
    }
}

// Token i of the tile (layer token t): stage h of group g.
void stage_token(uint i, uint t, uint g, uint h) {
    uint xw = t * (p.K / 4u) + 2u * (g * OCTETS + h * SO);
    int zp = XZ[t];
    uint sx2 = 0u;                       // sums of alternate bytes, at most 8 * 510 a half
    [[unroll]] for (uint o = 0u; o < SO; o++) {
        uvec2 v = x_octet(xw + 2u * o) ^ 0x80808080u;   // x + 128 in each byte
        sx2 += (v.x & 0x00FF00FFu) + ((v.x >> 8u) & 0x00FF00FFu) +
               (v.y & 0x00FF00FFu) + ((v.y >> 8u) & 0x00FF00FFu);
        x_sh[o][i] = v;
    }
    int S = int((sx2 & 0xFFFFu) + (sx2 >> 16u)) - (128 + zp) * int(SK);
    tok_sh[i] = vec4(float(-(128 + zp)), float(-8 * S), float(S), 0.0);
}

uint tile_n0, tile_t0;      // the tile's first channel and token (prepare)

void prepare(uint n0, uint t0, uint G, uint li) {
    tile_n0 = n0;
    tile_t0 = t0;
}

void stage(uint g, uint G, uint h, uint li) {
    uint n0 = tile_n0, t0 = tile_t0;
    [[unroll]] for (uint rep = 0u; rep < reps(BB * SO); rep++) {
        uint it = li + rep * INVOCATIONS;
        if (it < BB * SO) stage_octet(it % BB, min(n0 / 8u + it % BB, p.NP / 8u - 1u), g, G, h, it / BB);
    }
    [[unroll]] for (uint rep = 0u; rep < reps(BB); rep++) {
        uint jb = (li + INVOCATIONS / 2u) % INVOCATIONS + rep * INVOCATIONS;
        if (jb < BB) stage_block(jb, min(n0 / 8u + jb, p.NP / 8u - 1u), g, G);
    }
    [[unroll]] for (uint rep = 0u; rep < reps(BT); rep++) {
        uint i = token_item(li, rep);
        if (i < BT) stage_token(i, min(t0 + i, p.T - 1u), g, h);
    }
}

// Tile channel of the first channel of quad q of invocation ix: block q / 2 of the
// invocation (blocks LOCAL_X apart), its lower or upper 4 channels.
uint quad_channel(uint ix, uint q) { return 8u * (ix + LOCAL_X * (q / 2u)) + 4u * (q % 2u); }

// Adds the staged products of the invocation's tokens and channels into acc: SWAR sums of
// up to 16 k, split and folded (the stage's corrections with the first). The integers are
// exact as floats (below 2^24: |A| < 2^18), so the fold's float steps are too.
void multiply(uint ix, uint iy, inout float acc[TM][TN]) {
    vec4 td[TM];
    [[unroll]] for (uint r = 0u; r < TM; r++) td[r] = tok_sh[iy * TM + r];
    uvec4 su2[CB];                       // the stage's nibble sums, two channels a word
    [[unroll]] for (uint q = 0u; q < CB; q++) {
        su2[q] = uvec4(0u);
        [[unroll]] for (uint o = 0u; o < SO; o++) su2[q] += su_sh[o][ix + LOCAL_X * q];
    }
    [[unroll]] for (uint k0 = 0u; k0 < SK; k0 += 16u) {
        uint a[CB][TM][4];
        [[unroll]] for (uint q = 0u; q < CB; q++) {
            [[unroll]] for (uint r = 0u; r < TM; r++) {
                [[unroll]] for (uint j = 0u; j < 4u; j++) a[q][r][j] = 0u;
            }
        }
        [[unroll]] for (uint kk = 0u; kk < 16u; kk++) {
            uint k = k0 + kk;
            if (k >= SK) break;
            // the bounds tell the compiler that both factors fit 24 bits (a full-rate
            // 24-bit multiply-add on GCN, where a 32-bit multiply runs at a quarter)
            uint xv[TM];
            [[unroll]] for (uint r = 0u; r < TM; r++) {
                xv[r] = bitfieldExtract(x_sh[k / 8u][iy * TM + r][(k / 4u) % 2u], int(8u * (k % 4u)), 8);
            }
            [[unroll]] for (uint q = 0u; q < CB; q++) {
                uvec4 pr = w_sh[k][ix + LOCAL_X * q] & 0x000F000Fu;
                [[unroll]] for (uint r = 0u; r < TM; r++) {
                    [[unroll]] for (uint j = 0u; j < 4u; j++) a[q][r][j] += xv[r] * pr[j];
                }
            }
        }
        [[unroll]] for (uint q = 0u; q < CB; q++) {
            [[unroll]] for (uint c = 0u; c < 8u; c++) {
                uint j = 8u * (ix + LOCAL_X * q) + c;
                vec2 cd = ch_sh[j];
                float su = float(c < 4u ? su2[q][c] & 0xFFFFu : su2[q][c - 4u] >> 16u);
                [[unroll]] for (uint r = 0u; r < TM; r++) {
                    uint h = a[q][r][c % 4u];
                    float A = float(c < 4u ? h & 0xFFFFu : h >> 16u);
                    if (k0 == 0u) A = fma(td[r].x, su, A) + td[r].y;
                    float v = fma(cd.x, A, acc[r][8u * q + c]);
                    acc[r][8u * q + c] = (HAS_OFFSET != 0u && k0 == 0u) ? fma(cd.y, td[r].z, v) : v;
                }
            }
        }
    }
}
#endif  // DOT_PRODUCT

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

    prepare(n0, t0, G, li);
    // one loop of stages: a loop of a group's stages is unrolled where it is short, and
    // the unrolled stages keep their registers apart
    for (uint gh = 0u; gh < G * STAGES; gh++) {
        uint g = gh / STAGES, h = gh % STAGES;
        barrier();   // the previous stage is read by all
        stage(g, G, h, li);
        barrier();
        multiply(ix, iy, acc);
    }

    // y = x_scale * acc + bias: 4 neighbouring channels a quad (one int8 word).
    [[unroll]] for (uint r = 0u; r < TM; r++) {
        uint t = t0 + iy * TM + r;
        if (t >= p.T) break;
        float xs = XS[t];
        float os = (OUT_INT8 != 0u) ? OS[t] : 1.0;
        int oz = (OUT_INT8 != 0u) ? OZ[t] : 0;
        [[unroll]] for (uint q = 0u; q < QUADS; q++) {
            uint n = n0 + quad_channel(ix, q);
            if (n >= p.NP) continue;
            vec4 b = BIAS[n / 4u];
            vec4 a = vec4(acc[r][4u * q], acc[r][4u * q + 1u], acc[r][4u * q + 2u],
                          acc[r][4u * q + 3u]) * (1.0 / float(QSCALE));   // exact: 1 or 1/16
            vec4 y = xs * a + b;
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
