// rounding.glsl: round half to even, the one rounding every shader uses (the activation
// quantizer, and the int8 output's requantization).
//
// By the correctly rounded addition of 1.5 * 2^23 (exact for |y| < 2^22; larger values
// stay larger than any int8 clamp after). Not roundEven(): lavapipe (Mesa 22.3) rounded
// ties away from zero with it in some code shapes of the quantizer.
float round_even(float y) {
    precise float m = y + 12582912.0;
    precise float r = m - 12582912.0;
    return r;
}

vec4 round_even(vec4 y) {
    precise vec4 m = y + 12582912.0;
    precise vec4 r = m - 12582912.0;
    return r;
}
