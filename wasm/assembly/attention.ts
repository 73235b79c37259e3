// Causal grouped-query attention of T new queries (positions p0 .. p0 + T - 1) over a KV cache that
// already holds their keys and values (positions 0 .. p0 + T - 1).
//
//   q    token t, query head h at  q + (t * qStride + h * hd) floats, rotated
//   out  token t, query head h at  out + (t * outStride + h * hd) floats
//   kc, vc  (kv_head, cap, hd) for this layer, f32 or bf16 (kvBf16); query head h reads kv head
//           h / (nh / nkv), as HF's repeat_kv does
//   scale   1 / sqrt(hd)
//
// Tiled like FlashAttention: queries in blocks of BQ tokens x (nh / nkv) heads, keys in tiles of BK,
// an online softmax (running max m, running sum l, output rescaled when m grows). Memory is the
// scratch below, independent of context length: no (T, context) score matrix exists.
import { exp4, hsum, bf16ToF32 } from "./simd";

const BQ: i32 = 16;
const BK: i32 = 64;

/** Scratch bytes `attention` needs: K and V tiles in f32, BK + 4 scores, m and l per row. */
export function attention_scratch_bytes(nh: i32, nkv: i32, hd: i32): i32 {
  const rows = BQ * (nh / nkv);
  return (2 * BK * hd + BK + 4 + 2 * rows) * 4;
}

// @ts-ignore: decorator
@inline
function dot(a: usize, b: usize, hd: i32): f32 {
  let s0 = f32x4.splat(0), s1 = f32x4.splat(0);
  let i = 0;
  for (; i + 8 <= hd; i += 8) {
    const o = <usize>i << 2;
    s0 = f32x4.add(s0, f32x4.mul(v128.load(a + o), v128.load(b + o)));
    s1 = f32x4.add(s1, f32x4.mul(v128.load(a + o, 16), v128.load(b + o, 16)));
  }
  for (; i < hd; i += 4) {
    const o = <usize>i << 2;
    s0 = f32x4.add(s0, f32x4.mul(v128.load(a + o), v128.load(b + o)));
  }
  return hsum(f32x4.add(s0, s1));
}

export function attention(
  q: usize, qStride: i32, out: usize, outStride: i32,
  T: i32, p0: i32, nh: i32, nkv: i32, hd: i32,
  kc: usize, vc: usize, cap: i32, kvBf16: bool, scale: f32, scratch: usize,
): void {
  const g = nh / nkv;
  const hdB = <usize>hd << 2;
  const kt = scratch;
  const vt = kt + <usize>BK * hdB;
  const sc = vt + <usize>BK * hdB;
  const mRow = sc + (<usize>(BK + 4) << 2);
  const lRow = mRow + (<usize>(BQ * g) << 2);
  const eb: usize = kvBf16 ? 2 : 4;
  for (let kvh = 0; kvh < nkv; kvh++) {
    const kHead = kc + <usize>kvh * <usize>cap * <usize>hd * eb;
    const vHead = vc + <usize>kvh * <usize>cap * <usize>hd * eb;
    for (let tb = 0; tb < T; tb += BQ) {
      const te = min(T, tb + BQ);
      for (let t = tb; t < te; t++) {
        for (let j = 0; j < g; j++) {
          const r = (t - tb) * g + j;
          store<f32>(mRow + (<usize>r << 2), -Infinity);
          store<f32>(lRow + (<usize>r << 2), 0);
          memory.fill(out + ((<usize>t * <usize>outStride + <usize>(kvh * g + j) * <usize>hd) << 2), 0, hdB);
        }
      }
      const last = p0 + te - 1;
      for (let j0 = 0; j0 <= last; j0 += BK) {
        const je = min(last + 1, j0 + BK);
        let kp = kHead + <usize>j0 * <usize>hd * eb;
        let vp = vHead + <usize>j0 * <usize>hd * eb;
        if (kvBf16) {
          const n = (je - j0) * hd;
          for (let i = 0; i < n; i++) {
            store<f32>(kt + (<usize>i << 2), bf16ToF32(load<u16>(kp + (<usize>i << 1))));
            store<f32>(vt + (<usize>i << 2), bf16ToF32(load<u16>(vp + (<usize>i << 1))));
          }
          kp = kt;
          vp = vt;
        }
        for (let t = tb; t < te; t++) {
          const pos = p0 + t;
          if (j0 > pos) continue;
          const n = min(je, pos + 1) - j0;
          for (let j = 0; j < g; j++) {
            const h = kvh * g + j;
            const r = (t - tb) * g + j;
            const qp = q + ((<usize>t * <usize>qStride + <usize>h * <usize>hd) << 2);
            const op = out + ((<usize>t * <usize>outStride + <usize>h * <usize>hd) << 2);
            let mt: f32 = -Infinity;
            for (let i = 0; i < n; i++) {
              const s = dot(qp, kp + <usize>i * hdB, hd) * scale;
              store<f32>(sc + (<usize>i << 2), s);
              mt = max(mt, s);
            }
            const mOld = load<f32>(mRow + (<usize>r << 2));
            const mNew = max(mOld, mt);
            const corr: f32 = mOld == -Infinity ? 0 : f32x4.extract_lane(exp4(f32x4.splat(mOld - mNew)), 0);
            const mv = f32x4.splat(mNew);
            for (let i = 0; i < n; i += 4) {
              const o = <usize>i << 2;
              v128.store(sc + o, exp4(f32x4.sub(v128.load(sc + o), mv)));
            }
            const cv = f32x4.splat(corr);
            for (let d = 0; d < hd; d += 4) {
              const o = <usize>d << 2;
              v128.store(op + o, f32x4.mul(v128.load(op + o), cv));
            }
            let l: f32 = 0;
            for (let i = 0; i < n; i++) {
              const p = load<f32>(sc + (<usize>i << 2));
              l += p;
              const pv = f32x4.splat(p);
              const vr = vp + <usize>i * hdB;
              for (let d = 0; d < hd; d += 4) {
                const o = <usize>d << 2;
                v128.store(op + o, f32x4.add(v128.load(op + o), f32x4.mul(pv, v128.load(vr + o))));
              }
            }
            store<f32>(lRow + (<usize>r << 2), load<f32>(lRow + (<usize>r << 2)) * corr + l);
            store<f32>(mRow + (<usize>r << 2), mNew);
          }
        }
      }
      for (let t = tb; t < te; t++) {
        for (let j = 0; j < g; j++) {
          const r = (t - tb) * g + j;
          const inv = f32x4.splat(<f32>1 / load<f32>(lRow + (<usize>r << 2)));
          const op = out + ((<usize>t * <usize>outStride + <usize>(kvh * g + j) * <usize>hd) << 2);
          for (let d = 0; d < hd; d += 4) {
            const o = <usize>d << 2;
            v128.store(op + o, f32x4.mul(v128.load(op + o), inv));
          }
        }
      }
    }
  }
}

/**
 * Scalar reference: for each query, every score over the whole context (scratch: p0 + T floats),
 * a plain max-subtracted softmax with libm exp, then the weighted sum of values.
 */
export function attention_ref(
  q: usize, qStride: i32, out: usize, outStride: i32,
  T: i32, p0: i32, nh: i32, nkv: i32, hd: i32,
  kc: usize, vc: usize, cap: i32, kvBf16: bool, scale: f32, scratch: usize,
): void {
  const g = nh / nkv;
  const eb: usize = kvBf16 ? 2 : 4;
  for (let t = 0; t < T; t++) {
    const ctx = p0 + t + 1;
    for (let h = 0; h < nh; h++) {
      const kvh = h / g;
      const qp = q + ((<usize>t * <usize>qStride + <usize>h * <usize>hd) << 2);
      const op = out + ((<usize>t * <usize>outStride + <usize>h * <usize>hd) << 2);
      let m: f32 = -Infinity;
      for (let j = 0; j < ctx; j++) {
        let s: f32 = 0;
        for (let d = 0; d < hd; d++) {
          const e = (<usize>kvh * <usize>cap + <usize>j) * <usize>hd + <usize>d;
          const k = kvBf16 ? bf16ToF32(load<u16>(kc + e * eb)) : load<f32>(kc + e * eb);
          s += load<f32>(qp + (<usize>d << 2)) * k;
        }
        s *= scale;
        store<f32>(scratch + (<usize>j << 2), s);
        m = max(m, s);
      }
      let l: f32 = 0;
      for (let j = 0; j < ctx; j++) {
        const p = Mathf.exp(load<f32>(scratch + (<usize>j << 2)) - m);
        store<f32>(scratch + (<usize>j << 2), p);
        l += p;
      }
      for (let d = 0; d < hd; d++) {
        let o: f32 = 0;
        for (let j = 0; j < ctx; j++) {
          const e = (<usize>kvh * <usize>cap + <usize>j) * <usize>hd + <usize>d;
          const v = kvBf16 ? bf16ToF32(load<u16>(vc + e * eb)) : load<f32>(vc + e * eb);
          o += load<f32>(scratch + (<usize>j << 2)) * v;
        }
        store<f32>(op + (<usize>d << 2), o / l);
      }
    }
  }
}
