// common.glsl: interface and conventions shared by every linear_qta8a_qga4w kernel.
//
// Contract (the host side is vkqlinear/dispatch.py, the layouts vkqlinear/layout.py):
//
// Bindings (std430 storage buffers; 32-bit words unless a variant below says otherwise,
// which keeps the portable variant valid on every Vulkan 1.1 device; with TEXEL_LOADS,
// 0 and 3 to 6 are uniform texel buffers of R32G32B32A32_UINT over the same bytes)
//   0 X      uint [T][K/4]     int8 activations x_q, 4 per word, k = 4w + j in byte j
//                              (the buffer padded to a multiple of 16 bytes)
//   1 XS     float[T]          per-token activation scale
//   2 XZ     int  [T]          per-token activation zero point
//   3 W      uint              weights, "block-of-8-channels" layout (below)
//   4 WS     vec4              per-group weight scale s, same order as WSU (fp16 with
//                              HALF_DATA bit 0, below)
//   5 WO     vec4              per-group weight offset o (w = s * q + o); read only when
//                              HAS_OFFSET is 1 (float offsets; the fp16 m of o = m + 8 s
//                              with HALF_DATA bit 1)
//   6 WSU    ivec4             per-group sum of raw nibbles u over the group; uint16 (two
//                              per word, the lower channel in the low half) while
//                              15 * GROUP_SIZE fits 16 bits (SUMS16); with HAS_OFFSET 2
//                              the top 4 bits hold the integer zero point z. Not read
//                              (nor stored) where the kernel forms the sums (FORM_SUMS)
//   7 BIAS   vec4 [NP/4]       bias (zeros when the op has none)
//   8 OS     float[T]          output scale      (int8 output only; else a dummy)
//   9 OZ     int  [T]          output zero point (int8 output only; else a dummy)
//  10 Y      float [T][NP] or, with OUT_INT8, uint [T][NP/4] (4 int8 per word)
//
// Weight layout. Channels are padded to NP, a multiple of 8 * LANES, and taken in blocks
// of 8: block b = channels 8b .. 8b+7. One 32-bit word holds the raw nibbles u = q + 8
// (0..15) of the 8 channels of a block at one k: bits 4i..4i+3 <- channel 8b + i. Words are
// ordered [b / LANES][k][b % LANES]: LANES neighbouring invocations read LANES consecutive
// words at each k, and each set of LANES blocks streams through its own contiguous memory.
// Per-group data (s, o, sum u with z) is ordered [b / LANES][g][b % LANES][8 channels]. The
// cooperative kernel's workers instead read neighbouring groups of one block (GROUP_ORDER,
// see weight_unit below); INT64_LOADS and DOT_PRODUCT read wider units of the same words.
//
// Why raw nibbles: the product x * u is formed for two channels at once in the two 16-bit
// halves of one int32 (SWAR): (w >> 4j) & 0x000F000F holds the nibbles of channels j and
// j + 4. With |x| <= 128 and u <= 15, sixteen products fit a signed 16-bit half, so the
// halves are split every CHUNK (16, or 8 for groups of 8) values of k.
// Per group, with P = sum x*u, Sx = sum x, Su = sum u (all exact int32):
//   S = Sx - zp * g,   A = sum (x - zp) * (u - 8) = P - zp * Su - 8 * S
//   y += s * A + o * S                  (docs/spec.md's formula, float only from here)
// and finally y = x_scale * y + bias, or its per-token int8 requantization.

#extension GL_EXT_control_flow_attributes : require
#ifdef STORAGE8
#extension GL_EXT_shader_8bit_storage : require
#endif
#ifdef DOT_PRODUCT
#extension GL_EXT_spirv_intrinsics : require
#endif
#ifdef INT64_LOADS
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#endif

layout(constant_id = 0) const uint LOCAL_X = 8;      // workgroup x: channel blocks
layout(constant_id = 1) const uint LOCAL_Y = 1;      // workgroup y: token tiles / workers
layout(constant_id = 2) const uint GROUP_SIZE = 32;  // weight group size g (multiple of 8)
layout(constant_id = 3) const uint LANES = 8;        // weight layout interleave (see above)
layout(constant_id = 4) const uint TM = 4;           // tokens per invocation
layout(constant_id = 5) const uint OUT_INT8 = 0;     // 1: requantize to int8
layout(constant_id = 6) const uint CB = 1;           // channel blocks per invocation
// HAS_OFFSET: 0 every o is 0; 1 float offsets (WO); 2 integer zero points z in [-8, 7],
// o = -s z, held in the top 4 bits (two's complement) of the uint16 nibble sums (WSU,
// 15 GROUP_SIZE < 4096). WO is read with 1 only.
layout(constant_id = 7) const uint HAS_OFFSET = 1;
// HALF_DATA: bit 0, the scales as fp16 (WS: 8 a block and group in one uvec4); bit 1 (with
// HAS_OFFSET 1), the offsets as the fp16 m of o = m + 8 s (GGUF Q4_1's min; WO as WS),
// o formed in float32. The host stores fp16 only where every value is 0 or a normal fp16
// and o comes out as its float32 offset bit for bit.
layout(constant_id = 8) const uint HALF_DATA = 0;
const bool HALF_SCALES = (HALF_DATA & 1u) != 0u;
const bool HALF_OFFSETS = (HALF_DATA & 2u) != 0u;
layout(local_size_x_id = 0, local_size_y_id = 1, local_size_z = 1) in;

const uint CHUNK = (GROUP_SIZE % 16u == 0u) ? 16u : 8u;
// Float partial sums are added into the total every GROUP_BLOCK groups, so that the float
// accumulation error grows with G / GROUP_BLOCK + GROUP_BLOCK, not with G.
const uint GROUP_BLOCK = 32u;
// The nibble sums take half the bytes while they fit 16 bits (the host's
// layout.sums16 is the same rule).
const bool SUMS16 = GROUP_SIZE * 15u <= 65535u;
// The OpSDot kernels form the nibble sums of groups of at most 32 k in their group loop
// (one add a weight word, one OpSDot a channel and token), so the "dot" layout stores them
// only where they carry integer zero points or a group is longer (layout.stores_sums): fewer
// bytes a call. The SWAR kernels read them (forming them there costs registers GCN's
// occupancy cannot spare).
#ifdef DOT_PRODUCT
const bool FORM_SUMS = HAS_OFFSET != 2u && GROUP_SIZE <= 32u;
#else
const bool FORM_SUMS = false;
#endif

layout(push_constant) uniform Params {
    uint T;           // tokens
    uint K;           // input features
    uint N;           // output channels (real)
    uint NP;          // output channels padded (row stride of Y and BIAS)
    uint token_base;  // first token of this dispatch (grids larger than one dispatch)
} p;

#if defined(TEXEL_LOADS) && !defined(INT64_LOADS)
#error "TEXEL_LOADS replaces the loads of the INT64_LOADS code path: define both"
#endif
// TEXEL_LOADS: X, W and the group data are uniform texel buffers of R32G32B32A32_UINT
// (16 bytes per texelFetch) instead of storage buffers: the same bytes, read through the
// accessors below. lavapipe fetches texels for all lanes with vector code, where each
// storage-buffer load instruction is a loop over the lanes.
#if defined(STORAGE8)
layout(std430, binding = 0) readonly buffer XBuf { i8vec4 X[]; };
#elif defined(TEXEL_LOADS)
layout(binding = 0) uniform usamplerBuffer XT;
#elif defined(INT64_LOADS)
// 8 int8 per uint64_t, and the same memory seen 16 bytes at a time (descriptor
// aliasing): lavapipe pays per load instruction, not per byte.
layout(std430, binding = 0) readonly buffer XBuf { uint64_t X[]; };
layout(std430, binding = 0) readonly buffer X2Buf { u64vec2 X2[]; };
#else
layout(std430, binding = 0) readonly buffer XBuf { uint X[]; };
#endif
layout(std430, binding = 1) readonly buffer XSBuf { float XS[]; };
layout(std430, binding = 2) readonly buffer XZBuf { int XZ[]; };
#if defined(DOT_PRODUCT)
layout(std430, binding = 3) readonly buffer WBuf { uvec4 W[]; };
#elif defined(TEXEL_LOADS)
layout(binding = 3) uniform usamplerBuffer WT;
#elif defined(INT64_LOADS)
layout(std430, binding = 3) readonly buffer WBuf { u64vec4 W[]; };    // k .. k + 7
#else
layout(std430, binding = 3) readonly buffer WBuf { uint W[]; };
#endif
#if defined(TEXEL_LOADS)
layout(binding = 4) uniform usamplerBuffer WST;
layout(binding = 5) uniform usamplerBuffer WOT;
layout(binding = 6) uniform usamplerBuffer WSUT;
#elif defined(INT64_LOADS)
// The same group data as 64-bit words: one u64vec4 = the 8 values of a block and group.
layout(std430, binding = 4) readonly buffer WSBuf { u64vec4 WS[]; };
layout(std430, binding = 5) readonly buffer WOBuf { u64vec4 WO[]; };
layout(std430, binding = 6) readonly buffer WSUBuf { u64vec4 WSU[]; };
#else
layout(std430, binding = 4) readonly buffer WSBuf { vec4 WS[]; };
layout(std430, binding = 5) readonly buffer WOBuf { vec4 WO[]; };
layout(std430, binding = 6) readonly buffer WSUBuf { ivec4 WSU[]; };
#endif
#ifndef TEXEL_LOADS
// The same nibble sums as uint16, 8 per uvec4 (SUMS16; descriptor aliasing).
layout(std430, binding = 6) readonly buffer WSU16Buf { uvec4 WSU16[]; };
// fp16 scales and offsets, 8 per uvec4 (HALF_DATA; descriptor aliasing).
layout(std430, binding = 4) readonly buffer WS16Buf { uvec4 WS16[]; };
layout(std430, binding = 5) readonly buffer WO16Buf { uvec4 WO16[]; };
uvec4 ws16(uint i) { return WS16[i]; }
uvec4 wo16(uint i) { return WO16[i]; }
#else
uvec4 ws16(uint i) { return texelFetch(WST, int(i)); }
uvec4 wo16(uint i) { return texelFetch(WOT, int(i)); }
#endif

// The 8 fp16 values of a uvec4 (the lower channel in the low half of each word).
void halves8(uvec4 h, out vec4 v[2]) {
    v[0] = vec4(unpackHalf2x16(h.x), unpackHalf2x16(h.y));
    v[1] = vec4(unpackHalf2x16(h.z), unpackHalf2x16(h.w));
}
layout(std430, binding = 7) readonly buffer BiasBuf { vec4 BIAS[]; };
layout(std430, binding = 8) readonly buffer OSBuf { float OS[]; };
layout(std430, binding = 9) readonly buffer OZBuf { int OZ[]; };
layout(std430, binding = 10) writeonly buffer YBuf { uint Y[]; };
#ifdef STORAGE8
// The same output buffer seen as bytes, for int8 output (descriptor aliasing).
layout(std430, binding = 10) writeonly buffer Y8Buf { int8_t Y8[]; };
#endif

#ifdef INT64_LOADS
// Loads of the INT64_LOADS path, in 64-bit words: from storage buffers, or two texels.
#ifdef TEXEL_LOADS
u64vec4 texels32(usamplerBuffer buf, uint i) {   // the 32 bytes from byte 32 i
    uvec4 a = texelFetch(buf, int(2u * i)), b = texelFetch(buf, int(2u * i + 1u));
    return u64vec4(pack64(a.xy), pack64(a.zw), pack64(b.xy), pack64(b.zw));
}
u64vec4 w_unit(uint i) { return texels32(WT, i); }      // weight unit i (8 k of a block)
u64vec4 ws_vec(uint i) { return texels32(WST, i); }     // s of a block and group
u64vec4 wo_vec(uint i) { return texels32(WOT, i); }     // o
u64vec4 wsu_vec(uint i) { return texels32(WSUT, i); }   // sum u
u64vec2 x16(uint i) {                                   // activation bytes 16 i ..
    uvec4 a = texelFetch(XT, int(i));
    return u64vec2(pack64(a.xy), pack64(a.zw));
}
uint64_t x8(uint i) {                                   // activation bytes 8 i ..
    uvec4 a = texelFetch(XT, int(i / 2u));
    return (i % 2u == 0u) ? pack64(a.xy) : pack64(a.zw);
}
#else
u64vec4 w_unit(uint i) { return W[i]; }
u64vec4 ws_vec(uint i) { return WS[i]; }
u64vec4 wo_vec(uint i) { return WO[i]; }
u64vec4 wsu_vec(uint i) { return WSU[i]; }
u64vec2 x16(uint i) { return X2[i]; }
uint64_t x8(uint i) { return X[i]; }
#endif
#endif

#ifndef INT64_LOADS
// The four signed int8 activations of word idx of X (k = 4 idx .. 4 idx + 3).
ivec4 x_quad(uint idx) {
#ifdef STORAGE8
    return ivec4(X[idx]);
#else
    int w = int(X[idx]);
    return ivec4(bitfieldExtract(w, 0, 8), bitfieldExtract(w, 8, 8),
                 bitfieldExtract(w, 16, 8), bitfieldExtract(w, 24, 8));
#endif
}
#endif

#ifdef DOT_PRODUCT
// OpSDot with PackedVectorFormat4x8Bit: the dot product of two words of 4 signed int8
// (SPV_KHR_integer_dot_product; the host uses this variant only where the device enables
// shaderIntegerDotProduct). Debian's glslang 12 lacks GL_EXT_integer_dot_product, so the
// instruction is declared through GL_EXT_spirv_intrinsics: capabilities DotProduct (6019)
// and DotProductInput4x8BitPacked (6018), opcode 4450.
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6019, 6018],
                  id = 4450)
int sdot4x8(uint a, uint b, spirv_literal int packed_format);
int dot4(uint a, uint b) { return sdot4x8(a, b, 0); }
// OpSDotAccSat (opcode 4453): acc + the dot product, saturated; one instruction where an
// add after OpSDot is not fused (AMD's compiler). Equal to acc + dot4(a, b) wherever the
// sum fits int32, as every sum of the kernels does.
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6019, 6018],
                  id = 4453)
int sdot4x8_acc_sat(uint a, uint b, int acc, spirv_literal int packed_format);
int dot4_acc(uint a, uint b, int acc) { return sdot4x8_acc_sat(a, b, acc, 0); }
#endif

// Pair j (0..3) of a weight word: nibbles of channels j and j + 4 in the 16-bit halves.
int nibble_pair(uint word, uint j) {
    return int((word >> (4u * j)) & 0x000F000Fu);
}

// Splits a SWAR accumulator into its low-half and high-half sums (exact while each half's
// sum fits in 16 signed bits: see CHUNK).
ivec2 swar_split(int acc) {
    int lo = bitfieldExtract(acc, 0, 16);
    return ivec2(lo, (acc - lo) >> 16);
}

// Weight units: a unit is what one load brings of one channel block: the 8 channels at
// K_PER_UNIT consecutive k (one uint; one u64vec4 of four k-pairs with INT64_LOADS; two
// uvec4 with DOT_PRODUCT, which index W in uvec4 units and so use 2 * unit). Two orders:
//   default      [b / LANES][k unit][b % LANES]: LANES neighbouring invocations (channel
//                blocks, the TILED kernel) read LANES neighbouring units at each k.
//   GROUP_ORDER  [b][g / LANES][k unit within the group][g % LANES], the last round of
//                groups holding only G % LANES (when not 0): LANES neighbouring workers
//                that take groups w, w + LANES, ... of one block (the subgroup COOPERATIVE
//                kernel) read neighbouring units.
#if defined(DOT_PRODUCT) || defined(INT64_LOADS)
const uint K_PER_UNIT = 8u;
#else
const uint K_PER_UNIT = 1u;
#endif
const uint UNITS_PER_GROUP = GROUP_SIZE / K_PER_UNIT;

// The first unit of group g (of G) of block b; `stride`: units between its consecutive k.
uint weight_unit(uint b, uint g, uint G, out uint stride) {
#ifdef GROUP_ORDER
    uint r = g / LANES;
    stride = min(LANES, G - r * LANES);
    return b * (p.K / K_PER_UNIT) + r * LANES * UNITS_PER_GROUP + (g - r * LANES);
#else
    stride = LANES;
    return ((b / LANES) * (p.K / K_PER_UNIT) + g * UNITS_PER_GROUP) * LANES + (b % LANES);
#endif
}

// The same index as a part of the block plus a part of the group (the same for every
// block, so that a loop over groups keeps the first): block_unit(b) + group_unit(g, G,
// stride). weight_unit keeps its one expression: the GEMV and TILED kernels compile a few
// instructions shorter from it.
uint block_unit(uint b) {
#ifdef GROUP_ORDER
    return b * (p.K / K_PER_UNIT);
#else
    return (b / LANES) * (p.K / K_PER_UNIT) * LANES + (b % LANES);
#endif
}

uint group_unit(uint g, uint G, out uint stride) {
#ifdef GROUP_ORDER
    uint r = g / LANES;
    stride = min(LANES, G - r * LANES);
    return r * LANES * UNITS_PER_GROUP + (g - r * LANES);
#else
    stride = LANES;
    return g * UNITS_PER_GROUP * LANES;
#endif
}

// Index (in vec4 units) of the first group-data vec4 of block b at group g. Ordered
// [b / LANES][g][b % LANES][8 channels], or [b][g][8 channels] with GROUP_ORDER: the
// group adds g * GROUP_STEP.
uint group_base(uint b, uint g, uint G) {
#ifdef GROUP_ORDER
    return (b * G + g) * 2u;
#else
    return (((b / LANES) * G + g) * LANES + (b % LANES)) * 2u;
#endif
}
#ifdef GROUP_ORDER
const uint GROUP_STEP = 2u;
#else
const uint GROUP_STEP = 2u * LANES;
#endif

// The group data of a block and group, 8 channels as two vec4; gb from group_base (in
// float32 vec4 units; fp16 data is one uvec4 a block and group, at gb / 2). The nibble
// sums su are read unless the kernel forms them (FORM_SUMS; then 0 here).
void group_data(uint gb, out vec4 s[2], out vec4 o[2], out ivec4 su[2]) {
    if (HALF_SCALES) halves8(ws16(gb / 2u), s);
#ifdef INT64_LOADS
    if (!HALF_SCALES) {
        u64vec4 ws = ws_vec(gb / 2u);
        s[0] = vec4(uintBitsToFloat(unpack32(ws.x)), uintBitsToFloat(unpack32(ws.y)));
        s[1] = vec4(uintBitsToFloat(unpack32(ws.z)), uintBitsToFloat(unpack32(ws.w)));
    }
    if (HAS_OFFSET == 1u && !HALF_OFFSETS) {
        u64vec4 wo = wo_vec(gb / 2u);
        o[0] = vec4(uintBitsToFloat(unpack32(wo.x)), uintBitsToFloat(unpack32(wo.y)));
        o[1] = vec4(uintBitsToFloat(unpack32(wo.z)), uintBitsToFloat(unpack32(wo.w)));
    }
    if (!SUMS16 && !FORM_SUMS) {
        u64vec4 wu = wsu_vec(gb / 2u);
        su[0] = ivec4(unpack32(wu.x), unpack32(wu.y));
        su[1] = ivec4(unpack32(wu.z), unpack32(wu.w));
    }
#else
    if (!HALF_SCALES) {
        s[0] = WS[gb];
        s[1] = WS[gb + 1u];
    }
    if (HAS_OFFSET == 1u && !HALF_OFFSETS) {
        o[0] = WO[gb];
        o[1] = WO[gb + 1u];
    }
    if (!SUMS16 && !FORM_SUMS) {
        su[0] = WSU[gb];
        su[1] = WSU[gb + 1u];
    }
#endif
    if (HAS_OFFSET == 1u && HALF_OFFSETS) {     // o = m + 8 s, as the host checked
        vec4 m[2];
        halves8(wo16(gb / 2u), m);
        o[0] = m[0] + 8.0 * s[0];
        o[1] = m[1] + 8.0 * s[1];
    }
    if (HAS_OFFSET != 1u) {
        o[0] = vec4(0.0);
        o[1] = vec4(0.0);
    }
    if (FORM_SUMS) {
        su[0] = ivec4(0);
        su[1] = ivec4(0);
    }
    if (SUMS16 && !FORM_SUMS) {
#ifdef TEXEL_LOADS
        uvec4 v = texelFetch(WSUT, int(gb / 2u));
#else
        uvec4 v = WSU16[gb / 2u];
#endif
        uvec4 h[2] = uvec4[2](uvec4(v.x, v.x >> 16, v.y, v.y >> 16),
                              uvec4(v.z, v.z >> 16, v.w, v.w >> 16));
        // integer zero points (HAS_OFFSET 2): z in the top 4 bits (two's complement),
        // o = -s z exactly as the stored offset would be (one float32 multiply)
        uint mask = (HAS_OFFSET == 2u) ? 0x0FFFu : 0xFFFFu;
        [[unroll]] for (uint i = 0u; i < 2u; i++) {
            su[i] = ivec4(h[i] & mask);
            if (HAS_OFFSET == 2u) o[i] = -s[i] * vec4(bitfieldExtract(ivec4(h[i]), 12, 4));
        }
    }
}

#include "rounding.glsl"

// docs/spec.md's per-token int8 requantization: clamp(round half to even(y / scale) + zp,
// -128, 127).
int requantize(float y, float scale, int zp) {
    return int(clamp(round_even(y / scale) + float(zp), -128.0, 127.0));
}
