// One shard of the Llama forward pass over one WebAssembly instance and its own memory.
//
// A shard holds, Megatron-style, a slice of every layer: its query heads and their KV heads (the
// fused q/k/v rows and the matching o_proj COLUMNS), its slice of the FFN (gate/up rows and the
// matching down_proj COLUMNS) and its rows of lm_head; norms are replicated. o_proj and down_proj of
// a shard produce a partial sum of the residual update; the shards' partials are summed (in a fixed
// order, so every shard holds bit-identical residuals). With one shard the partial is added to the
// residual directly.
//
// Plain JavaScript (no TypeScript) on purpose: worker.mjs imports it, and a worker (and workerd)
// must load it with no TS loader. It is type-checked all the same (@ts-check, the JSDoc types below,
// `npm run lint`), and the TS glue imports those types from here.
//
// The KV cache is paged (core/engine/paged-runtime.ts): a pool of blocks of bs positions, and every
// micro-batch says, per row, its position and slot, and per sequence segment, its block table. A
// shard keeps no sequence state; the single-sequence runtime is one contiguous table over it.
//
// Memory map (every region 64-byte aligned), from heap_base up:
//   weights    per layer: attnNorm (H) f32, qkv ((nh + 2 nkv) hd, H), o (H, nh hd), ffnNorm (H) f32,
//              gu (2F, H) [gate rows then up rows], down (H, F); then finalNorm (H) f32, lm (V, H).
//              Matrix elements f32 | bf16 | int8 (+ scales (rows, cols / 32) f32).
//   activations x, xn, part (B, H); qkv (B, (nh + 2 nkv) hd); att (B, nh hd); gu (B, 2F); act (B, F);
//              cos, sin (B, hd / 2); invFreq (hd / 2) f64; attention scratch; shared-prefix groups
//              query rows (B) i32 and softmax state (B, nh, 2) f32; logits (LOGIT_ROWS, V);
//              quantization staging (64, max cols) f32 (int8 only); the step (stepLayout) i32
//   KV pool    at the top, block-major so it grows without moving anything: block b at
//              kvBase + b * blockBytes, holding for each layer K (nkv, bs / 16, hd, 16: panels of 16
//              positions, dim-major inside, wasm/assembly/kv.ts) then V (nkv, bs, hd), f32 or bf16.
//              Memory grows to the highest block a call uses. exportKv / importKv convert K between
//              its panels and the position-major rows of the snapshot layout.

// @ts-check

import { prefixGroups } from "./prefix-groups.mjs";

/** @typedef {"f32" | "bf16" | "int8"} WeightFormat */
/** @typedef {"qkv" | "o" | "gu" | "down" | "lm"} MatrixKey */
/** @typedef {"attnNorm" | "ffnNorm" | "finalNorm"} VectorKey */

/**
 * One shard's dims: counts are LOCAL to the shard (its heads, FFN columns, vocab rows).
 * @typedef {object} ShardSpec
 * @property {number} hidden
 * @property {number} layers
 * @property {number} headDim
 * @property {number} heads
 * @property {number} kvHeads
 * @property {number} ffn
 * @property {number} vocab
 * @property {number} eps
 * @property {WeightFormat} weightFormat
 * @property {"f32" | "bf16"} kvDtype
 * @property {number} maxBatch  tokens per micro-batch (activation buffers are sized for it)
 * @property {number} maxPositions  positions of one sequence (its block table's length x blockTokens)
 * @property {number} blockTokens  positions per KV block, a multiple of attention's 64-key tile
 * @property {number} poolBlocks  blocks in the KV pool (ids 0 .. poolBlocks - 1)
 */

/**
 * The product module's exports (wasm/assembly/index.ts), as JS sees them: pointers are byte
 * offsets into the memory, bool parameters are 0 | 1.
 * @typedef {object} Kernels
 * @property {() => number} heap_base
 * @property {(nh: number, nkv: number, hd: number) => number} attention_scratch_bytes
 * @property {(x: number, T: number, K: number, w: number, N: number, y: number, acc: number) => void} matmul_f32
 * @property {(x: number, T: number, K: number, w: number, N: number, y: number, acc: number) => void} matmul_bf16
 * @property {(x: number, T: number, K: number, w: number, scales: number, N: number, y: number, acc: number) => void} matmul_i8
 * @property {(w: number, N: number, K: number, q: number, scales: number) => void} quantize_i8
 * @property {(x: number, w: number, y: number, T: number, H: number, eps: number) => void} rmsnorm
 * @property {(invFreq: number, half: number, positions: number, T: number, scaling: number, cos: number, sin: number) => void} rope_table
 * @property {(x: number, stride: number, T: number, heads: number, hd: number, cos: number, sin: number) => void} rope_apply
 * @property {(src: number, stride: number, T: number, nkv: number, hd: number, cache: number, slots: number, bs: number, blockStride: number, bf16: number, panels: number) => void} kv_store
 * @property {(head: number, row: number, rows: number, hd: number, bf16: number, buf: number, toPanels: number) => void} kv_panel_rows
 * @property {(q: number, qStride: number, out: number, outStride: number, rows: number, T: number, p0: number, kFrom: number, kTo: number, nh: number, nkv: number, hd: number, kCache: number, vCache: number, table: number, bs: number, blockStride: number, bf16: number, scale: number, scratch: number, state: number, resume: number, partial: number) => void} attention_state
 * @property {(gu: number, T: number, F: number, out: number) => void} swiglu
 * @property {(dst: number, src: number, n: number) => void} add_into
 */

/**
 * A matrix (rows, cols) in memory: elements at ptr, int8 scales (rows, cols / 32) f32 at scales.
 * @typedef {{ rows: number, cols: number, ptr: number, scales: number }} Matrix
 */
/**
 * One layer's weights: norm vectors (H) f32 at a pointer, the matrices.
 * @typedef {{ attnNorm: number, qkv: Matrix, o: Matrix, ffnNorm: number, gu: Matrix, down: Matrix }} Layer
 */

const ALIGN = 64;
const PAGE = 65536;
const MAX_PAGES = 65536;
/**
 * Pages (64 KiB) every memory given to the module must start with: the module's static data (the
 * GEMM's 256 KiB packing buffer, the decode x permutation and the 512 KiB int8 dequantization
 * scratch, wasm/assembly/matmul.ts: 832 KiB) lies below heap_base. wasm/build.mjs
 * passes it to asc as --initialMemory.
 */
export const INITIAL_PAGES = 16;
const QUANT_ROWS = 64;
const I8_BLOCK = 32;
/**
 * Rows whose logits one lm_head pass computes (the logits buffer holds this many vocab rows): a
 * batched decode step of up to this many sequences reads lm_head once.
 */
export const LOGIT_ROWS = 32;

/** @param {number} n */
const align = (n) => Math.ceil(n / ALIGN) * ALIGN;

// attention's tile sizes (wasm/assembly/attention.ts BQ, BK): planning happens before any module is
// instantiated, so the scratch formula is repeated here; test/wasm-kernels.test.ts checks that it
// equals the kernel's attention_scratch_bytes.
const ATT_BQ = 16;
const ATT_BK = 64;
/** Default positions per KV block: attention's key tile, so every tile lies in one block. */
export const BLOCK_TOKENS = ATT_BK;

/**
 * Why a block size does not suit the kernels, or null: attention reads each 64-key tile from one
 * block, so a block must hold whole tiles.
 * @param {number} bs
 * @returns {string | null}
 */
export function blockTokensProblem(bs) {
  if (Number.isInteger(bs) && bs > 0 && bs % ATT_BK === 0) return null;
  return `blockTokens must be a positive multiple of ${ATT_BK} (attention's key tile), not ${bs}`;
}

/**
 * A step: one micro-batch's rows and the sequences they belong to, as i32 at these offsets:
 *   [0] rows T, [1] segments S, [2] blocks the pool must hold (highest block id used + 1)
 *   positions (B)  each row's position          slots (B)  each row's KV slot (block * bs + offset)
 *   segments (B, 4)  row0, rows, p0 (position of row0), at (offset of its block table in the step)
 *   tables  the segments' block tables, ceil((p0 + rows) / bs) ids each, back to back
 * The main thread writes it (WorkerShards: into shared memory); the shard copies it into its
 * memory, where the kernels read positions, slots and tables.
 * @param {number} B  maxBatch
 * @param {number} maxTable  ceil(maxPositions / blockTokens): the longest table
 */
export function stepLayout(B, maxTable) {
  const positions = 4;
  const slots = positions + B;
  const segments = slots + B;
  const tables = segments + 4 * B;
  return { positions, slots, segments, tables, ints: tables + B * maxTable };
}

/**
 * Bytes of KV per block for one shard: every layer's K and V of its heads.
 * @param {ShardSpec} spec
 */
export function blockBytes(spec) {
  const eb = spec.kvDtype === "bf16" ? 2 : 4;
  return 2 * spec.layers * spec.kvHeads * spec.blockTokens * spec.headDim * eb;
}

/**
 * Bytes of attention scratch for nh query heads over nkv KV heads of hd (one shard's heads).
 * @param {number} nh
 * @param {number} nkv
 * @param {number} hd
 * @returns {number}
 */
export function attentionScratchBytes(nh, nkv, hd) {
  const rows = ATT_BQ * Math.max(1, nh / Math.max(1, nkv));
  return (2 * rows * hd + rows * ATT_BK + 2 * rows + 2 * ATT_BK * hd) * 4;
}

/**
 * Bytes of one matrix (rows, cols) in `format`, int8 scales included.
 * @param {number} rows
 * @param {number} cols
 * @param {WeightFormat} format
 * @returns {number}
 */
export function matrixBytes(rows, cols, format) {
  if (format === "int8") return align(rows * cols) + align((rows * cols) / I8_BLOCK) * 4;
  return align(rows * cols * (format === "bf16" ? 2 : 4));
}

/**
 * Every byte count a shard will hold, for planning before any memory exists. The step's block
 * tables grow with a sequence's positions: `tablePerPosition` bytes per position of maxPositions
 * (maxBatch tables of one i32 per block), beside the activations' fixed bytes.
 * @param {ShardSpec} spec
 * @returns {{ weights: number, activations: number, kvPerPosition: number, tablePerPosition: number }}
 */
export function shardBytes(spec) {
  const { hidden: H, headDim: hd, heads: nh, kvHeads: nkv, ffn: F, vocab: V, layers: L } = spec;
  const f = spec.weightFormat;
  const nqkv = (nh + 2 * nkv) * hd;
  const perLayer =
    2 * align(H * 4) +
    matrixBytes(nqkv, H, f) +
    matrixBytes(H, nh * hd, f) +
    matrixBytes(2 * F, H, f) +
    matrixBytes(H, F, f);
  const weights = L * perLayer + align(H * 4) + matrixBytes(V, H, f);
  const B = spec.maxBatch;
  const scratch = attentionScratchBytes(nh, nkv, hd);
  const activations =
    3 * align(B * H * 4) +
    align(B * nqkv * 4) +
    align(B * nh * hd * 4) +
    align(B * 2 * F * 4) +
    align(B * F * 4) +
    2 * align((B * hd) / 2) * 4 +
    align((hd / 2) * 8) +
    align(scratch) +
    align(B * 4) +
    align(B * nh * 8) +
    align(LOGIT_ROWS * V * 4) +
    (f === "int8" ? align(QUANT_ROWS * Math.max(H, F, nh * hd) * 4) : 0) +
    align(stepLayout(B, 1).ints * 4);
  const kvPerPosition = 2 * L * nkv * hd * (spec.kvDtype === "bf16" ? 2 : 4);
  return { weights, activations, kvPerPosition, tablePerPosition: (B * 4) / spec.blockTokens };
}

/** @typedef {(partial: Float32Array) => void} Reduce  adds every shard's partial into the residual */

/**
 * The phases a profile splits a forward into (`npm run bench -- profile`): the projections' GEMMs,
 * attention over the cache, RMSNorm, rotary (table and apply), the KV cache writes, SwiGLU and
 * residual adds, the shards' all-reduce (copy, barrier wait, adds), and lm_head for the logits.
 * Whatever a forward spends outside them is JS glue, measured by the caller as the rest.
 */
export const PROFILE_PHASES = /** @type {const} */ ([
  "gemm",
  "attention",
  "norm",
  "rope",
  "kv_store",
  "elementwise",
  "reduce",
  "logits",
]);
const GEMM = 0;
const ATTENTION = 1;
const NORM = 2;
const ROPE = 3;
const KV_STORE = 4;
const ELEMENTWISE = 5;
export const REDUCE_PHASE = 6;
const LOGITS = 7;
/** Index after the phases: a forward's whole time in the shard (the glue is what the phases miss). */
export const PROFILE_TOTAL = PROFILE_PHASES.length;
/**
 * Index after the total: a count, not ms: query rows that attended to a shared prefix in a group
 * pass (once per micro-batch, not per layer), so a profile says whether steps were grouped.
 */
export const PROFILE_PREFIX_ROWS = PROFILE_TOTAL + 1;

export class Shard {
  /**
   * @param {WebAssembly.Module} module  the compiled kernels (wasm/build/ultralong.wasm)
   * @param {ShardSpec} spec  this shard's dims (local counts)
   */
  constructor(module, spec) {
    /** @readonly */
    this.spec = spec;
    this.memory = new WebAssembly.Memory({ initial: INITIAL_PAGES, maximum: MAX_PAGES });
    const instance = new WebAssembly.Instance(module, { env: { memory: this.memory } });
    this.k = /** @type {Kernels} */ (/** @type {unknown} */ (instance.exports));
    const { hidden: H, headDim: hd, heads: nh, kvHeads: nkv, ffn: F, vocab: V, layers: L } = spec;
    const f = spec.weightFormat;
    const B = spec.maxBatch;
    this.nqkv = (nh + 2 * nkv) * hd;
    this.kvEb = spec.kvDtype === "bf16" ? 2 : 4;
    let top = align(this.k.heap_base());
    /** @param {number} bytes */
    const take = (bytes) => {
      const p = top;
      top += align(bytes);
      return p;
    };
    /**
     * @param {number} rows
     * @param {number} cols
     * @returns {Matrix}
     */
    const matrix = (rows, cols) => {
      const eb = f === "bf16" ? 2 : f === "int8" ? 1 : 4;
      const m = { rows, cols, ptr: take(rows * cols * eb), scales: 0 };
      if (f === "int8") m.scales = take((rows * cols * 4) / I8_BLOCK);
      return m;
    };
    /** @type {Layer[]} */
    this.layers = [];
    for (let l = 0; l < L; l++) {
      this.layers.push({
        attnNorm: take(H * 4),
        qkv: matrix(this.nqkv, H),
        o: matrix(H, nh * hd),
        ffnNorm: take(H * 4),
        gu: matrix(2 * F, H),
        down: matrix(H, F),
      });
    }
    this.finalNorm = take(H * 4);
    this.lm = matrix(V, H);
    this.weightEnd = top;
    this.x = take(B * H * 4);
    this.xn = take(B * H * 4);
    this.part = take(B * H * 4);
    this.qkvBuf = take(B * this.nqkv * 4);
    this.att = take(B * nh * hd * 4);
    this.guBuf = take(B * 2 * F * 4);
    this.act = take(B * F * 4);
    this.cos = take((B * hd * 4) / 2);
    this.sin = take((B * hd * 4) / 2);
    this.invFreq = take((hd / 2) * 8);
    this.scratchBytes = nkv > 0 ? this.k.attention_scratch_bytes(nh, nkv, hd) : 0;
    this.scratch = take(this.scratchBytes);
    this.groupRows = take(B * 4);
    this.softmaxState = take(B * nh * 8);
    this.logitsBuf = take(LOGIT_ROWS * V * 4);
    this.staging = f === "int8" ? take(QUANT_ROWS * Math.max(H, F, nh * hd) * 4) : 0;
    this.bs = spec.blockTokens;
    this.layout = stepLayout(B, Math.ceil(spec.maxPositions / this.bs));
    this.stepPtr = take(this.layout.ints * 4);
    this.kvBase = top;
    this.blockBytes = blockBytes(spec);
    this.scaling = 1;
    // The micro-batch begin() started: its rows and segments (row0, rows, p0, table pointer, and
    // the leading blocks it attends to in its shared-prefix group's pass, 0 when in none).
    this.T = 0;
    /** @type {Array<{ row0: number, rows: number, p0: number, table: number, shared: number }>} */
    this.segments = [];
    /**
     * The micro-batch's shared-prefix groups: `count` query rows listed at `rows` (groupRows),
     * attending together to positions [0, keys) of `table` (any member's).
     * @type {Array<{ rows: number, count: number, keys: number, table: number }>}
     */
    this.groups = [];
    /** Milliseconds per PROFILE_PHASES entry since profiling was turned on; null: off (no cost). */
    /** @type {Float64Array | null} */
    this.profile = null;
    this.#ensureBytes(top);
  }

  /**
   * Turn the per-phase profile on (zeroed) or off.
   * @param {boolean} on
   */
  setProfiling(on) {
    this.profile = on ? new Float64Array(PROFILE_PREFIX_ROWS + 1) : null;
  }

  /**
   * Charge the time since `t0` to phase `i` when profiling; returns now (the next phase's t0).
   * @param {number} i
   * @param {number} t0
   */
  lap(i, t0) {
    if (this.profile === null) return 0;
    const t = performance.now();
    this.profile[i] += t - t0;
    return t;
  }

  /** A phase's start time when profiling, else 0 (no clock read). */
  clock() {
    return this.profile === null ? 0 : performance.now();
  }

  /** @param {number} end */
  #ensureBytes(end) {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    const pages = Math.ceil((end - have) / PAGE);
    try {
      this.memory.grow(pages);
    } catch (cause) {
      // shard-errors.ts maps the code to core's LimitError (this file cannot import core).
      throw Object.assign(
        new Error(
          `shard needs ${end} bytes of WebAssembly memory, more than the 4 GiB one memory holds; use more threads or a smaller weight format`,
          { cause },
        ),
        { code: "limit_exceeded" },
      );
    }
  }

  /**
   * @param {number} ptr
   * @param {number} n
   */
  #f32(ptr, n) {
    return new Float32Array(this.memory.buffer, ptr, n);
  }

  /** Bytes held for weights, and KV bytes per position (K and V, every layer, local heads). */
  get weightBytes() {
    return this.weightEnd - align(this.k.heap_base());
  }

  /**
   * A norm weight: key attnNorm | ffnNorm (per layer) or finalNorm (layer ignored).
   * @param {VectorKey} key
   * @param {number} layer
   * @param {Float32Array} data
   */
  setVector(key, layer, data) {
    const ptr = key === "finalNorm" ? this.finalNorm : this.layers[layer][key];
    this.#f32(ptr, this.spec.hidden).set(data);
  }

  /**
   * Rows [rowOffset, rowOffset + data.length / cols) of a matrix: key qkv | o | gu | down (per
   * layer) or lm. data: Float32Array for f32 and int8 (quantized here), Uint16Array bf16 bits.
   * @param {MatrixKey} key
   * @param {number} layer
   * @param {number} rowOffset
   * @param {Float32Array | Uint16Array} data
   */
  setMatrix(key, layer, rowOffset, data) {
    const m = key === "lm" ? this.lm : this.layers[layer][key];
    const K = m.cols;
    const rows = K === 0 ? 0 : data.length / K;
    if (rows === 0) return;
    if (rowOffset + rows > m.rows || rows !== Math.floor(rows)) {
      throw new Error(`setMatrix ${key}[${layer}]: ${data.length} values do not fit rows of ${K}`);
    }
    const f = this.spec.weightFormat;
    if (f === "f32") this.#f32(m.ptr + rowOffset * K * 4, rows * K).set(data);
    else if (f === "bf16")
      new Uint16Array(this.memory.buffer, m.ptr + rowOffset * K * 2, rows * K).set(data);
    else {
      for (let r = 0; r < rows; r += QUANT_ROWS) {
        const n = Math.min(QUANT_ROWS, rows - r);
        this.#f32(this.staging, n * K).set(data.subarray(r * K, (r + n) * K));
        const row = rowOffset + r;
        this.k.quantize_i8(
          this.staging,
          n,
          K,
          m.ptr + row * K,
          m.scales + ((row * K) / I8_BLOCK) * 4,
        );
      }
    }
  }

  /**
   * Rotary frequencies (hd / 2, f64) and yarn's attention scaling, from core/model/rope.ts.
   * @param {Float64Array} invFreq
   * @param {number} scaling
   */
  setRope(invFreq, scaling) {
    new Float64Array(this.memory.buffer, this.invFreq, this.spec.headDim / 2).set(invFreq);
    this.scaling = scaling;
  }

  /** The input rows (maxBatch, H): write the embeddings of the next micro-batch here. */
  input() {
    return this.#f32(this.x, this.spec.maxBatch * this.spec.hidden);
  }

  /** The step region (stepLayout) in this shard's memory: write a micro-batch's step here. */
  step() {
    return new Int32Array(this.memory.buffer, this.stepPtr, this.layout.ints);
  }

  /**
   * Make the pool hold blocks 0 .. n - 1 (memory grows; nothing moves).
   * @param {number} n
   */
  ensureBlocks(n) {
    this.#ensureBytes(this.kvBase + n * this.blockBytes);
  }

  /**
   * This layer's K or V in block 0 (block b's are b * blockBytes further).
   * @param {number} layer
   * @param {0 | 1} which  K | V
   */
  #kvPtr(layer, which) {
    const { kvHeads: nkv, headDim: hd } = this.spec;
    return this.kvBase + (2 * layer + which) * nkv * this.bs * hd * this.kvEb;
  }

  /** Start the micro-batch in step() (its rows are already in input()). */
  begin() {
    const L = this.layout;
    // Grow first: growing detaches every view of the memory.
    this.ensureBlocks(this.step()[2]);
    const step = this.step();
    this.T = step[0];
    this.segments = [];
    for (let i = 0; i < step[1]; i++) {
      const at = L.segments + 4 * i;
      const table = this.stepPtr + step[at + 3] * 4;
      this.segments.push({
        row0: step[at],
        rows: step[at + 1],
        p0: step[at + 2],
        table,
        shared: 0,
      });
    }
    this.#groupPrefixes();
    const t = this.clock();
    const positions = this.stepPtr + L.positions * 4;
    const half = this.spec.headDim / 2;
    this.k.rope_table(this.invFreq, half, positions, this.T, this.scaling, this.cos, this.sin);
    this.lap(ROPE, t);
  }

  /**
   * Find the segments that share prefix blocks (prefix-groups.mjs) and list each group's query
   * rows. Every shard sees the same step, so every shard groups alike.
   */
  #groupPrefixes() {
    this.groups = [];
    if (this.segments.length < 2) return;
    const buf = this.memory.buffer;
    const bs = this.bs;
    const tables = this.segments.map(
      (s) => new Int32Array(buf, s.table, Math.ceil((s.p0 + s.rows) / bs)),
    );
    const found = prefixGroups(
      tables,
      this.segments.map((s) => s.p0),
      bs,
    );
    const rows = new Int32Array(buf, this.groupRows, this.spec.maxBatch);
    let n = 0;
    for (const { members, blocks } of found) {
      const first = n;
      for (const i of members) {
        const s = this.segments[i];
        s.shared = blocks;
        for (let r = 0; r < s.rows; r++) rows[n++] = s.row0 + r;
      }
      const table = this.segments[members[0]].table;
      if (this.profile !== null) this.profile[PROFILE_PREFIX_ROWS] += n - first;
      this.groups.push({
        rows: this.groupRows + first * 4,
        count: n - first,
        keys: blocks * bs,
        table,
      });
    }
  }

  /**
   * @param {number} x
   * @param {number} T
   * @param {Matrix} m
   * @param {number} y
   * @param {boolean} acc
   */
  #matmul(x, T, m, y, acc) {
    const f = this.spec.weightFormat;
    if (m.rows === 0) return;
    if (f === "f32") this.k.matmul_f32(x, T, m.cols, m.ptr, m.rows, y, acc ? 1 : 0);
    else if (f === "bf16") this.k.matmul_bf16(x, T, m.cols, m.ptr, m.rows, y, acc ? 1 : 0);
    else this.k.matmul_i8(x, T, m.cols, m.ptr, m.scales, m.rows, y, acc ? 1 : 0);
  }

  /**
   * Attention half of layer l. reduce === null: one shard, the output projection is added to the
   * residual. Otherwise the partial goes to `part` and reduce(part) must add every shard's partial.
   * @param {number} l
   * @param {Reduce | null} reduce
   */
  attention(l, reduce) {
    const { hidden: H, headDim: hd, heads: nh, kvHeads: nkv, eps } = this.spec;
    const w = this.layers[l];
    const T = this.T;
    const k = this.k;
    const bf16 = this.kvEb === 2 ? 1 : 0;
    let t = this.clock();
    k.rmsnorm(this.x, w.attnNorm, this.xn, T, H, eps);
    t = this.lap(NORM, t);
    if (nkv > 0) {
      this.#matmul(this.xn, T, w.qkv, this.qkvBuf, false);
      t = this.lap(GEMM, t);
      const kOff = this.qkvBuf + nh * hd * 4;
      const vOff = kOff + nkv * hd * 4;
      k.rope_apply(this.qkvBuf, this.nqkv, T, nh, hd, this.cos, this.sin);
      k.rope_apply(kOff, this.nqkv, T, nkv, hd, this.cos, this.sin);
      t = this.lap(ROPE, t);
      const kc = this.#kvPtr(l, 0);
      const vc = this.#kvPtr(l, 1);
      const slots = this.stepPtr + this.layout.slots * 4;
      const { bs, blockBytes: bb } = this;
      k.kv_store(kOff, this.nqkv, T, nkv, hd, kc, slots, bs, bb, bf16, 1);
      k.kv_store(vOff, this.nqkv, T, nkv, hd, vc, slots, bs, bb, bf16, 0);
      t = this.lap(KV_STORE, t);
      const scale = 1 / Math.sqrt(hd);
      const st = this.softmaxState;
      // Shared prefixes first: every member's rows over the group's shared blocks in one pass (no
      // mask: the blocks lie below every member's p0), leaving O unnormalized in att and m, l in
      // the state.
      for (const g of this.groups) {
        k.attention_state(
          this.qkvBuf,
          this.nqkv,
          this.att,
          nh * hd,
          g.rows,
          g.count,
          g.keys,
          0,
          g.keys,
          nh,
          nkv,
          hd,
          kc,
          vc,
          g.table,
          bs,
          bb,
          bf16,
          scale,
          this.scratch,
          st,
          0,
          1,
        );
      }
      // Per sequence: its rows attend over its own table (causal from its p0); a group's member
      // resumes from the group pass's state, over the blocks after the shared ones.
      for (const s of this.segments) {
        k.attention_state(
          this.qkvBuf + s.row0 * this.nqkv * 4,
          this.nqkv,
          this.att + s.row0 * nh * hd * 4,
          nh * hd,
          0,
          s.rows,
          s.p0,
          s.shared * bs,
          s.p0 + s.rows,
          nh,
          nkv,
          hd,
          kc,
          vc,
          s.table,
          bs,
          bb,
          bf16,
          scale,
          this.scratch,
          st + s.row0 * nh * 8,
          s.shared > 0 ? 1 : 0,
          0,
        );
      }
      this.lap(ATTENTION, t);
    }
    this.#project(w.o, this.att, reduce);
  }

  /**
   * FFN half of layer l (SwiGLU), same reduce contract as attention().
   * @param {number} l
   * @param {Reduce | null} reduce
   */
  ffn(l, reduce) {
    const { hidden: H, ffn: F, eps } = this.spec;
    const w = this.layers[l];
    const T = this.T;
    let t = this.clock();
    this.k.rmsnorm(this.x, w.ffnNorm, this.xn, T, H, eps);
    t = this.lap(NORM, t);
    if (F > 0) {
      this.#matmul(this.xn, T, w.gu, this.guBuf, false);
      t = this.lap(GEMM, t);
      this.k.swiglu(this.guBuf, T, F, this.act);
      this.lap(ELEMENTWISE, t);
    }
    this.#project(w.down, this.act, reduce);
  }

  /**
   * @param {Matrix} m
   * @param {number} input
   * @param {Reduce | null} reduce
   */
  #project(m, input, reduce) {
    const T = this.T;
    const t = this.clock();
    if (reduce === null) {
      if (m.cols > 0) this.#matmul(input, T, m, this.x, true);
      this.lap(GEMM, t);
      return;
    }
    if (m.cols > 0) this.#matmul(input, T, m, this.part, false);
    else this.#f32(this.part, T * this.spec.hidden).fill(0);
    this.lap(GEMM, t);
    reduce(this.#f32(this.part, T * this.spec.hidden));
  }

  /**
   * Add `partial` (T, H) into the residual: the reduce step, in the caller's fixed shard order.
   * @param {Float32Array} partial
   */
  addToResidual(partial) {
    const n = this.T * this.spec.hidden;
    this.#f32(this.part, n).set(partial.subarray(0, n));
    this.k.add_into(this.x, this.part, n);
  }

  /**
   * Final norm of the given rows of the micro-batch (at most LOGIT_ROWS) and this shard's logits
   * for them, (rows.length, V local) in one lm_head pass; a view.
   * @param {ArrayLike<number>} rows
   */
  logits(rows) {
    const { hidden: H, eps } = this.spec;
    const n = rows.length;
    if (n > LOGIT_ROWS) throw new Error(`logits of ${n} rows: at most ${LOGIT_ROWS} per call`);
    const t = this.clock();
    for (let i = 0; i < n; i++) {
      this.k.rmsnorm(this.x + rows[i] * H * 4, this.finalNorm, this.xn + i * H * 4, 1, H, eps);
    }
    this.#matmul(this.xn, n, this.lm, this.logitsBuf, false);
    this.lap(LOGITS, t);
    return this.#f32(this.logitsBuf, n * this.spec.vocab);
  }

  /**
   * KV of positions [start, end) of the sequence whose blocks are `table`, for this shard's heads,
   * in the cache dtype: for each layer K (nkv, n, hd) then V (nkv, n, hd). A copy.
   * @param {Int32Array} table
   * @param {number} start
   * @param {number} end
   * @returns {Uint8Array}
   */
  exportKv(table, start, end) {
    const { layers: L, kvHeads: nkv, headDim: hd } = this.spec;
    const out = new Uint8Array(2 * L * nkv * (end - start) * hd * this.kvEb);
    this.#ensureTable(table, end);
    this.#copyKv(table, start, end - start, out, false);
    return out;
  }

  /**
   * Write positions [start, start + n) of the sequence whose blocks are `table` from bytes in
   * exportKv's layout and the cache dtype.
   * @param {Uint8Array} bytes
   * @param {Int32Array} table
   * @param {number} start
   * @param {number} n
   */
  importKv(bytes, table, start, n) {
    this.#ensureTable(table, start + n);
    this.#copyKv(table, start, n, bytes, true);
  }

  /**
   * Positions [start, start + n) between the pool (through `table`) and `bytes` in exportKv's
   * layout: into the pool when `toPool`, out of it otherwise. V runs are copied as they are; K
   * runs go through the attention scratch (free outside a forward), converted between K's panels
   * (wasm/assembly/kv.ts) and position-major rows by kv_panel_rows, as many rows a time as fit.
   * @param {Int32Array} table
   * @param {number} start
   * @param {number} n
   * @param {Uint8Array} bytes
   * @param {boolean} toPool
   */
  #copyKv(table, start, n, bytes, toPool) {
    const mem = new Uint8Array(this.memory.buffer);
    const hd = this.spec.headDim;
    const rowBytes = hd * this.kvEb;
    const most = Math.max(1, Math.floor(this.scratchBytes / rowBytes));
    const bf16 = this.kvEb === 2 ? 1 : 0;
    const stage = this.scratch;
    for (const { ptr, at, bytes: len, kRow } of this.#kvRuns(table, start, n)) {
      if (kRow < 0) {
        if (toPool) mem.set(bytes.subarray(at, at + len), ptr);
        else bytes.set(mem.subarray(ptr, ptr + len), at);
        continue;
      }
      for (let off = 0; off < len; ) {
        const m = Math.min(most * rowBytes, len - off);
        const row = kRow + off / rowBytes;
        if (toPool) mem.set(bytes.subarray(at + off, at + off + m), stage);
        this.k.kv_panel_rows(ptr, row, m / rowBytes, hd, bf16, stage, toPool ? 1 : 0);
        if (!toPool) bytes.set(mem.subarray(stage, stage + m), at + off);
        off += m;
      }
    }
  }

  /**
   * For each pair (from, to) in order, block `to` becomes a copy of block `from`.
   * @param {Int32Array} pairs  from0, to0, from1, to1, ...
   */
  copyBlocks(pairs) {
    let most = 0;
    for (const b of pairs) most = Math.max(most, b + 1);
    this.ensureBlocks(most);
    const mem = new Uint8Array(this.memory.buffer);
    const bb = this.blockBytes;
    for (let i = 0; i < pairs.length; i += 2) {
      const from = this.kvBase + pairs[i] * bb;
      mem.copyWithin(this.kvBase + pairs[i + 1] * bb, from, from + bb);
    }
  }

  /**
   * @param {Int32Array} table
   * @param {number} end
   */
  #ensureTable(table, end) {
    let most = 0;
    for (let b = 0; b < Math.ceil(end / this.bs); b++) most = Math.max(most, table[b] + 1);
    this.ensureBlocks(most);
  }

  /**
   * exportKv's layout walked run by run: for each layer, K then V, each local KV head, the runs of
   * positions [start, start + n) that lie in one block: `bytes` at `at` in the exported bytes; in
   * memory, a V run's rows are `bytes` at `ptr`, a K run's are rows kRow .. of the head's block at
   * `ptr` (in panels: #copyKv), kRow -1 for V.
   * @param {Int32Array} table
   * @param {number} start
   * @param {number} n
   * @returns {Generator<{ ptr: number, at: number, bytes: number, kRow: number }>}
   */
  *#kvRuns(table, start, n) {
    const { layers: L, kvHeads: nkv } = this.spec;
    const rowBytes = this.spec.headDim * this.kvEb;
    const bs = this.bs;
    let at = 0;
    for (let l = 0; l < L; l++) {
      for (const which of /** @type {const} */ ([0, 1])) {
        for (let h = 0; h < nkv; h++) {
          const head = this.#kvPtr(l, which) + h * bs * rowBytes;
          for (let p = start; p < start + n; ) {
            const rows = Math.min(bs - (p % bs), start + n - p);
            const block = head + table[Math.floor(p / bs)] * this.blockBytes;
            const bytes = rows * rowBytes;
            if (which === 0) yield { ptr: block, at, bytes, kRow: p % bs };
            else yield { ptr: block + (p % bs) * rowBytes, at, bytes, kRow: -1 };
            at += bytes;
            p += rows;
          }
        }
      }
    }
  }

  /** Memory this shard's instance has grown to. */
  get memoryBytes() {
    return this.memory.buffer.byteLength;
  }
}
