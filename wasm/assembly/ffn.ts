// SwiGLU and residual adds.
//   gu (T, 2F): per token [gate (F) | up (F)]  ->  out (T, F) = silu(gate) * up,
//   silu(g) = g / (1 + e^-g).  F must be a multiple of 4.
import { exp2neg4, exp4 } from "./simd";

export function swiglu(gu: usize, T: i32, F: i32, out: usize): void {
  const one = f32x4.splat(1);
  for (let t = 0; t < T; t++) {
    const g = gu + ((<usize>t * <usize>(2 * F)) << 2);
    const u = g + (<usize>F << 2);
    const o = out + ((<usize>t * <usize>F) << 2);
    for (let i = 0; i < F; i += 4) {
      const b = <usize>i << 2;
      const gv = v128.load(g + b);
      const s = f32x4.div(gv, f32x4.add(one, exp4(f32x4.neg(gv))));
      v128.store(o + b, f32x4.mul(s, v128.load(u + b)));
    }
  }
}

/** Scalar reference (libm exp). */
export function swiglu_ref(gu: usize, T: i32, F: i32, out: usize): void {
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < F; i++) {
      const g = load<f32>(gu + ((<usize>t * <usize>(2 * F) + <usize>i) << 2));
      const u = load<f32>(gu + ((<usize>t * <usize>(2 * F) + <usize>(F + i)) << 2));
      store<f32>(out + ((<usize>t * <usize>F + <usize>i) << 2), (g / (1 + Mathf.exp(-g))) * u);
    }
  }
}

/** dst (n) += src (n); n a multiple of 4. */
export function add_into(dst: usize, src: usize, n: i32): void {
  for (let i = 0; i < n; i += 4) {
    const o = <usize>i << 2;
    v128.store(dst + o, f32x4.add(v128.load(dst + o), v128.load(src + o)));
  }
}

export function add_into_ref(dst: usize, src: usize, n: i32): void {
  for (let i = 0; i < n; i++) {
    const o = <usize>i << 2;
    store<f32>(dst + o, load<f32>(dst + o) + load<f32>(src + o));
  }
}

/** Vector exp, exposed so the kernel suite can bound its error against libm. */
export function exp_f32(x: usize, y: usize, n: i32): void {
  for (let i = 0; i < n; i += 4) {
    const o = <usize>i << 2;
    v128.store(y + o, exp4(v128.load(x + o)));
  }
}

/** Attention's 2^x for x <= 0 (simd.ts exp2neg4) over an array, for the same bound. */
export function exp2neg_f32(x: usize, y: usize, n: i32): void {
  for (let i = 0; i < n; i += 4) {
    const o = <usize>i << 2;
    v128.store(y + o, exp2neg4(v128.load(x + o)));
  }
}
