#version 450
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
// Bit-exactness on any Vulkan device: additions, subtractions and multiplications are
// correctly rounded in Vulkan, and `precise` keeps the compiler from fusing or reordering
// them; Vulkan's float division is not (2.5 ULP), so the four divisions are done exactly in
// integers (div_rn). Subnormal inputs may be flushed by the device; that cannot change an
// integer result here (|x| / scale is then far below 1/2).
//
// One workgroup per token: its LOCAL_X invocations stride over the row (4 floats each step)
// for min and max, reduce through shared memory, invocation 0 derives the qparams, then all
// quantize their words. Grid: y = tokens from p.token_base.
//
// Bindings: 0 XF float [T][stride] input rows (K used), 1 X uint [T][K/4] int8 output (4 per
// word, k = 4w + j in byte j: the linear kernels' binding 0), 2 XS float [T], 3 XZ int [T].

layout(constant_id = 0) const uint LOCAL_X = 64;   // power of two
layout(local_size_x_id = 0, local_size_y = 1, local_size_z = 1) in;

layout(push_constant) uniform Params {
    uint T;           // tokens
    uint K;           // row length (multiple of 4)
    uint stride;      // row stride of XF in floats (multiple of 4, >= K)
    uint token_base;  // first token of this dispatch
} p;

layout(std430, binding = 0) readonly buffer XFBuf { vec4 XF[]; };
layout(std430, binding = 1) writeonly buffer XBuf { uint X[]; };
layout(std430, binding = 2) writeonly buffer XSBuf { float XS[]; };
layout(std430, binding = 3) writeonly buffer XZBuf { int XZ[]; };

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

void main() {
    uint t = p.token_base + gl_WorkGroupID.y;
    uint lid = gl_LocalInvocationID.x;
    bool live = t < p.T;
    uint words = p.K / 4u;
    uint row = t * (p.stride / 4u);

    float mn = 0.0, mx = 0.0;  // min(., 0) and max(., 0) folded in
    if (live) {
        for (uint w = lid; w < words; w += LOCAL_X) {
            vec4 v = XF[row + w];
            mn = min(mn, min(min(v.x, v.y), min(v.z, v.w)));
            mx = max(mx, max(max(v.x, v.y), max(v.z, v.w)));
        }
    }
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
        precise float lo = s_min[0];
        precise float hi = s_max[0];
        precise float range = hi - lo;
        float scale = max(div_rn(range, 255.0), uintBitsToFloat(0x34000000u));  // eps 2^-23
        float dmin = div_rn(lo, scale);
        float dmax = div_rn(hi, scale);
        precise float err_min = -128.0 + dmin;
        precise float err_max = 127.0 + dmax;
        precise float total = err_min + err_max;
        precise float from_min = -128.0 - dmin;
        precise float from_max = 127.0 - dmax;
        float zp = roundEven(clamp(total > 0.0 ? from_min : from_max, -128.0, 127.0));
        s_inv = div_rn(1.0, scale);
        s_zp = zp;
        XS[t] = scale;
        XZ[t] = int(zp);
    }
    barrier();
    if (!live) return;
    float inv = s_inv;
    float zp = s_zp;
    for (uint w = lid; w < words; w += LOCAL_X) {
        vec4 v = XF[row + w];
        precise vec4 y = v * inv + zp;
        ivec4 q = ivec4(clamp(roundEven(y), -128.0, 127.0));
        X[t * words + w] = uint(q.x & 0xFF) | (uint(q.y & 0xFF) << 8u) |
                           (uint(q.z & 0xFF) << 16u) | (uint(q.w & 0xFF) << 24u);
    }
}
