// Causal grouped-query attention of T new queries (positions p0 .. p0 + T - 1) over a paged KV cache
// that already holds their keys and values (positions 0 .. p0 + T - 1).
//
//   q    token t, query head h at  q + (t * qStride + h * hd) floats, rotated
//   out  token t, query head h at  out + (t * outStride + h * hd) floats
//   kc, vc  this layer's K and V in block 0; block b's are blockStride bytes further, V (kv_head,
//           bs, hd) and K (kv_head, bs / 16, hd, 16) in panels of 16 positions (wasm/assembly/kv.ts),
//           f32 or bf16 (kvBf16); query head h reads kv head h / (nh / nkv), as HF's repeat_kv does
//   table   (ceil((p0 + T) / bs)) i32: position p lies in block table[p / bs], row p % bs
//   bs      positions per block, a multiple of BK, so every key tile lies inside one block
//   scale   1 / sqrt(hd)
//
// Tiled like FlashAttention, with the query heads of one KV head taken together (GQA): a block is
// BQ tokens x g = nh / nkv heads, R = BQ g query rows that all read the same K and V tiles of BK keys,
// so each K/V vector loaded serves several rows. Per tile, as two small GEMMs:
//   S (R, BK) = Qs K^T    2 rows x 16 keys micro-tile: 8 f32x4 accumulators, one multiply-add per
//                          dim with the rows' query element splat, the 16 keys' K read from their
//                          panel (dim-major: four vectors a dim, the panel front to back); each score
//                          is one chain over d in order, so no lanes are summed and a row's scores
//                          do not depend on the rows beside it; causal and tile-end lanes masked
//   online softmax per row: running max m, sum l, O rescaled when m grows (P = exp(S - m))
//   O (R, hd) += P V      2 rows x 16 channels micro-tile: 8 accumulators over the tile's keys
// Queries are gathered (pre-scaled by 1/sqrt(hd), transposed: dim-major, so a micro-tile's rows are
// neighbours) into Qs, outputs accumulate in O, both in the scratch below, whose size does not
// depend on context length: no (T, context) score matrix exists. bf16 caches are widened tile by
// tile. The previous kernels: one query row at a time (~10 GFLOP/s on issue 14's model), then K
// position-major with 2 rows x 4 keys dot products summed across lanes at the end: the K panels
// made one layer's attention of 16 queries over 8K keys 17% faster and one query's 21% (a scratch
// A/B of attention_state, one thread, issue 15's dims).
//
// Cascade attention (issue 15 item 2) is the same loop over part of the keys with its state carried:
// attention_state's `partial` leaves each row's O unnormalized with its m and l, `resume` starts
// from them. Sequences sharing prefix blocks take one pass together (their query rows gathered
// from a row list into the same tiles, so each shared K/V tile is loaded once for all of them), then
// each resumes over its own keys. Per row that is the same tiles in the same order with the same
// operations as one pass, so the results are bit-identical to it (test/wasm-paged-cascade.test.ts).
import { kPanelAt, PANEL } from "./kv";
import { exp2neg4, hsum, bf16ToF32, loadBf16x4, madd } from "./simd";

const BQ: i32 = 16;
const LOG2E: f32 = 1.4426950408889634;
const BK: i32 = 64;

/** Scratch bytes `attention` needs: Qs and O (R, hd), S (R, BK), m and l (R), bf16 K/V tiles. */
export function attention_scratch_bytes(nh: i32, nkv: i32, hd: i32): i32 {
  const R = BQ * (nh / nkv);
  return (2 * R * hd + R * BK + 2 * R + 2 * BK * hd) * 4;
}

/** Lanes i .. i + 3 below `lim` (the row's valid keys in this tile) keep v, others become `fill`. */
// @ts-ignore: decorator
@inline
function keep(v: v128, i: i32, lim: i32, fill: v128): v128 {
  const idx = i32x4.add(i32x4.splat(i), i32x4(0, 1, 2, 3));
  return v128.bitselect(v, fill, i32x4.lt_s(idx, i32x4.splat(lim)));
}

/** An S row's keys i .. i + 15 from v0 .. v3 at `sp`, lanes at or past `lim` -inf. */
// @ts-ignore: decorator
@inline
function put16(sp: usize, i: i32, lim: i32, v0: v128, v1: v128, v2: v128, v3: v128): void {
  if (lim >= i + 16) {
    v128.store(sp, v0);
    v128.store(sp, v1, 16);
    v128.store(sp, v2, 32);
    v128.store(sp, v3, 48);
    return;
  }
  const ninf = f32x4.splat(-Infinity);
  v128.store(sp, keep(v0, i, lim, ninf));
  v128.store(sp, keep(v1, i + 4, lim, ninf), 16);
  v128.store(sp, keep(v2, i + 8, lim, ninf), 32);
  v128.store(sp, keep(v3, i + 12, lim, ninf), 48);
}

/**
 * S rows r and r + 1 (at sa and sa + BK floats) over the tile's keys 0 .. n16 (n rounded up to 16;
 * the lanes past a row's valid keys are -inf). qt: row r's scaled query element d at
 * qt + d Rp floats, row r + 1's next to it; kp: the tile's first K panel (f32, PANEL x 4 bytes a
 * dim). Key rows past n are read but masked: they lie in the same block.
 */
// @ts-ignore: decorator
@inline
function scores2(qt: usize, Rp: i32, kp: usize, n16: i32, hd: i32, sa: usize, limA: i32, limB: i32): void {
  const qStep = <usize>Rp << 2;
  const panel = <usize>hd * (PANEL << 2);
  for (let i = 0; i < n16; i += PANEL) {
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let b0 = f32x4.splat(0), b1 = f32x4.splat(0), b2 = f32x4.splat(0), b3 = f32x4.splat(0);
    let qp = qt;
    let kq = kp + <usize>(i >> 4) * panel;
    const kEnd = kq + panel;
    while (kq < kEnd) {
      const x = v128.load32_splat(qp);
      const y = v128.load32_splat(qp, 4);
      const w0 = v128.load(kq), w1 = v128.load(kq, 16), w2 = v128.load(kq, 32), w3 = v128.load(kq, 48);
      a0 = madd(x, w0, a0);
      a1 = madd(x, w1, a1);
      a2 = madd(x, w2, a2);
      a3 = madd(x, w3, a3);
      b0 = madd(y, w0, b0);
      b1 = madd(y, w1, b1);
      b2 = madd(y, w2, b2);
      b3 = madd(y, w3, b3);
      qp += qStep;
      kq += PANEL << 2;
    }
    put16(sa + (<usize>i << 2), i, limA, a0, a1, a2, a3);
    put16(sa + (<usize>(BK + i) << 2), i, limB, b0, b1, b2, b3);
  }
}

/** scores2 for one row (the block's last when its row count is odd): the same chains. */
// @ts-ignore: decorator
@inline
function scores1(qt: usize, Rp: i32, kp: usize, n16: i32, hd: i32, sa: usize, lim: i32): void {
  const qStep = <usize>Rp << 2;
  const panel = <usize>hd * (PANEL << 2);
  for (let i = 0; i < n16; i += PANEL) {
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let qp = qt;
    let kq = kp + <usize>(i >> 4) * panel;
    const kEnd = kq + panel;
    while (kq < kEnd) {
      const x = v128.load32_splat(qp);
      a0 = madd(x, v128.load(kq), a0);
      a1 = madd(x, v128.load(kq, 16), a1);
      a2 = madd(x, v128.load(kq, 32), a2);
      a3 = madd(x, v128.load(kq, 48), a3);
      qp += qStep;
      kq += PANEL << 2;
    }
    put16(sa + (<usize>i << 2), i, lim, a0, a1, a2, a3);
  }
}

/**
 * O rows r, r + 1 (at oa, oa + hdB; channels from byte od) += P rows r, r + 1 (at pa, pa + BK
 * floats; keys up to pEnd) times V (rows hdB bytes apart from vd, channel od's): one chain of
 * multiply-adds per output over the keys in order, whatever the tile shape.
 */
// @ts-ignore: decorator
@inline
function pv2x16(pa: usize, pEnd: usize, oa: usize, hdB: usize, vd: usize, od: usize): void {
  const ob = oa + hdB;
  let c00 = v128.load(oa + od), c01 = v128.load(oa + od, 16), c02 = v128.load(oa + od, 32), c03 = v128.load(oa + od, 48);
  let c10 = v128.load(ob + od), c11 = v128.load(ob + od, 16), c12 = v128.load(ob + od, 32), c13 = v128.load(ob + od, 48);
  let pi = pa;
  let vr = vd;
  while (pi < pEnd) {
    const v0 = v128.load(vr), v1 = v128.load(vr, 16), v2 = v128.load(vr, 32), v3 = v128.load(vr, 48);
    const w0 = v128.load32_splat(pi);
    const w1 = v128.load32_splat(pi, BK << 2);
    c00 = madd(w0, v0, c00); c01 = madd(w0, v1, c01); c02 = madd(w0, v2, c02); c03 = madd(w0, v3, c03);
    c10 = madd(w1, v0, c10); c11 = madd(w1, v1, c11); c12 = madd(w1, v2, c12); c13 = madd(w1, v3, c13);
    pi += 4;
    vr += hdB;
  }
  v128.store(oa + od, c00); v128.store(oa + od, c01, 16); v128.store(oa + od, c02, 32); v128.store(oa + od, c03, 48);
  v128.store(ob + od, c10); v128.store(ob + od, c11, 16); v128.store(ob + od, c12, 32); v128.store(ob + od, c13, 48);
}

/** pv2x16 over 8 channels. */
// @ts-ignore: decorator
@inline
function pv2x8(pa: usize, pEnd: usize, oa: usize, hdB: usize, vd: usize, od: usize): void {
  const ob = oa + hdB;
  let c00 = v128.load(oa + od), c01 = v128.load(oa + od, 16);
  let c10 = v128.load(ob + od), c11 = v128.load(ob + od, 16);
  let pi = pa;
  let vr = vd;
  while (pi < pEnd) {
    const v0 = v128.load(vr), v1 = v128.load(vr, 16);
    const w0 = v128.load32_splat(pi);
    const w1 = v128.load32_splat(pi, BK << 2);
    c00 = madd(w0, v0, c00); c01 = madd(w0, v1, c01);
    c10 = madd(w1, v0, c10); c11 = madd(w1, v1, c11);
    pi += 4;
    vr += hdB;
  }
  v128.store(oa + od, c00); v128.store(oa + od, c01, 16);
  v128.store(ob + od, c10); v128.store(ob + od, c11, 16);
}

/** pv2x8 for row r alone. */
// @ts-ignore: decorator
@inline
function pv1x8(pa: usize, pEnd: usize, oa: usize, hdB: usize, vd: usize, od: usize): void {
  let c0 = v128.load(oa + od), c1 = v128.load(oa + od, 16);
  let pi = pa;
  let vr = vd;
  while (pi < pEnd) {
    const w = v128.load32_splat(pi);
    c0 = madd(w, v128.load(vr), c0);
    c1 = madd(w, v128.load(vr, 16), c1);
    pi += 4;
    vr += hdB;
  }
  v128.store(oa + od, c0); v128.store(oa + od, c1, 16);
}

export function attention(
  q: usize, qStride: i32, out: usize, outStride: i32,
  T: i32, p0: i32, nh: i32, nkv: i32, hd: i32,
  kc: usize, vc: usize, table: usize, bs: i32, blockStride: usize, kvBf16: bool, scale: f32,
  scratch: usize,
): void {
  attend(q, qStride, out, outStride, 0, T, p0, 0, p0 + T, nh, nkv, hd,
    kc, vc, table, bs, blockStride, kvBf16, scale, scratch, 0, false, false);
}

/**
 * `attention` over part of the keys, with its online-softmax state carried in or out (cascade
 * attention over a shared prefix: one pass of every member's queries over the shared blocks with
 * `partial`, then each member's own keys with `resume`).
 *
 *   rows    0: query t is row t of q, out and state; else (T) i32: query t is row rows[t]
 *   p0      query t is at position p0 + t and sees keys up to it; a caller whose queries all lie
 *           past kTo (the shared prefix) passes p0 = kTo: no key is masked
 *   kFrom, kTo  the keys attended: [kFrom, kTo) ∩ [0, p0 + t], kFrom a multiple of 64
 *   state   row r, query head h: m (running max of the scaled scores), l (sum of exp(s - m)) at
 *           state + (r nh + h) 8 bytes
 *   resume  start from out's O (unnormalized: sum of exp(s - m) v) and state's m, l, not from
 *           nothing
 *   partial leave O unnormalized in out and m, l in state (another call continues them), instead
 *           of out = O / l
 */
export function attention_state(
  q: usize, qStride: i32, out: usize, outStride: i32, rows: usize,
  T: i32, p0: i32, kFrom: i32, kTo: i32, nh: i32, nkv: i32, hd: i32,
  kc: usize, vc: usize, table: usize, bs: i32, blockStride: usize, kvBf16: bool, scale: f32,
  scratch: usize, state: usize, resume: bool, partial: bool,
): void {
  attend(q, qStride, out, outStride, rows, T, p0, kFrom, kTo, nh, nkv, hd,
    kc, vc, table, bs, blockStride, kvBf16, scale, scratch, state, resume, partial);
}

/** Row index of query t: t itself, or rows[t]. */
// @ts-ignore: decorator
@inline
function rowOf(rows: usize, t: i32): usize {
  return rows == 0 ? <usize>t : <usize>load<i32>(rows + (<usize>t << 2));
}

function attend(
  q: usize, qStride: i32, out: usize, outStride: i32, rows: usize,
  T: i32, p0: i32, kFrom: i32, kTo: i32, nh: i32, nkv: i32, hd: i32,
  kc: usize, vc: usize, table: usize, bs: i32, blockStride: usize, kvBf16: bool, scale: f32,
  scratch: usize, state: usize, resume: bool, partial: bool,
): void {
  const g = nh / nkv;
  const hdB = <usize>hd << 2;
  const rMax = BQ * g;
  const qs = scratch;
  const ob = qs + <usize>rMax * hdB;
  const sb = ob + <usize>rMax * hdB;
  const mRow = sb + (<usize>(rMax * BK) << 2);
  const lRow = mRow + (<usize>rMax << 2);
  const kt = lRow + (<usize>rMax << 2);
  const vt = kt + <usize>BK * hdB;
  const eb: usize = kvBf16 ? 2 : 4;
  // Scores in base 2 (scale log2 e folded into Qs): P = 2^(S - m) is exp of the natural scores
  // less theirs, and the state's m is in the same base-2 units on both sides of a cascade.
  const sv: f32 = scale * LOG2E;
  const zero = f32x4.splat(0);
  for (let kvh = 0; kvh < nkv; kvh++) {
    const kHead = kc + <usize>kvh * <usize>bs * <usize>hd * eb;
    const vHead = vc + <usize>kvh * <usize>bs * <usize>hd * eb;
    for (let tb = 0; tb < T; tb += BQ) {
      const te = min(T, tb + BQ);
      const R = (te - tb) * g;
      const Rp = (R + 1) & ~1;
      // Row r = (t - tb) g + j is token t, query head kvh g + j.
      for (let r = 0; r < R; r++) {
        const row = rowOf(rows, tb + r / g);
        const h = kvh * g + r % g;
        const qp = q + ((row * <usize>qStride + <usize>h * <usize>hd) << 2);
        // Qs dim-major: element d of row r at (d Rp + r) floats.
        const dst = qs + (<usize>r << 2);
        for (let d = 0; d < hd; d++) {
          store<f32>(dst + ((<usize>d * <usize>Rp) << 2), load<f32>(qp + (<usize>d << 2)) * sv);
        }
        if (resume) {
          const op = out + ((row * <usize>outStride + <usize>h * <usize>hd) << 2);
          memory.copy(ob + <usize>r * hdB, op, hdB);
          const st = state + ((row * <usize>nh + <usize>h) << 3);
          store<f32>(mRow + (<usize>r << 2), load<f32>(st));
          store<f32>(lRow + (<usize>r << 2), load<f32>(st, 4));
        } else {
          memory.fill(ob + <usize>r * hdB, 0, hdB);
          store<f32>(mRow + (<usize>r << 2), -Infinity);
          store<f32>(lRow + (<usize>r << 2), 0);
        }
      }
      // Keys up to the tile's last query, and below kTo.
      const last = min(p0 + te, kTo) - 1;
      for (let j0 = kFrom; j0 <= last; j0 += BK) {
        const n = min(last + 1, j0 + BK) - j0;
        const blockAt = <usize>load<i32>(table + (<usize>(j0 / bs) << 2)) * blockStride;
        // The tile's first K panel (j0 % bs is a multiple of BK, so of PANEL) and V row.
        let kp = kHead + blockAt + <usize>((j0 % bs) >> 4) * <usize>hd * (eb << 4);
        let vp = vHead + blockAt + <usize>(j0 % bs) * <usize>hd * eb;
        const n16 = (n + 15) & ~15;
        if (kvBf16) {
          // K panels widened whole (rows past n included: their scores are masked), V rows up to n.
          const kCount = (n16 >> 4) * hd * PANEL;
          for (let i = 0; i < kCount; i += 4) {
            v128.store(kt + (<usize>i << 2), loadBf16x4(kp + (<usize>i << 1)));
          }
          const vCount = n * hd;
          for (let i = 0; i < vCount; i++) {
            store<f32>(vt + (<usize>i << 2), bf16ToF32(load<u16>(vp + (<usize>i << 1))));
          }
          kp = kt;
          vp = vt;
        }
        // Keys of this tile row r may see: j0 + i <= p0 + t, and i < n. Key rows past n up to the
        // next multiple of 16 are read but masked: they lie inside the same block.
        let r = 0;
        for (; r + 2 <= R; r += 2) {
          const limA = min(n, p0 + tb + r / g - j0 + 1);
          const limB = min(n, p0 + tb + (r + 1) / g - j0 + 1);
          scores2(qs + (<usize>r << 2), Rp, kp, n16, hd, sb + (<usize>(r * BK) << 2), limA, limB);
        }
        if (r < R) {
          const lim = min(n, p0 + tb + r / g - j0 + 1);
          scores1(qs + (<usize>r << 2), Rp, kp, n16, hd, sb + (<usize>(r * BK) << 2), lim);
        }
        // Online softmax: P = exp(S - m_new) in place, l and O rescaled by exp(m_old - m_new).
        for (let r = 0; r < R; r++) {
          const lim = min(n, p0 + tb + r / g - j0 + 1);
          const srow = sb + (<usize>(r * BK) << 2);
          if (lim <= 0) {
            memory.fill(srow, 0, <usize>((n + 3) & ~3) << 2);
            continue;
          }
          let mv = f32x4.splat(-Infinity);
          // pmax: one instruction (max's NaN handling is several; scores are finite or -inf).
          for (let i = 0; i < n; i += 4) mv = f32x4.pmax(mv, v128.load(srow + (<usize>i << 2)));
          const mt = max(max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1)),
            max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)));
          const mOld = load<f32>(mRow + (<usize>r << 2));
          const mNew = max(mOld, mt);
          const m4 = f32x4.splat(mNew);
          let lv = f32x4.splat(0);
          if (lim == ((n + 3) & ~3)) {
            // Every lane valid (tiles off the diagonal): no mask to apply.
            for (let i = 0; i < n; i += 4) {
              const o = <usize>i << 2;
              const p = exp2neg4(f32x4.sub(v128.load(srow + o), m4));
              v128.store(srow + o, p);
              lv = f32x4.add(lv, p);
            }
          } else {
            // Masked lanes are -inf, whose exp2neg4 is ~1e-38, not 0: zero them.
            for (let i = 0; i < n; i += 4) {
              const o = <usize>i << 2;
              const p = keep(exp2neg4(f32x4.sub(v128.load(srow + o), m4)), i, lim, zero);
              v128.store(srow + o, p);
              lv = f32x4.add(lv, p);
            }
          }
          let l = hsum(lv);
          if (mOld != -Infinity && mOld != mNew) {
            const corr = f32x4.extract_lane(exp2neg4(f32x4.splat(mOld - mNew)), 0);
            l += load<f32>(lRow + (<usize>r << 2)) * corr;
            const cv = f32x4.splat(corr);
            const orow = ob + <usize>r * hdB;
            for (let d = 0; d < hd; d += 4) {
              const o = <usize>d << 2;
              v128.store(orow + o, f32x4.mul(v128.load(orow + o), cv));
            }
          } else {
            l += load<f32>(lRow + (<usize>r << 2));
          }
          store<f32>(lRow + (<usize>r << 2), l);
          store<f32>(mRow + (<usize>r << 2), mNew);
        }
        // O += P V: 2 rows x 16 channels per pass over the tile's keys (a whole 64-byte line of each
        // V row a key), 2 x 8 for a last 8 channels, the last row alone when R is odd.
        for (let r = 0; r < R; r += 2) {
          const pa = sb + (<usize>(r * BK) << 2);
          const oa = ob + <usize>r * hdB;
          const pEnd = pa + (<usize>n << 2);
          if (r + 1 < R) {
            let d = 0;
            for (; d + 16 <= hd; d += 16) pv2x16(pa, pEnd, oa, hdB, vp + (<usize>d << 2), <usize>d << 2);
            if (d < hd) pv2x8(pa, pEnd, oa, hdB, vp + (<usize>d << 2), <usize>d << 2);
          } else {
            for (let d = 0; d < hd; d += 8) pv1x8(pa, pEnd, oa, hdB, vp + (<usize>d << 2), <usize>d << 2);
          }
        }
      }
      for (let r = 0; r < R; r++) {
        const row = rowOf(rows, tb + r / g);
        const h = kvh * g + r % g;
        const src = ob + <usize>r * hdB;
        const op = out + ((row * <usize>outStride + <usize>h * <usize>hd) << 2);
        if (partial) {
          memory.copy(op, src, hdB);
          const st = state + ((row * <usize>nh + <usize>h) << 3);
          store<f32>(st, load<f32>(mRow + (<usize>r << 2)));
          store<f32>(st, load<f32>(lRow + (<usize>r << 2)), 4);
          continue;
        }
        const inv = f32x4.splat(<f32>1 / load<f32>(lRow + (<usize>r << 2)));
        for (let d = 0; d < hd; d += 4) {
          const o = <usize>d << 2;
          v128.store(op + o, f32x4.mul(v128.load(src + o), inv));
        }
      }
    }
  }
}

/**
 * Byte offset of kv head h, position j, dim d from block 0's K (panels: kPanelAt) or V (rows),
 * looked up position by position.
 */
function kvAt(table: usize, bs: i32, blockStride: usize, h: i32, j: i32, d: i32, hd: i32, eb: usize, isK: bool): usize {
  const block = <usize>load<i32>(table + (<usize>(j / bs) << 2));
  const head = block * blockStride + <usize>h * <usize>bs * <usize>hd * eb;
  const i = j % bs;
  return head + (isK ? kPanelAt(i, d, hd) : <usize>i * <usize>hd + <usize>d) * eb;
}

/**
 * Scalar reference: for each query, every score over the whole context (scratch: p0 + T floats),
 * a plain max-subtracted softmax with libm exp, then the weighted sum of values.
 */
export function attention_ref(
  q: usize, qStride: i32, out: usize, outStride: i32,
  T: i32, p0: i32, nh: i32, nkv: i32, hd: i32,
  kc: usize, vc: usize, table: usize, bs: i32, blockStride: usize, kvBf16: bool, scale: f32,
  scratch: usize,
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
          const at = kvAt(table, bs, blockStride, kvh, j, d, hd, eb, true);
          const k = kvBf16 ? bf16ToF32(load<u16>(kc + at)) : load<f32>(kc + at);
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
          const at = kvAt(table, bs, blockStride, kvh, j, d, hd, eb, false);
          const v = kvBf16 ? bf16ToF32(load<u16>(vc + at)) : load<f32>(vc + at);
          o += load<f32>(scratch + (<usize>j << 2)) * v;
        }
        store<f32>(op + (<usize>d << 2), o / l);
      }
    }
  }
}
