// SIMD primitives shared by the kernels: horizontal sum, bf16 widening and a vector exp.
// Every kernel file keeps its scalar reference beside the SIMD version; these helpers are the
// only v128 code that is not itself a kernel.

/**
 * a * b + c. Built twice (wasm/build.mjs): with relaxed SIMD it is f32x4.relaxed_madd, which V8
 * runs as one fused multiply-add where the CPU has FMA (one rounding instead of two, and half the
 * instructions in the GEMM's inner loop); without, a multiply then an add (two roundings), which
 * every engine with SIMD128 runs. The loader picks the relaxed module where the engine validates it.
 */
// @ts-ignore: decorator
@inline
export function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(f32x4.mul(a, b), c);
}

/** Whether this module was built with relaxed SIMD (madd fused): 1 or 0. */
export function relaxed_simd(): i32 {
  return ASC_FEATURE_RELAXED_SIMD ? 1 : 0;
}

/** Sum of the four f32 lanes. */
// @ts-ignore: decorator
@inline
export function hsum(v: v128): f32 {
  const s = f32x4.add(v, v128.shuffle<f32>(v, v, 2, 3, 0, 1));
  return f32x4.extract_lane(s, 0) + f32x4.extract_lane(s, 1);
}

/** Four bf16 values at `p` widened to f32x4 (bf16 is the top half of an f32). */
// @ts-ignore: decorator
@inline
export function loadBf16x4(p: usize): v128 {
  return i32x4.shl(v128.load16x4_u(p), 16);
}

/** Eight int8 values at `p` as two f32x4 (low four, high four). */
// @ts-ignore: decorator
@inline
export function loadI8x8Lo(p: usize): v128 {
  return f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(v128.load8x8_s(p)));
}

// @ts-ignore: decorator
@inline
export function i8x8Hi(w16: v128): v128 {
  return f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(w16));
}

/** f32 -> bf16 bits, round to nearest even (NaN stays NaN: its mantissa top bits survive). */
// @ts-ignore: decorator
@inline
export function f32ToBf16(x: f32): u16 {
  const bits = reinterpret<u32>(x);
  if ((bits & 0x7fffffff) > 0x7f800000) return <u16>((bits >>> 16) | 0x40);
  return <u16>((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16);
}

// @ts-ignore: decorator
@inline
export function bf16ToF32(b: u16): f32 {
  return reinterpret<f32>(<u32>b << 16);
}

// exp on f32x4 (Cephes expf): x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6 polynomial, 2^n by
// building the exponent bits. Relative error <= 2e-7 over the clamped range; inputs below -87.3
// give ~1e-38 (softmax weights that small are 0 to f32 sums), NaN is not expected (scores are finite).
const EXP_HI: f32 = 88.3762626647949;
const EXP_LO: f32 = -87.3;
const LOG2E: f32 = 1.44269504088896341;
const LN2_HI: f32 = 0.693359375;
const LN2_LO: f32 = -2.12194440e-4;
// 1.5 * 2^23: adding it to an integer-valued f32 n in [-2^22, 2^22] leaves n in the low mantissa bits.
const EXP_MAGIC: f32 = 12582912.0;
const EXP_MAGIC_BITS: i32 = 0x4b400000;

// @ts-ignore: decorator
@inline
export function exp4(xIn: v128): v128 {
  // pmin/pmax, not min/max: one x64 instruction each instead of a NaN-propagating sequence of
  // several (inputs are finite or -inf, for which both agree). 2^n from the float n through the
  // 1.5 * 2^23 magic add (exact for the integers -127..128 here), not a saturating conversion.
  let x = f32x4.pmin(f32x4.pmax(xIn, f32x4.splat(EXP_LO)), f32x4.splat(EXP_HI));
  const n = f32x4.floor(f32x4.add(f32x4.mul(x, f32x4.splat(LOG2E)), f32x4.splat(0.5)));
  x = f32x4.sub(x, f32x4.mul(n, f32x4.splat(LN2_HI)));
  x = f32x4.sub(x, f32x4.mul(n, f32x4.splat(LN2_LO)));
  // Horner steps through madd: fused in the relaxed build, mul + add (as before) in the plain one.
  let y = f32x4.splat(1.9875691500e-4);
  y = madd(y, x, f32x4.splat(1.3981999507e-3));
  y = madd(y, x, f32x4.splat(8.3334519073e-3));
  y = madd(y, x, f32x4.splat(4.1665795894e-2));
  y = madd(y, x, f32x4.splat(1.6666665459e-1));
  y = madd(y, x, f32x4.splat(5.0000001201e-1));
  y = f32x4.add(madd(f32x4.mul(y, x), x, x), f32x4.splat(1.0));
  const pow2n = i32x4.shl(
    i32x4.sub(f32x4.add(n, f32x4.splat(EXP_MAGIC)), i32x4.splat(EXP_MAGIC_BITS - 127)),
    23,
  );
  return f32x4.mul(y, pow2n);
}

// 2^x on f32x4 for x <= 0 (softmax weights in base 2: the scores pre-scaled by log2 e): x = n + r
// with n = round(x), |r| <= 1/2, 2^r by its degree-6 Taylor polynomial (relative error <= 1.2e-7 at
// |r| = 1/2), 2^n from the exponent bits. Inputs below -126 give 2^-126 (~1e-38: zero to f32 sums
// of weights near 1). Against exp4(x ln 2) it drops the ln 2 multiply, the two-step reduction and
// the upper clamp: 14 instructions instead of 21, on the softmax's every score.
const C1: f32 = 0.6931471805599453;
const C2: f32 = 0.2402265069591007;
const C3: f32 = 0.05550410866482158;
const C4: f32 = 0.009618129107628477;
const C5: f32 = 0.0013333558146428443;
const C6: f32 = 0.00015403530393381609;

// @ts-ignore: decorator
@inline
export function exp2neg4(xIn: v128): v128 {
  const x = f32x4.pmax(xIn, f32x4.splat(-126));
  const n = f32x4.nearest(x);
  const r = f32x4.sub(x, n);
  let y = madd(f32x4.splat(C6), r, f32x4.splat(C5));
  y = madd(y, r, f32x4.splat(C4));
  y = madd(y, r, f32x4.splat(C3));
  y = madd(y, r, f32x4.splat(C2));
  y = madd(y, r, f32x4.splat(C1));
  y = madd(y, r, f32x4.splat(1.0));
  const pow2n = i32x4.shl(
    i32x4.sub(f32x4.add(n, f32x4.splat(EXP_MAGIC)), i32x4.splat(EXP_MAGIC_BITS - 127)),
    23,
  );
  return f32x4.mul(y, pow2n);
}
