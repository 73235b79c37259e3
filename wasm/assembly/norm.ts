// RMSNorm as HF LlamaRMSNorm computes it in f32: y = w * (x / sqrt(mean(x^2) + eps)).
// x, y (T, H) f32 (y may alias x); w (H) f32. H must be a multiple of 4.
import { hsum } from "./simd";

export function rmsnorm(x: usize, w: usize, y: usize, T: i32, H: i32, eps: f32): void {
  const rs = <usize>H << 2;
  for (let t = 0; t < T; t++) {
    const xr = x + <usize>t * rs;
    const yr = y + <usize>t * rs;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0);
    let i = 0;
    for (; i + 8 <= H; i += 8) {
      const v0 = v128.load(xr + (<usize>i << 2));
      const v1 = v128.load(xr + (<usize>i << 2), 16);
      a0 = f32x4.add(a0, f32x4.mul(v0, v0));
      a1 = f32x4.add(a1, f32x4.mul(v1, v1));
    }
    for (; i < H; i += 4) {
      const v0 = v128.load(xr + (<usize>i << 2));
      a0 = f32x4.add(a0, f32x4.mul(v0, v0));
    }
    const inv = f32x4.splat(<f32>1 / sqrt<f32>(hsum(f32x4.add(a0, a1)) / <f32>H + eps));
    for (let j = 0; j < H; j += 4) {
      const o = <usize>j << 2;
      v128.store(yr + o, f32x4.mul(f32x4.mul(v128.load(xr + o), inv), v128.load(w + o)));
    }
  }
}

/** Scalar reference. */
export function rmsnorm_ref(x: usize, w: usize, y: usize, T: i32, H: i32, eps: f32): void {
  for (let t = 0; t < T; t++) {
    const xr = x + ((<usize>t * <usize>H) << 2);
    const yr = y + ((<usize>t * <usize>H) << 2);
    let ss: f32 = 0;
    for (let i = 0; i < H; i++) {
      const v = load<f32>(xr + (<usize>i << 2));
      ss += v * v;
    }
    const inv: f32 = <f32>1 / sqrt<f32>(ss / <f32>H + eps);
    for (let i = 0; i < H; i++) {
      const o = <usize>i << 2;
      store<f32>(yr + o, load<f32>(xr + o) * inv * load<f32>(w + o));
    }
  }
}
