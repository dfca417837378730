// tile.glsl: the work of one invocation, TM tokens x CB blocks of 8 output channels.
//
// Contract: include after common.glsl. Call tile_begin(v, t0) once: v is the invocation's
// index along the channels, its blocks are tile_b (tile_block_of); then tile_group(g, G)
// for each weight group the invocation owns (in any order), tile_flush() after every
// GROUP_BLOCK groups and at the end; the sums are then in tile_total. tile_store(t0)
// writes the finished outputs (float or int8) of its blocks and of tokens t0 .. t0 + TM - 1
// that exist. The activations of a group are read once for all CB blocks.

// Channel blocks per invocation: the CB specialization constant, or what the including
// shader fixes (the COOPERATIVE kernel reduces one block: TILE_CB 1).
#ifndef TILE_CB
#define TILE_CB CB
#endif
float tile_total[TILE_CB][TM][8];   // sum over finished blocks of groups
float tile_block[TILE_CB][TM][8];   // sum over the current block of groups
uint tile_row[TM];             // activation row of each token (clamped to T - 1)
int tile_zp[TM];               // its zero point
uint tile_v;                   // the invocation's index along the channels
uint tile_b[TILE_CB];               // its channel blocks, clamped to the last one (for loads)

// Block j of invocation v: at each j, LANES neighbouring invocations take LANES
// neighbouring blocks, which the layout keeps side by side (CB = 1: block v).
uint tile_block_of(uint v, uint j) {
    return (v / LANES) * TILE_CB * LANES + j * LANES + v % LANES;
}

void tile_begin(uint v, uint t0) {
    tile_v = v;
    [[unroll]] for (uint j = 0u; j < TILE_CB; j++) tile_b[j] = min(tile_block_of(v, j), p.NP / 8u - 1u);
    [[unroll]] for (uint i = 0u; i < TM; i++) {
        uint t = min(t0 + i, p.T - 1u);
        tile_row[i] = t * (p.K / 4u);
        tile_zp[i] = XZ[t];
    }
    [[unroll]] for (uint j = 0u; j < TILE_CB; j++) {
        [[unroll]] for (uint i = 0u; i < TM; i++) {
            [[unroll]] for (uint c = 0u; c < 8u; c++) {
                tile_total[j][i][c] = 0.0;
                tile_block[j][i][c] = 0.0;
            }
        }
    }
}

void tile_flush() {
    [[unroll]] for (uint j = 0u; j < TILE_CB; j++) {
        [[unroll]] for (uint i = 0u; i < TM; i++) {
            [[unroll]] for (uint c = 0u; c < 8u; c++) {
                tile_total[j][i][c] += tile_block[j][i][c];
                tile_block[j][i][c] = 0.0;
            }
        }
    }
}

// Zeroes a group's integer sums (group_sums' outputs).
void sums_zero(out int P[TILE_CB][TM][8], out int sx[TM]) {
    [[unroll]] for (uint i = 0u; i < TM; i++) {
        sx[i] = 0;
        [[unroll]] for (uint j = 0u; j < TILE_CB; j++) {
            [[unroll]] for (uint c = 0u; c < 8u; c++) P[j][i][c] = 0;
        }
    }
}

// The first weight unit of group g of each of the invocation's blocks; `stride` as in
// weight_unit.
void tile_units(uint g, uint G, out uint wi[TILE_CB], out uint stride) {
    [[unroll]] for (uint j = 0u; j < TILE_CB; j++) wi[j] = weight_unit(tile_b[j], g, G, stride);
}

#ifdef DOT_PRODUCT
// P[j][i][c] = sum x * u over group g of block j, sx[i] = sum x, four products per OpSDot.
// Weight word c of an octet holds channel c's nibbles u(8o + m) in the low and u(8o + 4 + m)
// in the high half of byte m, so w & 0x0F0F0F0F and (w >> 4) & 0x0F0F0F0F line up with
// the two activation words of octet o. u <= 15 is a non-negative int8: a signed dot,
// accumulating (dot4_acc: one instruction each where the compiler does not fuse an add).
// With FORM_SUMS (groups of at most 4 octets) P is returned as sum (x - zp) * u: the nibble
// sums lo + hi added bytewise (each byte at most 120, so no carry), then zp times their
// bytes subtracted by one OpSDot (zp in each byte).
void group_sums(uint g, uint G, out int P[TILE_CB][TM][8], out int sx[TM]) {
    sums_zero(P, sx);
    uint stride, wi[TILE_CB];
    tile_units(g, G, wi, stride);
    uint xi = g * (GROUP_SIZE / 4u);
    // The byte sums start from a zero the compiler cannot fold (T < 2^31): from a literal
    // zero, AMD's compiler merges the first octet's add into the next one's three-way add
    // and keeps every channel's lo and hi live an octet longer (the T = 1 GEMV: 84 VGPRs
    // on RDNA3 instead of 60). Each octet adds (sb + lo) + hi, one three-way add; sb +=
    // lo + hi costs the T = 1 TILED kernel 0.4 instructions per 32 weights more.
    uint sb[TILE_CB][8];
    [[unroll]] for (uint j = 0u; j < TILE_CB; j++) {
        [[unroll]] for (uint c = 0u; c < 8u; c++) sb[j][c] = p.T >> 31u;
    }
    for (uint o = 0u; o < GROUP_SIZE / 8u; o++) {
        uint x0[TM], x1[TM];
        [[unroll]] for (uint i = 0u; i < TM; i++) {
            x0[i] = X[tile_row[i] + xi + 2u * o];
            x1[i] = X[tile_row[i] + xi + 2u * o + 1u];
            sx[i] = dot4_acc(x1[i], 0x01010101u, dot4_acc(x0[i], 0x01010101u, sx[i]));
        }
        [[unroll]] for (uint j = 0u; j < TILE_CB; j++) {
            uint at = 2u * (wi[j] + o * stride);
            uvec4 wv[2] = uvec4[2](W[at], W[at + 1u]);
            [[unroll]] for (uint c = 0u; c < 8u; c++) {
                uint w = wv[c / 4u][c % 4u];
                uint lo = w & 0x0F0F0F0Fu, hi = (w >> 4u) & 0x0F0F0F0Fu;
                if (FORM_SUMS) sb[j][c] = sb[j][c] + lo + hi;
                [[unroll]] for (uint i = 0u; i < TM; i++) {
                    P[j][i][c] = dot4_acc(hi, x1[i], dot4_acc(lo, x0[i], P[j][i][c]));
                }
            }
        }
    }
    if (FORM_SUMS) {
        [[unroll]] for (uint i = 0u; i < TM; i++) {
            uint zp4 = uint(tile_zp[i] & 0xFF) * 0x01010101u;
            [[unroll]] for (uint j = 0u; j < TILE_CB; j++) {
                [[unroll]] for (uint c = 0u; c < 8u; c++) P[j][i][c] -= dot4(sb[j][c], zp4);
            }
        }
    }
}
#else
// The SWAR multiply-adds of one k: weight word w (the nibbles of a block's 8 channels)
// times each token's activation xv[i], two channels per int32 product (see common.glsl).
void swar_madd(uint w, int xv[TM], inout int acc[TM][4]) {
    int w0 = nibble_pair(w, 0u), w1 = nibble_pair(w, 1u);
    int w2 = nibble_pair(w, 2u), w3 = nibble_pair(w, 3u);
    [[unroll]] for (uint i = 0u; i < TM; i++) {
        acc[i][0] += xv[i] * w0;
        acc[i][1] += xv[i] * w1;
        acc[i][2] += xv[i] * w2;
        acc[i][3] += xv[i] * w3;
    }
}

void swar_zero(out int acc[TILE_CB][TM][4]) {
    [[unroll]] for (uint j = 0u; j < TILE_CB; j++) {
        [[unroll]] for (uint i = 0u; i < TM; i++) {
            [[unroll]] for (uint h = 0u; h < 4u; h++) acc[j][i][h] = 0;
        }
    }
}

// Adds the two halves of each SWAR accumulator of a finished chunk into P.
void swar_flush(int acc[TILE_CB][TM][4], inout int P[TILE_CB][TM][8]) {
    [[unroll]] for (uint j = 0u; j < TILE_CB; j++) {
        [[unroll]] for (uint i = 0u; i < TM; i++) {
            [[unroll]] for (uint h = 0u; h < 4u; h++) {
                ivec2 v = swar_split(acc[j][i][h]);
                P[j][i][h] += v.x;
                P[j][i][h + 4u] += v.y;
            }
        }
    }
}

#ifdef INT64_LOADS
// The CHUNK activations from uint word `word` of X on: one 16-byte load (or 8 for
// CHUNK = 8), half the loads of 8-byte words (lavapipe pays per load instruction).
u64vec2 x_chunk(uint word) {
    if (CHUNK == 16u) return x16(word / 4u);
    return u64vec2(x8(word / 2u), 0ul);
}

// As below, reading 64-bit words: weight units of 8 k (one u64vec4) and x_chunk.
void group_sums(uint g, uint G, out int P[TILE_CB][TM][8], out int sx[TM]) {
    sums_zero(P, sx);
    uint stride, wi[TILE_CB];
    tile_units(g, G, wi, stride);
    uint xi = g * (GROUP_SIZE / 4u);
    for (uint c0 = 0u; c0 < GROUP_SIZE; c0 += CHUNK) {
        int acc[TILE_CB][TM][4];
        swar_zero(acc);
        u64vec2 xs[TM];
        [[unroll]] for (uint i = 0u; i < TM; i++) xs[i] = x_chunk(tile_row[i] + xi + c0 / 4u);
        [[unroll]] for (uint k8 = 0u; k8 < CHUNK; k8 += 8u) {
            u64vec4 wq[TILE_CB];
            [[unroll]] for (uint j = 0u; j < TILE_CB; j++) wq[j] = w_unit(wi[j] + ((c0 + k8) / 8u) * stride);
            uvec2 xw[TM];
            [[unroll]] for (uint i = 0u; i < TM; i++) xw[i] = unpack32(xs[i][k8 / 8u]);
            [[unroll]] for (uint kk = 0u; kk < 8u; kk++) {
                int xv[TM];
                [[unroll]] for (uint i = 0u; i < TM; i++) {
                    xv[i] = bitfieldExtract(int(xw[i][kk / 4u]), int(8u * (kk % 4u)), 8);
                    sx[i] += xv[i];
                }
                [[unroll]] for (uint j = 0u; j < TILE_CB; j++) swar_madd(unpack32(wq[j][kk / 2u])[kk % 2u], xv, acc[j]);
            }
        }
        swar_flush(acc, P);
    }
}
#else
// P[j][i][c] = sum x * u over group g of block j and sx[i] = sum x, two channels per int32
// multiply (SWAR, see common.glsl).
void group_sums(uint g, uint G, out int P[TILE_CB][TM][8], out int sx[TM]) {
    sums_zero(P, sx);
    uint stride, wi[TILE_CB];
    tile_units(g, G, wi, stride);
    uint xi = g * (GROUP_SIZE / 4u);
    for (uint c0 = 0u; c0 < GROUP_SIZE; c0 += CHUNK) {
        int acc[TILE_CB][TM][4];
        swar_zero(acc);
        [[unroll]] for (uint k4 = 0u; k4 < CHUNK; k4 += 4u) {
            ivec4 xq[TM];
            [[unroll]] for (uint i = 0u; i < TM; i++) xq[i] = x_quad(tile_row[i] + xi + (c0 + k4) / 4u);
            [[unroll]] for (uint kk = 0u; kk < 4u; kk++) {
                int xv[TM];
                [[unroll]] for (uint i = 0u; i < TM; i++) {
                    xv[i] = xq[i][kk];
                    sx[i] += xv[i];
                }
                [[unroll]] for (uint j = 0u; j < TILE_CB; j++) swar_madd(W[wi[j] + (c0 + k4 + kk) * stride], xv, acc[j]);
            }
        }
        swar_flush(acc, P);
    }
}
#endif  // INT64_LOADS
#endif  // DOT_PRODUCT

// Adds group g of the invocation's blocks: exact integer sums, then s * A + o * S.
void tile_group(uint g, uint G) {
    int P[TILE_CB][TM][8];
    int sx[TM];
    group_sums(g, G, P, sx);
    int S[TM];
    [[unroll]] for (uint i = 0u; i < TM; i++) S[i] = sx[i] - tile_zp[i] * int(GROUP_SIZE);
    [[unroll]] for (uint j = 0u; j < TILE_CB; j++) {
        vec4 s[2], o[2];
        ivec4 su[2];
        group_data(group_base(tile_b[j], g, G), s, o, su);
        [[unroll]] for (uint i = 0u; i < TM; i++) {
            float Sf = float(S[i]);
            [[unroll]] for (uint c = 0u; c < 8u; c++) {
                // (formed sums: the zp term is in P already)
                int zp_su = FORM_SUMS ? 0 : tile_zp[i] * su[c / 4u][c % 4u];
                int A = P[j][i][c] - zp_su - 8 * S[i];
                float v = s[c / 4u][c % 4u] * float(A);
                tile_block[j][i][c] += (HAS_OFFSET != 0u) ? v + o[c / 4u][c % 4u] * Sf : v;
            }
        }
    }
}

// y = x_scale * sum + bias, stored as float or requantized to int8 (4 per word).
void tile_store_row(uint b, uint t, float sums[8]) {
    vec4 bias[2] = vec4[2](BIAS[2u * b], BIAS[2u * b + 1u]);
    float xs = XS[t];
    float y[8];
    [[unroll]] for (uint c = 0u; c < 8u; c++) y[c] = xs * sums[c] + bias[c / 4u][c % 4u];
    if (OUT_INT8 == 0u) {
        [[unroll]] for (uint c = 0u; c < 8u; c++) Y[t * p.NP + 8u * b + c] = floatBitsToUint(y[c]);
    } else {
        float os = OS[t];
        int oz = OZ[t];
#ifdef STORAGE8
        [[unroll]] for (uint c = 0u; c < 8u; c++) {
            Y8[t * p.NP + 8u * b + c] = int8_t(requantize(y[c], os, oz));
        }
#else
        [[unroll]] for (uint h = 0u; h < 2u; h++) {
            uint word = 0u;
            [[unroll]] for (uint c = 0u; c < 4u; c++) {
                word |= uint(requantize(y[4u * h + c], os, oz) & 0xFF) << (8u * c);
            }
            Y[t * (p.NP / 4u) + 2u * b + h] = word;
        }
#endif
    }
}

void tile_store(uint t0) {
    [[unroll]] for (uint j = 0u; j < TILE_CB; j++) {
        uint b = tile_block_of(tile_v, j);
        [[unroll]] for (uint i = 0u; i < TM; i++) {
            if (b < p.NP / 8u && t0 + i < p.T) tile_store_row(b, t0 + i, tile_total[j][i]);
        }
    }
}
