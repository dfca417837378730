#version 450
#extension GL_GOOGLE_include_directive : require
#ifdef SUBGROUP_REDUCE
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
// Dynamic per-token activation quantization on the device, with exactly the integers of
// PyTorch's choose_qparams_per_token_asymmetric + quantize_per_token (docs/spec.md; the CPU
// twin is vkqlinear.quant.quantize_per_token):
//
//   mn = min(min(x_row), 0);  mx = max(max(x_row), 0)
//   scale = max((mx - mn) / 255, eps)
//   zp = (-128 + mn/scale) + (127 + mx/scale) > 0 ? -128 - mn/scale : 127 - mx/scale
//   zp = round_half_to_even(clamp(zp, -128, 127))
//   x_q = clamp(round_half_to_even(x * (1/scale) + zp), -128, 127)
//
// or, with CONVENTION = 1, torchao's choose_qparams_affine + quantize_affine (asymmetric,
// per token; the CPU twin is quantize_per_token(x, convention="torchao")):
//
//   scale = max((mx - mn) / 255, eps)
//   zp = clamp(-128 - round_half_to_even(mn / scale), -128, 127)
//   x_q = clamp(round_half_to_even(x * (1/scale)) + zp, -128, 127)
//
// eps (EPS_BITS) is float32 eps for the contract and torchao's Int8DynActInt4WeightLinear,
// float32's smallest normal for torchao's 8da4w tensors.
//
// Bit-exactness on any Vulkan device: additions, subtractions and multiplications are
// correctly rounded in Vulkan, and `precise` keeps the compiler from fusing or reordering
// them; Vulkan's float division is not (2.5 ULP), so the divisions are done exactly in
// integers (div_rn). Subnormal inputs may be flushed by the device; with eps = 2^-23 that
// cannot change an integer result (|x| / scale is then far below 1/2). With the smallest
// normal as eps it can, for rows whose values are all below about 2^-100 in magnitude.
//
// One workgroup per token: its LOCAL_X invocations stride over the row (4 floats each step)
// for min and max, reduce through shared memory, invocation 0 derives the qparams, then all
// quantize their words. Grid: y = tokens from p.token_base.
//
// Bindings: 0 XF float [T][stride] input rows (K used), 1 X uint [T][K_out/4] int8 output (4
// per word, k = 4w + j in byte j: the linear kernels' binding 0), 2 XS float [T], 3 XZ int
// [T], 4 NF uint [1]: bit 0 set when a row holds an inf or a NaN (the host clears it before
// the call and refuses the result; tested on the bits, as Vulkan lets a compiler assume
// float values finite). K_out = K / group_in * group_out: each group of the row is padded to group_out words
// with the zero point (what a 0.0 quantizes to), for weights whose groups the host padded
// to a multiple of 8.

layout(constant_id = 0) const uint LOCAL_X = 64;   // power of two
layout(constant_id = 1) const uint CONVENTION = 0;  // 0: the contract's, 1: torchao's
layout(constant_id = 2) const uint EPS_BITS = 0x34000000u;  // eps: 2^-23 by default
layout(local_size_x_id = 0, local_size_y = 1, local_size_z = 1) in;
#include "rounding.glsl"

layout(push_constant) uniform Params {
    uint T;           // tokens
    uint K;           // input row length (multiple of 4)
    uint stride;      // row stride of XF in floats (multiple of 4, >= K)
    uint token_base;  // first token of this dispatch
    uint group_in;    // words (of 4 values) per weight group in the input row
    uint group_out;   // and in the output row, >= group_in: the rest is padding (zp)
} p;

layout(std430, binding = 0) readonly buffer XFBuf { vec4 XF[]; };
layout(std430, binding = 1) writeonly buffer XBuf { uint X[]; };
layout(std430, binding = 2) writeonly buffer XSBuf { float XS[]; };
layout(std430, binding = 3) writeonly buffer XZBuf { int XZ[]; };
layout(std430, binding = 4) buffer NFBuf { uint NF[]; };

shared float s_min[LOCAL_X];
shared float s_max[LOCAL_X];
shared float s_inv;
shared float s_zp;

// |a| = m * 2^e with m in [2^23, 2^24), for finite a != 0 (subnormals normalized).
void unpack_float(float a, out uint m, out int e) {
    uint bits = floatBitsToUint(a) & 0x7FFFFFFFu;
    uint ex = bits >> 23u;
    uint mant = bits & 0x7FFFFFu;
    if (ex == 0u) {
        int sh = 23 - findMSB(mant);
        m = mant << uint(sh);
        e = -149 - sh;
    } else {
        m = mant | 0x800000u;
        e = int(ex) - 150;
    }
}

// a / b rounded to nearest even, exactly as IEEE division, for finite a and normal b > 0
// whose quotient is normal or zero (the quotients here; a subnormal one may lose bits,
// which cannot change the integers). Long division of the 24-bit significands.
float div_rn(float a, float b) {
    uint abits = floatBitsToUint(a);
    if ((abits & 0x7FFFFFFFu) == 0u) return 0.0;
    uint ma, mb;
    int ea, eb;
    unpack_float(a, ma, ea);
    unpack_float(b, mb, eb);
    int e = ea - eb;
    if (ma < mb) {            // quotient of the significands in [1, 2)
        ma <<= 1u;
        e -= 1;
    }
    uint q = 0u, r = ma;      // r < 2 mb < 2^25 throughout
    for (int i = 0; i < 25; i++) {
        q <<= 1u;
        if (r >= mb) {
            q |= 1u;
            r -= mb;
        }
        r <<= 1u;
    }
    // q in [2^24, 2^25): 24 significand bits and a guard bit; r != 0 is the sticky bit.
    uint sig = q >> 1u;
    if ((q & 1u) != 0u && (r != 0u || (sig & 1u) != 0u)) sig += 1u;
    float mag = ldexp(float(sig), e - 23);
    return (abits & 0x80000000u) != 0u ? -mag : mag;
}

// The row's qparams from its min and max (0 folded in): scale, 1 / scale and the zero
// point, as the header says.
void qparams(float lo_in, float hi_in, out float scale, out float inv, out float zp) {
    precise float lo = lo_in;
    precise float hi = hi_in;
    precise float range = hi - lo;
    scale = max(div_rn(range, 255.0), uintBitsToFloat(EPS_BITS));
    float dmin = div_rn(lo, scale);
    if (CONVENTION == 0u) {
        float dmax = div_rn(hi, scale);
        precise float err_min = -128.0 + dmin;
        precise float err_max = 127.0 + dmax;
        precise float total = err_min + err_max;
        precise float from_min = -128.0 - dmin;
        precise float from_max = 127.0 - dmax;
        zp = round_even(clamp(total > 0.0 ? from_min : from_max, -128.0, 127.0));
    } else {
        precise float from_min = -128.0 - round_even(dmin);
        zp = clamp(from_min, -128.0, 127.0);
    }
    inv = div_rn(1.0, scale);
}

// Four values quantized with the row's 1 / scale and zero point, packed (k = 4w + j in
// byte j).

uint quantize4(vec4 v, float inv, float zp) {
    vec4 r;
    if (CONVENTION == 0u) {
        precise vec4 y = v * inv + zp;       // the zero point added before rounding
        r = round_even(y);
    } else {
        precise vec4 y = v * inv;
        r = round_even(y) + zp;              // after it
    }
    ivec4 q = ivec4(clamp(r, -128.0, 127.0));
    return uint(q.x & 0xFF) | (uint(q.y & 0xFF) << 8u) | (uint(q.z & 0xFF) << 16u) |
           (uint(q.w & 0xFF) << 24u);
}

void main() {
    uint t = p.token_base + gl_WorkGroupID.y;
    uint lid = gl_LocalInvocationID.x;
    bool live = t < p.T;
    uint words = p.K / 4u;
    uint row = t * (p.stride / 4u);

    float mn = 0.0, mx = 0.0;  // min(., 0) and max(., 0) folded in
    uint ex = 0u;              // the largest exponent field seen
    if (live) {
        for (uint w = lid; w < words; w += LOCAL_X) {
            vec4 v = XF[row + w];
            mn = min(mn, min(min(v.x, v.y), min(v.z, v.w)));
            mx = max(mx, max(max(v.x, v.y), max(v.z, v.w)));
            uvec4 e = floatBitsToUint(v) & 0x7F800000u;
            ex = max(ex, max(max(e.x, e.y), max(e.z, e.w)));
        }
    }
    if (ex == 0x7F800000u) atomicOr(NF[0], 1u);
    float inv, zp;
#ifdef SUBGROUP_REDUCE
    // The workgroup is one subgroup when the pipeline runs at the subgroup size the host
    // set LOCAL_X to: every lane reduces and derives the qparams itself, with no shared
    // memory and no barrier (min and max are exact in any order). Else the shared path.
    if (gl_NumSubgroups == 1u) {
        float lo = subgroupMin(mn);
        float hi = subgroupMax(mx);
        if (!live) return;
        float scale;
        qparams(lo, hi, scale, inv, zp);
        if (lid == 0u) {
            XS[t] = scale;
            XZ[t] = int(zp);
        }
    } else
#endif
    {
        s_min[lid] = mn;
        s_max[lid] = mx;
        barrier();
        for (uint s = LOCAL_X / 2u; s > 0u; s >>= 1u) {
            if (lid < s) {
                s_min[lid] = min(s_min[lid], s_min[lid + s]);
                s_max[lid] = max(s_max[lid], s_max[lid + s]);
            }
            barrier();
        }
        if (lid == 0u && live) {
            float scale;
            qparams(s_min[0], s_max[0], scale, inv, zp);
            s_inv = inv;
            s_zp = zp;
            XS[t] = scale;
            XZ[t] = int(zp);
        }
        barrier();
        if (!live) return;
        inv = s_inv;
        zp = s_zp;
    }
    uint out_words = words / p.group_in * p.group_out;
    // word w of the output row is word j of group grp: stepped along, not divided for each
    uint grp = lid / p.group_out, j = lid - grp * p.group_out;
    uint step_g = LOCAL_X / p.group_out, step_j = LOCAL_X - step_g * p.group_out;
    for (uint w = lid; w < out_words; w += LOCAL_X) {
        vec4 v = j < p.group_in ? XF[row + grp * p.group_in + j] : vec4(0.0);
        X[t * out_words + w] = quantize4(v, inv, zp);
        grp += step_g;
        j += step_j;
        if (j >= p.group_out) {
            j -= p.group_out;
            grp += 1u;
        }
    }
}
