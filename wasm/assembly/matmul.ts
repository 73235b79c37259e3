// Matrix products against weights in HF Linear layout:
//   y (T, N) [+]= x (T, K) @ W^T,   W (N, K) row-major, element W = f32 | bf16 | int8
// x and y are f32, dense. int8 weights carry one f32 scale per block of 32 along K:
//   scales (N, K / 32), W[n, k] ~= q[n, k] * scales[n, k / 32]
//
// The SIMD version is a blocked GEMM: rows of W are taken in blocks that fit in L2 (~128 KiB); for
// each block, every tile of 4 tokens x 2 rows runs over K with 8 f32x4 accumulators, so each
// weight vector loaded is used by 4 tokens and each x vector by 2 rows. The 4 x rows of a tile are
// first packed k-major into a static buffer so the inner loop reads them from one pointer with
// immediate offsets (22.6 -> 34.4 GFLOP/s in an A/B run, against a 37 GFLOP/s peak loop); rows of
// K > 16384 fall back to the unpacked tile. Decode (T = 1) is memory-bound, one pass over W: for
// f32 and bf16 with K a multiple of 16 it reads the rows one after another (one sequential stream
// the prefetcher follows: row1f32, row1eo below), otherwise 1 x 4 tiles (four interleaved row
// streams, restarted every 4 rows). K must be a multiple of 4 (32 for int8); the glue checks.
//
// Performance notes (what was tried): a 1 x 4 decode tile with row pointers advanced in place and K
// unrolled by 8 made no measurable difference (decode is bound by memory streams, not instructions);
// 4x3 and 4x4 tiles need 19+ live v128 values and spill on
// x64's 16 xmm registers; 2x2 halves weight reuse. Relaxed-SIMD fma is not on by default in Node 20.
import { hsum, loadBf16x4, madd } from "./simd";

export const I8_BLOCK: i32 = 32;
const L2_BLOCK_BYTES: i32 = 131072;

/** Four weights at element pointer `p` widened to f32x4 (int8 still unscaled). */
// @ts-ignore: decorator
@inline
function ldw<W>(p: usize): v128 {
  if (sizeof<W>() == 4) return v128.load(p);
  if (sizeof<W>() == 2) return loadBf16x4(p);
  return f32x4.convert_i32x4_s(
    i32x4.extend_low_i16x8_s(i16x8.extend_low_i8x16_s(v128.load32_zero(p))),
  );
}

/** One weight as f32 (int8 unscaled). */
// @ts-ignore: decorator
@inline
function ldw1<W>(p: usize): f32 {
  if (sizeof<W>() == 4) return load<f32>(p);
  if (sizeof<W>() == 2) return reinterpret<f32>(<u32>load<u16>(p) << 16);
  return <f32>load<i8>(p);
}

// @ts-ignore: decorator
@inline
function blockOf<W>(K: i32): i32 {
  return sizeof<W>() == 1 ? I8_BLOCK : K;
}

// @ts-ignore: decorator
@inline
function scaleOf<W>(scales: usize, K: i32, n: i32, k0: i32): v128 {
  if (sizeof<W>() != 1) return f32x4.splat(1);
  return f32x4.splat(load<f32>(scales + ((<usize>n * <usize>(K / I8_BLOCK) + <usize>(k0 / I8_BLOCK)) << 2)));
}

// @ts-ignore: decorator
@inline
function put(y: usize, v: f32, acc: bool): void {
  store<f32>(y, acc ? load<f32>(y) + v : v);
}

// @ts-ignore: decorator
@inline
function tile4x2<W>(x: usize, K: i32, w: usize, scales: usize, n: i32, y: usize, N: i32, acc: bool): void {
  const eb = <usize>sizeof<W>();
  const xs = <usize>K << 2;
  const w0 = w + <usize>n * <usize>K * eb;
  const w1 = w0 + <usize>K * eb;
  let a00 = f32x4.splat(0), a01 = f32x4.splat(0), a10 = f32x4.splat(0), a11 = f32x4.splat(0);
  let a20 = f32x4.splat(0), a21 = f32x4.splat(0), a30 = f32x4.splat(0), a31 = f32x4.splat(0);
  const bk = blockOf<W>(K);
  for (let k0 = 0; k0 < K; k0 += bk) {
    const s0 = scaleOf<W>(scales, K, n, k0);
    const s1 = scaleOf<W>(scales, K, n + 1, k0);
    const kEnd = k0 + bk;
    for (let k = k0; k < kEnd; k += 4) {
      let v0 = ldw<W>(w0 + <usize>k * eb);
      let v1 = ldw<W>(w1 + <usize>k * eb);
      if (sizeof<W>() == 1) {
        v0 = f32x4.mul(v0, s0);
        v1 = f32x4.mul(v1, s1);
      }
      const xp = x + (<usize>k << 2);
      const x0 = v128.load(xp);
      const x1 = v128.load(xp + xs);
      const x2 = v128.load(xp + 2 * xs);
      const x3 = v128.load(xp + 3 * xs);
      a00 = madd(x0, v0, a00);
      a01 = madd(x0, v1, a01);
      a10 = madd(x1, v0, a10);
      a11 = madd(x1, v1, a11);
      a20 = madd(x2, v0, a20);
      a21 = madd(x2, v1, a21);
      a30 = madd(x3, v0, a30);
      a31 = madd(x3, v1, a31);
    }
  }
  const ys = <usize>N << 2;
  const yp = y + (<usize>n << 2);
  put(yp, hsum(a00), acc);
  put(yp + 4, hsum(a01), acc);
  put(yp + ys, hsum(a10), acc);
  put(yp + ys + 4, hsum(a11), acc);
  put(yp + 2 * ys, hsum(a20), acc);
  put(yp + 2 * ys + 4, hsum(a21), acc);
  put(yp + 3 * ys, hsum(a30), acc);
  put(yp + 3 * ys + 4, hsum(a31), acc);
}

// Four x rows packed k-major: [k / 4][token 0..3][4 floats], so the GEMM's inner loop reads all four
// with one pointer and immediate offsets (fewer address computations per multiply-add).
const PACK_MAX_K: i32 = 16384;
const PACK: usize = memory.data(4 * PACK_MAX_K * 4, 64);

function packX4(x: usize, K: i32, dst: usize = PACK): void {
  const xs = <usize>K << 2;
  let o = dst;
  for (let k = 0; k < K; k += 4) {
    const xp = x + (<usize>k << 2);
    v128.store(o, v128.load(xp));
    v128.store(o, v128.load(xp + xs), 16);
    v128.store(o, v128.load(xp + 2 * xs), 32);
    v128.store(o, v128.load(xp + 3 * xs), 48);
    o += 64;
  }
}

// Small batches (a batched decode step: T of 8 to 64 rows) against a large W: every 4-token tile
// of x is packed once into PACKS, and each pair of W rows, read from memory once, serves every
// tile while it is in L1 (n outer, tiles inner). The blocked order below (per L2 block of W, tile
// after tile over the block) reads W from DRAM in its first tile's pass at 2 flops a byte, which
// DRAM cannot feed: lm_head of issue 15's model (T 16, K 512, N 32064) ran at 31 of the 45 GFLOP/s
// the same T reaches on a cached W, and at 34 in this order (one-off timings of matmul_f32 in a
// scratch script, relaxed build, one thread). Each y element is the same tile4x2p over the same k order,
// so both orders give identical bits. The packs live in DQ (below): int8 weights, the only user
// of DQ, never take this path.
const PACKS_BYTES: i32 = 4 * L2_BLOCK_BYTES;
const SMALL_T_MAX: i32 = 64;

function packTiles(x: usize, tiles: i32, K: i32): void {
  for (let g = 0; g < tiles; g++) {
    packX4(x + <usize>(4 * g) * (<usize>K << 2), K, DQ + <usize>g * (<usize>K << 4));
  }
}

/** tile4x2 over 4 rows packed at `pack` (packX4's layout). */
// @ts-ignore: decorator
@inline
function tile4x2p<W>(pack: usize, K: i32, w: usize, scales: usize, n: i32, y: usize, N: i32, acc: bool): void {
  const eb = <usize>sizeof<W>();
  const rb = <usize>K * eb;
  let pw = w + <usize>n * rb;
  let px = pack;
  let a00 = f32x4.splat(0), a01 = f32x4.splat(0), a10 = f32x4.splat(0), a11 = f32x4.splat(0);
  let a20 = f32x4.splat(0), a21 = f32x4.splat(0), a30 = f32x4.splat(0), a31 = f32x4.splat(0);
  const bk = blockOf<W>(K);
  for (let k0 = 0; k0 < K; k0 += bk) {
    const s0 = scaleOf<W>(scales, K, n, k0);
    const s1 = scaleOf<W>(scales, K, n + 1, k0);
    const pEnd = px + (<usize>(bk >> 2) << 6);
    while (px < pEnd) {
      let v0 = ldw<W>(pw);
      let v1 = ldw<W>(pw + rb);
      if (sizeof<W>() == 1) {
        v0 = f32x4.mul(v0, s0);
        v1 = f32x4.mul(v1, s1);
      }
      const x0 = v128.load(px);
      const x1 = v128.load(px, 16);
      const x2 = v128.load(px, 32);
      const x3 = v128.load(px, 48);
      a00 = madd(x0, v0, a00);
      a01 = madd(x0, v1, a01);
      a10 = madd(x1, v0, a10);
      a11 = madd(x1, v1, a11);
      a20 = madd(x2, v0, a20);
      a21 = madd(x2, v1, a21);
      a30 = madd(x3, v0, a30);
      a31 = madd(x3, v1, a31);
      px += 64;
      pw += eb << 2;
    }
  }
  const ys = <usize>N << 2;
  const yp = y + (<usize>n << 2);
  put(yp, hsum(a00), acc);
  put(yp + 4, hsum(a01), acc);
  put(yp + ys, hsum(a10), acc);
  put(yp + ys + 4, hsum(a11), acc);
  put(yp + 2 * ys, hsum(a20), acc);
  put(yp + 2 * ys + 4, hsum(a21), acc);
  put(yp + 3 * ys, hsum(a30), acc);
  put(yp + 3 * ys + 4, hsum(a31), acc);
}

// @ts-ignore: decorator
@inline
function tile4x1<W>(x: usize, K: i32, w: usize, scales: usize, n: i32, y: usize, N: i32, acc: bool): void {
  const eb = <usize>sizeof<W>();
  const xs = <usize>K << 2;
  const w0 = w + <usize>n * <usize>K * eb;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  const bk = blockOf<W>(K);
  for (let k0 = 0; k0 < K; k0 += bk) {
    const s0 = scaleOf<W>(scales, K, n, k0);
    const kEnd = k0 + bk;
    for (let k = k0; k < kEnd; k += 4) {
      let v0 = ldw<W>(w0 + <usize>k * eb);
      if (sizeof<W>() == 1) v0 = f32x4.mul(v0, s0);
      const xp = x + (<usize>k << 2);
      a0 = madd(v128.load(xp), v0, a0);
      a1 = madd(v128.load(xp + xs), v0, a1);
      a2 = madd(v128.load(xp + 2 * xs), v0, a2);
      a3 = madd(v128.load(xp + 3 * xs), v0, a3);
    }
  }
  const ys = <usize>N << 2;
  const yp = y + (<usize>n << 2);
  put(yp, hsum(a0), acc);
  put(yp + ys, hsum(a1), acc);
  put(yp + 2 * ys, hsum(a2), acc);
  put(yp + 3 * ys, hsum(a3), acc);
}

// @ts-ignore: decorator
@inline
function tile1x4<W>(x: usize, K: i32, w: usize, scales: usize, n: i32, y: usize, acc: bool): void {
  const eb = <usize>sizeof<W>();
  const rs = <usize>K * eb;
  const w0 = w + <usize>n * rs;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  const bk = blockOf<W>(K);
  for (let k0 = 0; k0 < K; k0 += bk) {
    const s0 = scaleOf<W>(scales, K, n, k0);
    const s1 = scaleOf<W>(scales, K, n + 1, k0);
    const s2 = scaleOf<W>(scales, K, n + 2, k0);
    const s3 = scaleOf<W>(scales, K, n + 3, k0);
    const kEnd = k0 + bk;
    for (let k = k0; k < kEnd; k += 4) {
      const wp = w0 + <usize>k * eb;
      let v0 = ldw<W>(wp);
      let v1 = ldw<W>(wp + rs);
      let v2 = ldw<W>(wp + 2 * rs);
      let v3 = ldw<W>(wp + 3 * rs);
      if (sizeof<W>() == 1) {
        v0 = f32x4.mul(v0, s0);
        v1 = f32x4.mul(v1, s1);
        v2 = f32x4.mul(v2, s2);
        v3 = f32x4.mul(v3, s3);
      }
      const xv = v128.load(x + (<usize>k << 2));
      a0 = madd(xv, v0, a0);
      a1 = madd(xv, v1, a1);
      a2 = madd(xv, v2, a2);
      a3 = madd(xv, v3, a3);
    }
  }
  const yp = y + (<usize>n << 2);
  put(yp, hsum(a0), acc);
  put(yp + 4, hsum(a1), acc);
  put(yp + 8, hsum(a2), acc);
  put(yp + 12, hsum(a3), acc);
}

// @ts-ignore: decorator
@inline
function tile1x1<W>(x: usize, K: i32, w: usize, scales: usize, n: i32, y: usize, acc: bool): void {
  const eb = <usize>sizeof<W>();
  const w0 = w + <usize>n * <usize>K * eb;
  let a0 = f32x4.splat(0);
  const bk = blockOf<W>(K);
  for (let k0 = 0; k0 < K; k0 += bk) {
    const s0 = scaleOf<W>(scales, K, n, k0);
    const kEnd = k0 + bk;
    for (let k = k0; k < kEnd; k += 4) {
      let v0 = ldw<W>(w0 + <usize>k * eb);
      if (sizeof<W>() == 1) v0 = f32x4.mul(v0, s0);
      a0 = madd(v128.load(x + (<usize>k << 2)), v0, a0);
    }
  }
  put(y + (<usize>n << 2), hsum(a0), acc);
}

// Decode (one token): bf16 rows, eight weights per 16-byte load: the even-indexed weights widen to
// f32 by a shift (w << 16), the odd ones by a mask (w & 0xffff0000), so one load and two ALU ops
// feed two multiply-adds; x is permuted to match once per row block (XEO: per 8, x0 x2 x4 x6 |
// x1 x3 x5 x7). With rows read one after another (row1eo), lm_head of issue 14's model (128256 x
// 768) went from 9.1 to 13.0 GB/s of bf16 weights on one core, and f32 (row1f32) from 13.6 to 15.7.
const XEO: usize = memory.data(4 * PACK_MAX_K, 64);

function permuteEvenOdd(x: usize, K: i32): void {
  for (let k = 0; k < K; k += 8) {
    const o = <usize>k << 2;
    const a = v128.load(x + o);
    const b = v128.load(x + o, 16);
    v128.store(XEO + o, v128.shuffle<f32>(a, b, 0, 2, 4, 6));
    v128.store(XEO + o, v128.shuffle<f32>(a, b, 1, 3, 5, 7), 16);
  }
}

/**
 * y[n] (one token) from one row read front to back: the whole matrix becomes one sequential
 * stream, which the hardware prefetcher follows (four interleaved row streams restart it every
 * 4 rows). Four accumulators over k keep the multiply-adds independent.
 */
// @ts-ignore: decorator
@inline
function row1f32(x: usize, K: i32, w: usize, n: i32, y: usize, acc: bool): void {
  const wp = w + ((<usize>n * <usize>K) << 2);
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  for (let o: usize = 0; o < (<usize>K << 2); o += 64) {
    a0 = madd(v128.load(x + o), v128.load(wp + o), a0);
    a1 = madd(v128.load(x + o, 16), v128.load(wp + o, 16), a1);
    a2 = madd(v128.load(x + o, 32), v128.load(wp + o, 32), a2);
    a3 = madd(v128.load(x + o, 48), v128.load(wp + o, 48), a3);
  }
  put(y + (<usize>n << 2), hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3))), acc);
}

/** row1f32 for bf16 rows through XEO (32 weights, one cache line's 64 bytes, per step). */
// @ts-ignore: decorator
@inline
function row1eo(K: i32, w: usize, n: i32, y: usize, acc: bool): void {
  const wp = w + ((<usize>n * <usize>K) << 1);
  const hi = i32x4.splat(0xffff0000);
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  for (let k: usize = 0; k < <usize>K; k += 16) {
    const v0 = v128.load(wp + (k << 1));
    const v1 = v128.load(wp + (k << 1), 16);
    const xp = XEO + (k << 2);
    a0 = madd(v128.load(xp), i32x4.shl(v0, 16), a0);
    a1 = madd(v128.load(xp, 16), v128.and(v0, hi), a1);
    a2 = madd(v128.load(xp, 32), i32x4.shl(v1, 16), a2);
    a3 = madd(v128.load(xp, 48), v128.and(v1, hi), a3);
  }
  put(y + (<usize>n << 2), hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3))), acc);
}

/**
 * row1f32 for int8 rows: 32 weights (one scale block) per step, widened 16 at a time (one load,
 * i8 -> i16 -> i32 -> f32), the block's sum scaled once (s * sum q x, not sum (q s) x: one multiply
 * per 32 weights instead of per weight). Decode with int8 weights was slower than with f32 (51 vs
 * 45 ms a step on issue 14's model): widening 4 weights per load cost more than the bytes it saved.
 */
// @ts-ignore: decorator
@inline
function row1i8(x: usize, K: i32, w: usize, scales: usize, n: i32, y: usize, acc: bool): void {
  const wp = w + <usize>n * <usize>K;
  const sp = scales + ((<usize>n * <usize>(K / I8_BLOCK)) << 2);
  let total = f32x4.splat(0);
  for (let b: usize = 0; b < <usize>(K / I8_BLOCK); b++) {
    const q0 = v128.load(wp + (b << 5));
    const q1 = v128.load(wp + (b << 5), 16);
    const xp = x + (b << 7);
    const l0 = i16x8.extend_low_i8x16_s(q0);
    const h0 = i16x8.extend_high_i8x16_s(q0);
    const l1 = i16x8.extend_low_i8x16_s(q1);
    const h1 = i16x8.extend_high_i8x16_s(q1);
    let a0 = f32x4.mul(v128.load(xp), f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(l0)));
    let a1 = f32x4.mul(v128.load(xp, 16), f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(l0)));
    a0 = madd(v128.load(xp, 32), f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(h0)), a0);
    a1 = madd(v128.load(xp, 48), f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(h0)), a1);
    a0 = madd(v128.load(xp, 64), f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(l1)), a0);
    a1 = madd(v128.load(xp, 80), f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(l1)), a1);
    a0 = madd(v128.load(xp, 96), f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(h1)), a0);
    a1 = madd(v128.load(xp, 112), f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(h1)), a1);
    total = madd(f32x4.add(a0, a1), v128.load32_splat(sp + (b << 2)), total);
  }
  put(y + (<usize>n << 2), hsum(total), acc);
}

// Prefill with int8 weights: each L2 block of rows is dequantized once (q * scale, the same f32
// values the int8 tiles form) into DQ, and the f32 tiles run on it, so the widening is paid once
// per weight instead of once per 4-token tile (int8 prefill was 2.3x f32's time on issue 14's
// model). DQ holds one row block: at most L2_BLOCK_BYTES int8 weights as f32.
const DQ: usize = memory.data(4 * L2_BLOCK_BYTES, 64);

function dequantRows(w: usize, scales: usize, n0: i32, n1: i32, K: i32): void {
  let o = DQ;
  const blocks = <usize>(K / I8_BLOCK);
  for (let n = n0; n < n1; n++) {
    const wp = w + <usize>n * <usize>K;
    const sp = scales + ((<usize>n * blocks) << 2);
    for (let b: usize = 0; b < blocks; b++) {
      const sc = v128.load32_splat(sp + (b << 2));
      for (let h: usize = 0; h < 2; h++) {
        const q = v128.load(wp + (b << 5) + (h << 4));
        const l = i16x8.extend_low_i8x16_s(q);
        const u = i16x8.extend_high_i8x16_s(q);
        v128.store(o, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(l)), sc));
        v128.store(o, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(l)), sc), 16);
        v128.store(o, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(u)), sc), 32);
        v128.store(o, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(u)), sc), 48);
        o += 64;
      }
    }
  }
}

function gemm<W>(x: usize, T: i32, K: i32, w: usize, scales: usize, N: i32, y: usize, acc: bool): void {
  const rowBytes = K * sizeof<W>();
  let nb = (L2_BLOCK_BYTES / rowBytes) & ~3;
  if (nb < 4) nb = 4;
  const xs = <usize>K << 2;
  const ys = <usize>N << 2;
  const tiles = T >> 2;
  const small = sizeof<W>() != 1 && tiles >= 2 && T <= SMALL_T_MAX && tiles * (K << 4) <= PACKS_BYTES;
  if (small) packTiles(x, tiles, K);
  for (let n0 = 0; n0 < N; n0 += nb) {
    const n1 = min(N, n0 + nb);
    let t = 0;
    // (int8 K is a multiple of 32, so row1f32's K % 16 holds.)
    if (sizeof<W>() == 1 && T >= 4 && K <= PACK_MAX_K) {
      dequantRows(w, scales, n0, n1, K);
      // Rows n of the block at DQ + (n - n0) K floats; the tiles index from the matrix's row 0
      // (wasm32 addresses wrap, so the base below is exact modulo 2^32).
      const dq = DQ - ((<usize>n0 * <usize>K) << 2);
      for (; t + 4 <= T; t += 4) {
        const xt = x + <usize>t * xs;
        const yt = y + <usize>t * ys;
        let n = n0;
        packX4(xt, K);
        for (; n + 2 <= n1; n += 2) tile4x2p<f32>(PACK, K, dq, 0, n, yt, N, acc);
        if (n < n1) tile4x1<f32>(xt, K, dq, 0, n, yt, N, acc);
      }
      for (; t < T; t++) {
        const xt = x + <usize>t * xs;
        const yt = y + <usize>t * ys;
        for (let n = n0; n < n1; n++) row1f32(xt, K, dq, n, yt, acc);
      }
      continue;
    }
    if (small) {
      // Every tile packed already; W rows n, n + 1 serve all of them in turn.
      let n = n0;
      for (; n + 2 <= n1; n += 2) {
        for (let g = 0; g < tiles; g++) {
          tile4x2p<W>(DQ + <usize>g * (<usize>K << 4), K, w, scales, n, y + <usize>(4 * g) * ys, N, acc);
        }
      }
      for (; t + 4 <= T; t += 4) {
        if (n < n1) tile4x1<W>(x + <usize>t * xs, K, w, scales, n, y + <usize>t * ys, N, acc);
      }
    }
    for (; t + 4 <= T; t += 4) {
      const xt = x + <usize>t * xs;
      const yt = y + <usize>t * ys;
      let n = n0;
      if (K <= PACK_MAX_K) {
        packX4(xt, K);
        for (; n + 2 <= n1; n += 2) tile4x2p<W>(PACK, K, w, scales, n, yt, N, acc);
      } else {
        for (; n + 2 <= n1; n += 2) tile4x2<W>(xt, K, w, scales, n, yt, N, acc);
      }
      if (n < n1) tile4x1<W>(xt, K, w, scales, n, yt, N, acc);
    }
    for (; t < T; t++) {
      const xt = x + <usize>t * xs;
      const yt = y + <usize>t * ys;
      let n = n0;
      if (sizeof<W>() == 2 && K % 16 == 0 && K <= PACK_MAX_K) {
        permuteEvenOdd(xt, K);
        for (; n < n1; n++) row1eo(K, w, n, yt, acc);
      } else if (sizeof<W>() == 4 && K % 16 == 0) {
        for (; n < n1; n++) row1f32(xt, K, w, n, yt, acc);
      } else if (sizeof<W>() == 1) {
        for (; n < n1; n++) row1i8(xt, K, w, scales, n, yt, acc);
      } else {
        for (; n + 4 <= n1; n += 4) tile1x4<W>(xt, K, w, scales, n, yt, acc);
      }
      for (; n < n1; n++) tile1x1<W>(xt, K, w, scales, n, yt, acc);
    }
  }
}

/** Scalar reference: the same product, one multiply-add at a time, in k order. */
function gemmRef<W>(x: usize, T: i32, K: i32, w: usize, scales: usize, N: i32, y: usize, acc: bool): void {
  const eb = <usize>sizeof<W>();
  for (let t = 0; t < T; t++) {
    for (let n = 0; n < N; n++) {
      let s: f32 = 0;
      for (let k = 0; k < K; k++) {
        let wv = ldw1<W>(w + (<usize>n * <usize>K + <usize>k) * eb);
        if (sizeof<W>() == 1) {
          wv *= load<f32>(scales + ((<usize>n * <usize>(K / I8_BLOCK) + <usize>(k / I8_BLOCK)) << 2));
        }
        s += load<f32>(x + ((<usize>t * <usize>K + <usize>k) << 2)) * wv;
      }
      put(y + ((<usize>t * <usize>N + <usize>n) << 2), s, acc);
    }
  }
}

export function matmul_f32(x: usize, T: i32, K: i32, w: usize, N: i32, y: usize, acc: bool): void {
  gemm<f32>(x, T, K, w, 0, N, y, acc);
}
export function matmul_bf16(x: usize, T: i32, K: i32, w: usize, N: i32, y: usize, acc: bool): void {
  gemm<u16>(x, T, K, w, 0, N, y, acc);
}
export function matmul_i8(x: usize, T: i32, K: i32, w: usize, scales: usize, N: i32, y: usize, acc: bool): void {
  gemm<i8>(x, T, K, w, scales, N, y, acc);
}
export function matmul_f32_ref(x: usize, T: i32, K: i32, w: usize, N: i32, y: usize, acc: bool): void {
  gemmRef<f32>(x, T, K, w, 0, N, y, acc);
}
export function matmul_bf16_ref(x: usize, T: i32, K: i32, w: usize, N: i32, y: usize, acc: bool): void {
  gemmRef<u16>(x, T, K, w, 0, N, y, acc);
}
export function matmul_i8_ref(x: usize, T: i32, K: i32, w: usize, scales: usize, N: i32, y: usize, acc: bool): void {
  gemmRef<i8>(x, T, K, w, scales, N, y, acc);
}

/**
 * Quantize f32 rows to int8 with one scale per 32 weights: scale = absmax / 127, q = round(w / scale).
 * Error per weight <= scale / 2 = absmax_block / 254 (a block of zeros gets scale 0 and q 0).
 * w (N, K) f32 -> q (N, K) i8, scales (N, K / 32) f32.
 */
export function quantize_i8(w: usize, N: i32, K: i32, q: usize, scales: usize): void {
  const blocks = K / I8_BLOCK;
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < blocks; b++) {
      const base = <usize>n * <usize>K + <usize>(b * I8_BLOCK);
      let amax: f32 = 0;
      for (let i = 0; i < I8_BLOCK; i++) amax = max(amax, abs(load<f32>(w + ((base + i) << 2))));
      const scale = amax / 127;
      const inv: f32 = scale > 0 ? 1 / scale : 0;
      store<f32>(scales + ((<usize>n * <usize>blocks + <usize>b) << 2), scale);
      for (let i = 0; i < I8_BLOCK; i++) {
        const v = <i32>nearest(load<f32>(w + ((base + i) << 2)) * inv);
        store<i8>(q + base + i, <i8>max(-127, min(127, v)));
      }
    }
  }
}
