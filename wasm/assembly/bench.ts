// Peers for the runtime benchmark, measured in the same process as the kernels they judge.

/**
 * The SIMD128 multiply-add peak: `iters` x 10 independent chains a = a * c + d, i.e. 80 flops per
 * iteration, no memory traffic. Ten chains cover the mul + add latency (~8 cycles) on 2 FP ports.
 * Call it once with a small count first: V8 runs a function's first calls in its baseline tier.
 */
export function peak_madd(iters: i32, seed: f32): f32 {
  const c = f32x4.splat(0.9999999);
  const d = f32x4.splat(1e-7);
  let a0 = f32x4.splat(seed), a1 = f32x4.splat(seed + 1), a2 = f32x4.splat(seed + 2), a3 = f32x4.splat(seed + 3);
  let a4 = f32x4.splat(seed + 4), a5 = f32x4.splat(seed + 5), a6 = f32x4.splat(seed + 6), a7 = f32x4.splat(seed + 7);
  let a8 = f32x4.splat(seed + 8), a9 = f32x4.splat(seed + 9);
  for (let i = 0; i < iters; i++) {
    a0 = f32x4.add(f32x4.mul(a0, c), d);
    a1 = f32x4.add(f32x4.mul(a1, c), d);
    a2 = f32x4.add(f32x4.mul(a2, c), d);
    a3 = f32x4.add(f32x4.mul(a3, c), d);
    a4 = f32x4.add(f32x4.mul(a4, c), d);
    a5 = f32x4.add(f32x4.mul(a5, c), d);
    a6 = f32x4.add(f32x4.mul(a6, c), d);
    a7 = f32x4.add(f32x4.mul(a7, c), d);
    a8 = f32x4.add(f32x4.mul(a8, c), d);
    a9 = f32x4.add(f32x4.mul(a9, c), d);
  }
  const s = f32x4.add(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)), f32x4.add(f32x4.add(a4, a5), f32x4.add(a6, a7)));
  return f32x4.extract_lane(f32x4.add(s, f32x4.add(a8, a9)), 0);
}

/** Read `bytes` (a multiple of 64) from `p` with v128 loads: the memory-bandwidth peer. */
export function read_bytes(p: usize, bytes: usize): f32 {
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  const end = p + bytes;
  for (let q = p; q < end; q += 64) {
    a0 = f32x4.add(a0, v128.load(q));
    a1 = f32x4.add(a1, v128.load(q, 16));
    a2 = f32x4.add(a2, v128.load(q, 32));
    a3 = f32x4.add(a3, v128.load(q, 48));
  }
  return f32x4.extract_lane(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)), 0);
}
