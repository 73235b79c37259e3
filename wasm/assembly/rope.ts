// Rotary position embedding, HF convention (rotate_half on HF-layout q/k weights):
//   out[i]        = x[i] * cos_i - x[i + half] * sin_i
//   out[i + half] = x[i + half] * cos_i + x[i] * sin_i,      i < half = head_dim / 2
// with angle_i = position * invFreq[i]. Every rope type (default, linear, dynamic, llama3, yarn)
// differs only in invFreq and in yarn's attention scaling, which HF multiplies into cos and sin;
// core/model/rope.ts computes both, so one kernel serves all of them.


/**
 * cos/sin table for the positions of T rows (positions (T) i32: a batch's rows belong to several
 * sequences): cos, sin (T, half) f32, already times `scaling`. invFreq (half) f64. Angles in f64:
 * at position 4M an f32 angle is off by up to 0.25 rad (half an ulp).
 */
export function rope_table(invFreq: usize, half: i32, positions: usize, T: i32, scaling: f32, cos: usize, sin: usize): void {
  for (let t = 0; t < T; t++) {
    const pos = <f64>load<i32>(positions + (<usize>t << 2));
    for (let i = 0; i < half; i++) {
      const a = pos * load<f64>(invFreq + (<usize>i << 3));
      const o = (<usize>t * <usize>half + <usize>i) << 2;
      store<f32>(cos + o, <f32>Math.cos(a) * scaling);
      store<f32>(sin + o, <f32>Math.sin(a) * scaling);
    }
  }
}

/**
 * Rotate `heads` heads of every token in place. Token t, head h starts at x + (t * stride + h * hd)
 * floats. half = hd / 2 must be a multiple of 4.
 */
export function rope_apply(x: usize, stride: i32, T: i32, heads: i32, hd: i32, cos: usize, sin: usize): void {
  const half = hd >> 1;
  for (let t = 0; t < T; t++) {
    const ct = cos + ((<usize>t * <usize>half) << 2);
    const st = sin + ((<usize>t * <usize>half) << 2);
    for (let h = 0; h < heads; h++) {
      const p = x + ((<usize>t * <usize>stride + <usize>h * <usize>hd) << 2);
      const q = p + (<usize>half << 2);
      for (let i = 0; i < half; i += 4) {
        const o = <usize>i << 2;
        const x1 = v128.load(p + o);
        const x2 = v128.load(q + o);
        const c = v128.load(ct + o);
        const s = v128.load(st + o);
        v128.store(p + o, f32x4.sub(f32x4.mul(x1, c), f32x4.mul(x2, s)));
        v128.store(q + o, f32x4.add(f32x4.mul(x2, c), f32x4.mul(x1, s)));
      }
    }
  }
}

/** Scalar reference. */
export function rope_apply_ref(x: usize, stride: i32, T: i32, heads: i32, hd: i32, cos: usize, sin: usize): void {
  const half = hd >> 1;
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < heads; h++) {
      const p = x + ((<usize>t * <usize>stride + <usize>h * <usize>hd) << 2);
      for (let i = 0; i < half; i++) {
        const c = load<f32>(cos + ((<usize>t * <usize>half + <usize>i) << 2));
        const s = load<f32>(sin + ((<usize>t * <usize>half + <usize>i) << 2));
        const x1 = load<f32>(p + (<usize>i << 2));
        const x2 = load<f32>(p + (<usize>(i + half) << 2));
        store<f32>(p + (<usize>i << 2), x1 * c - x2 * s);
        store<f32>(p + (<usize>(i + half) << 2), x2 * c + x1 * s);
      }
    }
  }
}

