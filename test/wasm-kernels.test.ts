// Every WASM kernel against its scalar reference (wasm/assembly), on shapes that hit every tile
// remainder, with a tolerance per op justified next to it. u = 2^-24 is f32's unit roundoff. The
// references are exported by the test module (wasm/build/ultralong-test.wasm) only.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import v8 from "node:v8";
import { beforeAll, describe, expect, it } from "vitest";
import { createRng } from "../core/engine/sampling.ts";
import { f32ToBf16 } from "../core/safetensors/dtype.ts";
import {
  ensureBuilt,
  INITIAL_PAGES,
  RELAXED_TEST_WASM_FILE,
  TEST_WASM_FILE,
} from "../wasm/build.mjs";
import { attentionScratchBytes } from "../wasm/src/shard.mjs";

const root = join(import.meta.dirname, "..");
const u = 2 ** -24;

interface Kernels {
  memory: WebAssembly.Memory;
  heap_base(): number;
  [name: string]: unknown;
}
type Fn = (...args: number[]) => number;

let k: Kernels;
let top = 0;

function fn(name: string): Fn {
  return k[name] as Fn;
}

/** A fresh region of `bytes` (64-byte aligned). */
function alloc(bytes: number): number {
  const p = top;
  top += Math.ceil(bytes / 64) * 64;
  const need = top - k.memory.buffer.byteLength;
  if (need > 0) k.memory.grow(Math.ceil(need / 65536));
  return p;
}
const f32 = (p: number, n: number) => new Float32Array(k.memory.buffer, p, n);
const u16 = (p: number, n: number) => new Uint16Array(k.memory.buffer, p, n);
const i8 = (p: number, n: number) => new Int8Array(k.memory.buffer, p, n);

/** Uniform in [-0.5, 0.5), seeded (core's sampling RNG). */
function rng(seed: number): () => number {
  const r = createRng(seed);
  return () => r() - 0.5;
}

function fill(p: number, n: number, r: () => number, scale = 1): Float32Array {
  const a = f32(p, n);
  for (let i = 0; i < n; i++) a[i] = r() * 2 * scale;
  return a;
}

// Both builds of the same sources (wasm/build.mjs): plain SIMD128, and relaxed SIMD (madd fused),
// which Node 20's V8 validates once its flag is on, as wasm/src/module.ts turns it on to load it.
v8.setFlagsFromString("--experimental-wasm-relaxed-simd");
const BUILDS = [
  { name: "plain SIMD128", file: TEST_WASM_FILE, relaxed: 0 },
  { name: "relaxed SIMD", file: RELAXED_TEST_WASM_FILE, relaxed: 1 },
];

for (const build of BUILDS) {
  describe(`${build.name} build (${build.file})`, () => {
    beforeAll(async () => {
      await ensureBuilt({ root });
      const module = new WebAssembly.Module(readFileSync(join(root, build.file)));
      const memory = new WebAssembly.Memory({ initial: INITIAL_PAGES, maximum: 65536 });
      const exports = new WebAssembly.Instance(module, { env: { memory } }).exports;
      k = { ...(exports as object), memory } as Kernels;
      top = Math.ceil(k.heap_base() / 64) * 64;
    }, 120_000);

    it("says which build it is (relaxed_simd)", () => {
      expect(fn("relaxed_simd")()).toBe(build.relaxed);
    });

    describe("matmul: SIMD blocked GEMM == scalar reference, for f32, bf16 and int8 weights", () => {
      // Both sides multiply the same f32 products (int8 dequantized the same way, q * scale) and only
      // sum them in a different order. Each sum is within gamma_K * sum|x w| of the exact one
      // (gamma_K = K u / (1 - K u), Higham 3.1), so they differ by at most 2 gamma_K sum|x w|.
      const shapes: [number, number, number][] = [
        [1, 32, 1],
        [1, 96, 7],
        [3, 64, 5],
        [4, 128, 2],
        [7, 256, 131],
        [130, 96, 64],
        [9, 2048, 40], // 8 KiB rows: several L2 row blocks
        [5, 16416, 3], // K past the packing buffer (16384): the unpacked 4x2 tile
        [1, 2048, 300], // decode over several L2 row blocks (rows read one after another)
        [1, 40, 9], // decode with K not a multiple of 16: the 1 x 4 tile (f32, bf16 only)
        [2, 72, 5],
        [16, 512, 67], // a small batch: every tile packed once, W rows shared by all (odd N)
        [18, 512, 131], // the same over three L2 row blocks, with two tokens past the tiles
      ];
      for (const format of ["f32", "bf16", "int8"] as const) {
        for (const [T, K, N] of shapes) {
          if (format === "int8" && K % 32 !== 0) continue; // int8 blocks are 32 wide
          it(`${format} T=${T} K=${K} N=${N}`, () => {
            top = Math.ceil(k.heap_base() / 64) * 64;
            const r = rng(T * 1000 + K * 10 + N);
            const x = alloc(T * K * 4);
            const xs = fill(x, T * K, r);
            const wf = alloc(N * K * 4);
            const wv = fill(wf, N * K, r, 0.1);
            let w = wf;
            let scales = 0;
            const wAt = new Float64Array(N * K); // the weight values both sides use
            if (format === "bf16") {
              w = alloc(N * K * 2);
              const b = u16(w, N * K);
              for (let i = 0; i < N * K; i++) {
                b[i] = f32ToBf16(wv[i]);
                wAt[i] = new Float32Array(new Uint32Array([b[i] << 16]).buffer)[0];
              }
            } else if (format === "int8") {
              w = alloc(N * K);
              scales = alloc((N * K) / 8);
              fn("quantize_i8")(wf, N, K, w, scales);
              const q = i8(w, N * K);
              const s = f32(scales, (N * K) / 32);
              for (let i = 0; i < N * K; i++) wAt[i] = Math.fround(q[i] * s[Math.floor(i / 32)]);
            } else {
              for (let i = 0; i < N * K; i++) wAt[i] = wv[i];
            }
            const y = alloc(T * N * 4);
            const yr = alloc(T * N * 4);
            for (const acc of [0, 1]) {
              fill(y, T * N, rng(7));
              fill(yr, T * N, rng(7));
              const yBefore = Float64Array.from(f32(y, T * N));
              if (format === "f32") {
                fn("matmul_f32")(x, T, K, w, N, y, acc);
                fn("matmul_f32_ref")(x, T, K, w, N, yr, acc);
              } else if (format === "bf16") {
                fn("matmul_bf16")(x, T, K, w, N, y, acc);
                fn("matmul_bf16_ref")(x, T, K, w, N, yr, acc);
              } else {
                fn("matmul_i8")(x, T, K, w, scales, N, y, acc);
                fn("matmul_i8_ref")(x, T, K, w, scales, N, yr, acc);
              }
              const gamma = (K * u) / (1 - K * u);
              const a = f32(y, T * N);
              const b = f32(yr, T * N);
              for (let t = 0; t < T; t++) {
                for (let n = 0; n < N; n++) {
                  let abs = 0;
                  let exact = acc ? yBefore[t * N + n] : 0;
                  for (let kk = 0; kk < K; kk++) {
                    abs += Math.abs(xs[t * K + kk] * wAt[n * K + kk]);
                    exact += xs[t * K + kk] * wAt[n * K + kk];
                  }
                  const tol = 2 * gamma * abs + 2 * u * Math.abs(exact);
                  const i = t * N + n;
                  if (Math.abs(a[i] - b[i]) > tol || Math.abs(a[i] - exact) > tol) {
                    throw new Error(
                      `y[${t},${n}] simd ${a[i]} ref ${b[i]} exact ${exact} tol ${tol}`,
                    );
                  }
                }
              }
            }
          });
        }
      }

      it("a small batch's product is bit for bit its 4-row tiles' products (f32, bf16)", () => {
        // T 8..64 runs n outer over tiles packed once; T 4 the blocked order: the same tile4x2p
        // sums in the same k order, so the bits must agree.
        for (const format of ["f32", "bf16"] as const) {
          top = Math.ceil(k.heap_base() / 64) * 64;
          const [T, K, N] = [16, 512, 131];
          const r = rng(99);
          const x = alloc(T * K * 4);
          fill(x, T * K, r);
          const wf = alloc(N * K * 4);
          const wv = fill(wf, N * K, r, 0.1);
          let w = wf;
          if (format === "bf16") {
            w = alloc(N * K * 2);
            const b = u16(w, N * K);
            for (let i = 0; i < N * K; i++) b[i] = f32ToBf16(wv[i]);
          }
          const mm = fn(format === "f32" ? "matmul_f32" : "matmul_bf16");
          const y = alloc(T * N * 4);
          const y4 = alloc(T * N * 4);
          mm(x, T, K, w, N, y, 0);
          for (let t = 0; t < T; t += 4) mm(x + t * K * 4, 4, K, w, N, y4 + t * N * 4, 0);
          expect(Array.from(f32(y, T * N))).toEqual(Array.from(f32(y4, T * N)));
        }
      });

      it("int8 quantization error is at most half a step (absmax of the block / 254)", () => {
        top = Math.ceil(k.heap_base() / 64) * 64;
        const N = 16;
        const K = 256;
        const w = alloc(N * K * 4);
        const wv = Float64Array.from(fill(w, N * K, rng(3)));
        wv[5] = 0; // an all-different block still quantizes; a zero block (below) gets scale 0
        f32(w, N * K).fill(0, 32, 64);
        const q = alloc(N * K);
        const s = alloc((N * K) / 8);
        fn("quantize_i8")(w, N, K, q, s);
        const qs = i8(q, N * K);
        const ss = f32(s, (N * K) / 32);
        const src = f32(w, N * K);
        for (let i = 0; i < N * K; i++) {
          const b = Math.floor(i / 32);
          let amax = 0;
          for (let j = b * 32; j < b * 32 + 32; j++) amax = Math.max(amax, Math.abs(src[j]));
          expect(Math.abs(src[i] - qs[i] * ss[b])).toBeLessThanOrEqual(amax / 254 + amax * 4 * u);
        }
        expect(ss[1]).toBe(0);
      });
    });

    describe("rmsnorm: SIMD == scalar", () => {
      // Sums of squares in different orders differ by <= 2 gamma_H relative (all terms positive);
      // the 1/sqrt halves that and the two multiplies add 2u each side: tolerance (H + 8) u |y|.
      for (const [T, H] of [
        [1, 64],
        [5, 4096],
        [3, 100],
      ]) {
        it(`T=${T} H=${H}`, () => {
          top = Math.ceil(k.heap_base() / 64) * 64;
          const r = rng(H);
          const x = alloc(T * H * 4);
          fill(x, T * H, r, 3);
          const w = alloc(H * 4);
          fill(w, H, r);
          const y = alloc(T * H * 4);
          const yr = alloc(T * H * 4);
          fn("rmsnorm")(x, w, y, T, H, 1e-5);
          fn("rmsnorm_ref")(x, w, yr, T, H, 1e-5);
          const a = f32(y, T * H);
          const b = f32(yr, T * H);
          for (let i = 0; i < T * H; i++) {
            expect(Math.abs(a[i] - b[i])).toBeLessThanOrEqual((H + 8) * u * Math.abs(b[i]) + 1e-30);
          }
        });
      }
    });

    describe("rope: SIMD == scalar, table == float64 angles", () => {
      it("rotate_half on q-like rows with a stride, at per-row positions (large and small), with yarn scaling", () => {
        top = Math.ceil(k.heap_base() / 64) * 64;
        const hd = 128;
        const half = hd / 2;
        const T = 5;
        const heads = 3;
        const stride = heads * hd + 64; // rows of a fused qkv buffer
        const p0 = 3_999_990;
        const scaling = 1.4852030263919618;
        const inv = alloc(half * 8);
        const invFreq = new Float64Array(k.memory.buffer, inv, half);
        for (let i = 0; i < half; i++)
          invFreq[i] = 1 / 500000 ** ((2 * i) / hd) / (i > 40 ? 128 : 1);
        const cos = alloc(T * half * 4);
        const sin = alloc(T * half * 4);
        // A batch's rows: two sequences' positions interleaved, not one run.
        const posAt = (t: number) => (t % 2 === 0 ? p0 + t : 7 + t);
        const positions = alloc(T * 4);
        new Int32Array(k.memory.buffer, positions, T).set(
          Array.from({ length: T }, (_, t) => posAt(t)),
        );
        fn("rope_table")(inv, half, positions, T, scaling, cos, sin);
        // The table is cos/sin of the float64 angle rounded once to f32 (times the scaling).
        const c = f32(cos, T * half);
        const s = f32(sin, T * half);
        for (let t = 0; t < T; t++) {
          for (let i = 0; i < half; i++) {
            const a = posAt(t) * invFreq[i];
            expect(c[t * half + i]).toBe(
              Math.fround(Math.fround(Math.cos(a)) * Math.fround(scaling)),
            );
            expect(s[t * half + i]).toBe(
              Math.fround(Math.fround(Math.sin(a)) * Math.fround(scaling)),
            );
          }
        }
        const x = alloc(T * stride * 4);
        fill(x, T * stride, rng(9));
        const xr = alloc(T * stride * 4);
        f32(xr, T * stride).set(f32(x, T * stride));
        fn("rope_apply")(x, stride, T, heads, hd, cos, sin);
        fn("rope_apply_ref")(xr, stride, T, heads, hd, cos, sin);
        // Same IEEE operations in the same order (wasm never contracts to fma): bit-identical.
        expect(f32(x, T * stride)).toEqual(f32(xr, T * stride));
      });
    });

    describe("attention over a block table: tiled online softmax == two-pass scalar softmax", () => {
      // Differences come from exp (vector exp <= 2e-7 relative vs libm), the online rescaling (one
      // extra multiply per tile) and summation order over ctx keys and hd channels. The output is a
      // convex combination of V rows, so |diff| <= (4 (ctx + hd) u (1 + max|score|) + 1e-6) max|v|.
      const cases = [
        { nh: 4, nkv: 4, hd: 64, p0: 0, T: 37, bf16: false },
        { nh: 8, nkv: 2, hd: 128, p0: 70, T: 20, bf16: false },
        { nh: 8, nkv: 1, hd: 64, p0: 130, T: 1, bf16: true },
        { nh: 4, nkv: 1, hd: 64, p0: 5, T: 150, bf16: true },
        // issue 14's shape: 3 query heads per KV head, odd row counts, tiles cut mid-block
        { nh: 12, nkv: 4, hd: 64, p0: 300, T: 70, bf16: false },
        { nh: 12, nkv: 4, hd: 64, p0: 0, T: 1, bf16: false },
        { nh: 6, nkv: 2, hd: 128, p0: 61, T: 7, bf16: true },
        { nh: 12, nkv: 4, hd: 64, p0: 1000, T: 1, bf16: false },
        // blocks of two key tiles: a tile starts mid-block
        { nh: 8, nkv: 2, hd: 64, p0: 200, T: 50, bf16: false, bs: 128 },
        { nh: 4, nkv: 1, hd: 64, p0: 300, T: 3, bf16: true, bs: 128 },
        // head_dim 40 and 24 (16-channel P V passes, then 8), 5 and 1 query heads a KV head
        { nh: 10, nkv: 2, hd: 40, p0: 90, T: 19, bf16: false },
        { nh: 3, nkv: 3, hd: 24, p0: 140, T: 5, bf16: true },
      ];
      it("the planner's scratch size (shard.mjs) is the kernel's attention_scratch_bytes", () => {
        for (const c of cases) {
          expect(attentionScratchBytes(c.nh, c.nkv, c.hd)).toBe(
            fn("attention_scratch_bytes")(c.nh, c.nkv, c.hd),
          );
        }
      });
      for (const c of cases) {
        it(`heads ${c.nh}/${c.nkv} hd ${c.hd} positions ${c.p0}+${c.T} ${c.bf16 ? "bf16" : "f32"} cache, blocks of ${c.bs ?? 64}`, () => {
          top = Math.ceil(k.heap_base() / 64) * 64;
          const r = rng(c.nh * 31 + c.T);
          const ctx = c.p0 + c.T;
          const bs = c.bs ?? 64;
          const eb = c.bf16 ? 2 : 4;
          // The sequence's blocks are a shuffled subset of a larger pool, as a paged cache's are.
          const poolBlocks = Math.ceil(ctx / bs) + 3;
          const ids = Array.from({ length: poolBlocks }, (_, i) => i);
          for (let i = ids.length - 1; i > 0; i--) {
            const j = Math.floor((r() + 0.5) * (i + 1));
            [ids[i], ids[j]] = [ids[j], ids[i]];
          }
          const table = alloc(poolBlocks * 4);
          new Int32Array(k.memory.buffer, table, poolBlocks).set(ids);
          const blockStride = c.nkv * bs * c.hd * eb;
          const kc = alloc(poolBlocks * blockStride);
          const vc = alloc(poolBlocks * blockStride);
          let vmax = 0;
          for (const [p, scale] of [
            [kc, 2],
            [vc, 1],
          ] as const) {
            const vals = new Float32Array((poolBlocks * blockStride) / eb).map(
              () => r() * 2 * scale,
            );
            if (c.bf16) {
              const b = u16(p, vals.length);
              for (let i = 0; i < vals.length; i++) b[i] = f32ToBf16(vals[i]);
            } else f32(p, vals.length).set(vals);
            if (p === vc) vmax = vals.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
          }
          const qStride = c.nh * c.hd + 32;
          const q = alloc(c.T * qStride * 4);
          fill(q, c.T * qStride, r, 2);
          const out = alloc(c.T * c.nh * c.hd * 4);
          const outR = alloc(c.T * c.nh * c.hd * 4);
          const scratch = alloc(fn("attention_scratch_bytes")(c.nh, c.nkv, c.hd));
          const scratchR = alloc(ctx * 4);
          const scale = 1 / Math.sqrt(c.hd);
          const args = [c.T, c.p0, c.nh, c.nkv, c.hd, kc, vc, table, bs, blockStride];
          args.push(c.bf16 ? 1 : 0, scale);
          fn("attention")(q, qStride, out, c.nh * c.hd, ...args, scratch);
          fn("attention_ref")(q, qStride, outR, c.nh * c.hd, ...args, scratchR);
          const maxScore = 4 * 2 * c.hd * scale; // |q| <= 2, |k| <= 2 per channel
          const tol = (4 * (ctx + c.hd) * u * (1 + maxScore) + 1e-6) * vmax;
          const a = f32(out, c.T * c.nh * c.hd);
          const b = f32(outR, c.T * c.nh * c.hd);
          let worst = 0;
          for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
          expect(worst).toBeLessThanOrEqual(tol);
          expect(Number.isFinite(worst)).toBe(true);
        });
      }
    });

    describe("swiglu, residual add, vector exp", () => {
      it("swiglu SIMD == scalar within 1e-6 relative (vector exp <= 2e-7, plus 3 roundings)", () => {
        top = Math.ceil(k.heap_base() / 64) * 64;
        const T = 3;
        const F = 200;
        const gu = alloc(T * 2 * F * 4);
        fill(gu, T * 2 * F, rng(4), 20);
        const o = alloc(T * F * 4);
        const or = alloc(T * F * 4);
        fn("swiglu")(gu, T, F, o);
        fn("swiglu_ref")(gu, T, F, or);
        const a = f32(o, T * F);
        const b = f32(or, T * F);
        for (let i = 0; i < T * F; i++) {
          expect(Math.abs(a[i] - b[i])).toBeLessThanOrEqual(1e-6 * Math.abs(b[i]) + 1e-30);
        }
      });

      it("add_into SIMD == scalar exactly (one rounding each)", () => {
        top = Math.ceil(k.heap_base() / 64) * 64;
        const n = 260;
        const d = alloc(n * 4);
        const dr = alloc(n * 4);
        const s = alloc(n * 4);
        fill(d, n, rng(5));
        f32(dr, n).set(f32(d, n));
        fill(s, n, rng(6));
        fn("add_into")(d, s, n);
        fn("add_into_ref")(dr, s, n);
        expect(f32(d, n)).toEqual(f32(dr, n));
      });

      it("vector exp within 2.5e-7 relative of float64 exp over [-87, 88]", () => {
        top = Math.ceil(k.heap_base() / 64) * 64;
        const n = 4096;
        const x = alloc(n * 4);
        const y = alloc(n * 4);
        const xs = f32(x, n);
        for (let i = 0; i < n; i++) xs[i] = -87 + (175 * i) / n;
        fn("exp_f32")(x, y, n);
        const ys = f32(y, n);
        for (let i = 0; i < n; i++) {
          const e = Math.exp(xs[i]);
          expect(Math.abs(ys[i] - e) / e).toBeLessThanOrEqual(2.5e-7);
        }
      });
    });

    describe("attention's base-2 exp", () => {
      it("2^x within 2.5e-7 relative of float64 over [-126, 0], and 2^-126 below", () => {
        top = Math.ceil(k.heap_base() / 64) * 64;
        const n = 8192;
        const x = alloc(n * 4);
        const y = alloc(n * 4);
        const xs = f32(x, n);
        for (let i = 0; i < n - 4; i++) xs[i] = -126 + (126 * i) / (n - 5);
        xs.set([0, -0.5, -1e9, Number.NEGATIVE_INFINITY], n - 4);
        fn("exp2neg_f32")(x, y, n);
        const ys = f32(y, n);
        for (let i = 0; i < n - 2; i++) {
          const e = 2 ** xs[i];
          expect(Math.abs(ys[i] - e) / e).toBeLessThanOrEqual(2.5e-7);
        }
        expect(ys[n - 4]).toBe(1);
        expect(ys[n - 2]).toBe(2 ** -126); // far below, and -inf (a masked score): ~1e-38, not NaN
        expect(ys[n - 1]).toBe(2 ** -126);
      });
    });

    describe("kv_store", () => {
      it("writes each row at its slot's row of block slot / bs (V rows (kv_head, bs, hd), K panels (kv_head, bs / 16, hd, 16)), bf16 rounded to nearest even exactly as core's f32ToBf16", () => {
        top = Math.ceil(k.heap_base() / 64) * 64;
        const T = 3;
        const nkv = 2;
        const hd = 16;
        const stride = 80;
        const bs = 32;
        const blocks = 3;
        const slotsAt = [37, 0, 81]; // block 1 row 5, block 0 row 0, block 2 row 17 (its 2nd panel)
        const src = alloc(T * stride * 4);
        const sv = fill(src, T * stride, rng(8), 1000);
        const slots = alloc(T * 4);
        new Int32Array(k.memory.buffer, slots, T).set(slotsAt);
        for (const bf16 of [0, 1]) {
          for (const panels of [0, 1]) {
            const eb = bf16 ? 2 : 4;
            // Blocks one element apart more than their K needs: the stride is the kernel's to use.
            const blockStride = (nkv * bs * hd + 8) * eb;
            const cache = alloc(blocks * blockStride);
            new Uint8Array(k.memory.buffer, cache, blocks * blockStride).fill(0);
            fn("kv_store")(src, stride, T, nkv, hd, cache, slots, bs, blockStride, bf16, panels);
            const n = (blocks * blockStride) / eb;
            let written = 0;
            for (let i = 0; i < n; i++)
              if ((bf16 ? u16(cache, n)[i] : f32(cache, n)[i]) !== 0) written++;
            expect(written).toBe(T * nkv * hd); // nothing else touched (the values are nonzero)
            for (let t = 0; t < T; t++) {
              const block = Math.floor(slotsAt[t] / bs);
              const i = slotsAt[t] % bs;
              for (let h = 0; h < nkv; h++) {
                for (let d = 0; d < hd; d++) {
                  const v = sv[t * stride + h * hd + d];
                  const inHead = panels
                    ? (Math.floor(i / 16) * hd + d) * 16 + (i % 16)
                    : i * hd + d;
                  const at = (block * blockStride) / eb + h * bs * hd + inHead;
                  if (bf16) expect(u16(cache, n)[at]).toBe(f32ToBf16(v));
                  else expect(f32(cache, n)[at]).toBe(v);
                }
              }
            }
          }
        }
      });

      it("kv_panel_rows reads K rows out of their panels and writes them back, f32 and bf16", () => {
        top = Math.ceil(k.heap_base() / 64) * 64;
        const [nkv, hd, bs, rows, row] = [1, 24, 64, 21, 13]; // rows 13 .. 33: three panels
        for (const bf16 of [0, 1]) {
          const eb = bf16 ? 2 : 4;
          const src = alloc(rows * hd * 4);
          const sv = fill(src, rows * hd, rng(11 + bf16));
          const slots = alloc(rows * 4);
          new Int32Array(k.memory.buffer, slots, rows).forEach((_, t, a) => {
            a[t] = row + t;
          });
          const blockStride = nkv * bs * hd * eb;
          const cache = alloc(2 * blockStride);
          new Uint8Array(k.memory.buffer, cache, 2 * blockStride).fill(0);
          fn("kv_store")(src, hd, rows, nkv, hd, cache, slots, bs, blockStride, bf16, 1);
          const out = alloc(rows * hd * eb);
          fn("kv_panel_rows")(cache, row, rows, hd, bf16, out, 0);
          const want = bf16 ? Uint16Array.from(sv, f32ToBf16) : Float32Array.from(sv);
          expect(bf16 ? u16(out, rows * hd) : f32(out, rows * hd)).toEqual(want);
          // Back into the second block's panels: the same bytes as kv_store wrote in the first.
          fn("kv_panel_rows")(cache + blockStride, row, rows, hd, bf16, out, 1);
          const bytes = new Uint8Array(k.memory.buffer, cache, 2 * blockStride);
          expect(bytes.subarray(blockStride)).toEqual(bytes.subarray(0, blockStride));
        }
      });
    });
  });
}
