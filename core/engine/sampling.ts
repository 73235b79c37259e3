// Token sampling: penalties, temperature, min-p, top-k, top-p, a seeded RNG, and logprobs.
//
// Semantics follow vLLM (which follows OpenAI for the penalties), in vLLM's order:
//   1. penalties on the raw logits:
//        repetition (HF/vLLM): for every token seen in the prompt OR the output,
//          logit > 0 ? logit / r : logit * r
//        frequency and presence (OpenAI): for every token seen in the OUTPUT only,
//          logit -= count * frequency + (count > 0) * presence
//   2. temperature 0 (or top-k 1) is greedy: argmax of the penalised logits, ties to the lowest id.
//      So is a temperature below 1e-5 (vLLM's epsilon): dividing by it overflows the logits.
//   3. logits / temperature, then
//        min-p:  keep p >= minP * p_max
//        top-k:  keep the k most likely (ties with the k-th are kept, as vLLM and HF do)
//        top-p:  keep the minimal nucleus: a token is kept when the mass strictly above it is < p
//      each on the survivors of the previous one, renormalised.
//   4. draw from what is left with the RNG.
// Logprobs are vLLM's default "raw" logprobs: log-softmax of the model's logits before penalties
// and temperature, so they describe the model, not the sampler settings.
//
// Performance notes: the vocabulary is 128K, so sorting it every step (O(V log V) per token) is
// avoided. The survivors of min-p / top-k / top-p always form a "top set" {i : p_i >= t}, so we
// collect such a set for a falling threshold t until it provably contains the survivors, and sort
// only that (usually a few hundred ids).

import { assert, InvalidInputError } from "../errors.ts";

export interface SamplingOptions {
  /** Softmax temperature; 0 = greedy. Default 1. */
  temperature?: number;
  /** Keep the k most likely tokens; 0 or absent = off. */
  topK?: number;
  /** Nucleus mass in (0, 1]; 1 or absent = off. */
  topP?: number;
  /** Keep tokens with p >= minP * p_max; 0 or absent = off. */
  minP?: number;
  /** > 0; 1 or absent = off. Applies to prompt and output tokens. */
  repetitionPenalty?: number;
  /** OpenAI presence penalty in [-2, 2]; output tokens only. */
  presencePenalty?: number;
  /** OpenAI frequency penalty in [-2, 2]; output tokens only. */
  frequencyPenalty?: number;
  /** Same seed, same prompt, same runtime: same tokens. Absent: a random seed. */
  seed?: number;
  /** Top-N alternatives to report per token (0 = only the chosen token's logprob). */
  logprobs?: number;
}

/** Uniform draws in [0, 1). Injectable so tests and replays control randomness. */
export type Rng = () => number;

export interface TokenLogprob {
  id: number;
  logprob: number;
}

export interface SampledToken {
  id: number;
  /** Raw logprob of the chosen token (present when logprobs were requested). */
  logprob?: number;
  /** The N most likely tokens by raw logprob, most likely first. */
  top?: TokenLogprob[];
}

/** Temperatures below this are greedy (vLLM's _SAMPLING_EPS): their limit, and l / T overflows. */
export const GREEDY_BELOW = 1e-5;

/** Most alternatives a caller may ask for (OpenAI allows 20 on chat; vLLM defaults to 20). */
export const MAX_LOGPROBS = 20;

/** Throws InvalidInputError naming the first option out of range. */
export function validateSamplingOptions(o: SamplingOptions): void {
  const check = (ok: boolean, what: string) => {
    if (!ok) throw new InvalidInputError(what);
  };
  const finite = (v: number | undefined) => v === undefined || Number.isFinite(v);
  check(finite(o.temperature) && (o.temperature ?? 1) >= 0, "temperature must be >= 0");
  check(
    o.topK === undefined || (Number.isInteger(o.topK) && o.topK >= 0),
    "top_k must be an integer >= 0 (0 = off)",
  );
  check(finite(o.topP) && (o.topP ?? 1) > 0 && (o.topP ?? 1) <= 1, "top_p must be in (0, 1]");
  check(finite(o.minP) && (o.minP ?? 0) >= 0 && (o.minP ?? 0) <= 1, "min_p must be in [0, 1]");
  check(
    finite(o.repetitionPenalty) && (o.repetitionPenalty ?? 1) > 0,
    "repetition_penalty must be > 0",
  );
  for (const [name, v] of [
    ["presence_penalty", o.presencePenalty],
    ["frequency_penalty", o.frequencyPenalty],
  ] as const) {
    check(finite(v) && Math.abs(v ?? 0) <= 2, `${name} must be in [-2, 2]`);
  }
  check(o.seed === undefined || Number.isSafeInteger(o.seed), "seed must be an integer");
  check(
    o.logprobs === undefined ||
      (Number.isInteger(o.logprobs) && o.logprobs >= 0 && o.logprobs <= MAX_LOGPROBS),
    `logprobs must be an integer in [0, ${MAX_LOGPROBS}]`,
  );
}

/**
 * xoshiro128** seeded through splitmix32 from both 32-bit halves of the seed. Each draw uses two
 * outputs for 53 bits, so u * Z never lands on a value the f64 sums cannot reach.
 */
export function createRng(seed: number): Rng {
  let sm = (seed >>> 0) ^ Math.imul(Math.floor(seed / 2 ** 32) >>> 0, 0x9e3779b9);
  const splitmix32 = () => {
    sm = (sm + 0x9e3779b9) | 0;
    let z = sm;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = splitmix32();
  let b = splitmix32();
  let c = splitmix32();
  let d = splitmix32();
  const next = () => {
    const result = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d, 11);
    return result;
  };
  return () => ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** A seed from the platform's CSPRNG, for requests that give none. */
export function randomSeed(): number {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return words[0] * 2 ** 21 + (words[1] >>> 11);
}

/**
 * The largest value, NaN ignored (-Infinity when there is none): four interleaved lanes, merged at
 * the end, which V8 runs in about half the time of one running maximum.
 */
export function maxOf(values: Float32Array): number {
  const n = values.length;
  let m0 = Number.NEGATIVE_INFINITY;
  let m1 = m0;
  let m2 = m0;
  let m3 = m0;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const a = values[i];
    const b = values[i + 1];
    const c = values[i + 2];
    const d = values[i + 3];
    if (a > m0) m0 = a;
    if (b > m1) m1 = b;
    if (c > m2) m2 = c;
    if (d > m3) m3 = d;
  }
  for (; i < n; i++) if (values[i] > m0) m0 = values[i];
  return Math.max(m0, m1, m2, m3);
}

/** log(sum(exp(logits))), computed in f64 around the max; NaN logits are left out. */
export function logSumExp(logits: Float32Array): number {
  const max = maxOf(logits);
  if (max === Number.NEGATIVE_INFINITY) return max;
  // NaN logits add nothing (the sampler never draws them).
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += expNeg(max - logits[i]);
  return max + Math.log(sum);
}

/** The n largest logits as logprobs (given their logSumExp), most likely first, ties to low id. */
export function topLogprobs(logits: Float32Array, n: number, lse: number): TokenLogprob[] {
  if (n <= 0) return [];
  const ids: number[] = [];
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i];
    if (ids.length === n && v <= logits[ids[n - 1]]) continue;
    let j = ids.length < n ? ids.length : n - 1;
    while (j > 0 && logits[ids[j - 1]] < v) {
      if (j < n) ids[j] = ids[j - 1];
      j--;
    }
    ids[j] = i;
  }
  return ids.map((id) => ({ id, logprob: logits[id] - lse }));
}

/**
 * Index of the largest value, ties to the lowest index; NaN is never the largest (a row of NaN
 * gives 0). Two interleaved running maxima, merged at the end: a 128K vocabulary's row in 0.16 ms,
 * against 0.20 for one and 0.24 for four (a one-off timing, not in the repository; a decode step
 * of 16 sequences samples 16 rows).
 */
export function argmax(values: Float32Array): number {
  const n = values.length;
  let v0 = Number.NEGATIVE_INFINITY;
  let v1 = v0;
  let b0 = 0;
  let b1 = 1;
  let i = 0;
  for (; i + 2 <= n; i += 2) {
    const x = values[i];
    const y = values[i + 1];
    if (x > v0) {
      v0 = x;
      b0 = i;
    }
    if (y > v1) {
      v1 = y;
      b1 = i + 1;
    }
  }
  if (i < n && values[i] > v0) {
    v0 = values[i];
    b0 = i;
  }
  if (v1 > v0 || (v1 === v0 && b1 < b0)) {
    v0 = v1;
    b0 = b1;
  }
  // Nothing above -Infinity (the lanes never moved): the first value that is a number.
  if (v0 === Number.NEGATIVE_INFINITY) {
    for (let k = 0; k < n; k++) if (!Number.isNaN(values[k])) return k;
    return 0;
  }
  return b0;
}

/** Token counts a sampler has seen: prompt presence for repetition, output counts for OpenAI's. */
export class PenaltyState {
  /** (vocab) 1 where the token occurs in the prompt. */
  readonly inPrompt: Uint8Array;
  /** (vocab) occurrences in the output so far. */
  readonly outputCounts: Int32Array;
  /** Distinct ids with inPrompt or outputCounts set, so penalties cost O(seen), not O(vocab). */
  readonly seen: number[] = [];

  constructor(vocabSize: number) {
    this.inPrompt = new Uint8Array(vocabSize);
    this.outputCounts = new Int32Array(vocabSize);
  }

  addPrompt(tokens: ArrayLike<number>): void {
    for (let i = 0; i < tokens.length; i++) {
      const id = tokens[i];
      if (id < 0 || id >= this.inPrompt.length) continue;
      if (!this.inPrompt[id] && this.outputCounts[id] === 0) this.seen.push(id);
      this.inPrompt[id] = 1;
    }
  }

  addOutput(id: number): void {
    if (!this.inPrompt[id] && this.outputCounts[id] === 0) this.seen.push(id);
    this.outputCounts[id]++;
  }
}

/** Applies repetition, frequency and presence penalties in place (see the header for formulas). */
export function applyPenalties(
  logits: Float32Array,
  state: PenaltyState,
  o: Pick<SamplingOptions, "repetitionPenalty" | "presencePenalty" | "frequencyPenalty">,
): void {
  const rep = o.repetitionPenalty ?? 1;
  const presence = o.presencePenalty ?? 0;
  const frequency = o.frequencyPenalty ?? 0;
  for (const id of state.seen) {
    let v = logits[id];
    if (rep !== 1) v = v > 0 ? v / rep : v * rep;
    const count = state.outputCounts[id];
    if (count > 0) v -= count * frequency + presence;
    logits[id] = v;
  }
}

/** Histogram resolution of `survivors`: buckets per nat of logit below the max. */
const BUCKETS_PER_NAT = 16;
/** Buckets; the last also holds everything further below (e < exp(-256): no weight at all). */
const BUCKETS = 256 * BUCKETS_PER_NAT;

/** exp(-b / 32) for b / 32 <= 80: expNeg's table. */
const EXP_TABLE = Float64Array.from({ length: 80 * 32 + 1 }, (_, b) => Math.exp(-b / 32));

/**
 * The weight exp(-d) of a logit d below the max (d >= 0), and 0 past d = 80 (2e-35: even 2^17 such
 * weights add nothing to a sum that holds the max's 1) or for NaN. The table's exp(-b / 32),
 * b = floor(32 d), times exp(-r) for r = d - b / 32 < 1/32 by its Taylor series to r^6 (relative
 * error below 1e-14 against Math.exp, measured over 10^6 values; Math.exp's own is about 1e-16).
 * A third of Math.exp's time in V8 here (0.53 against 1.52 ms for 128K values, a one-off timing),
 * and the sampler takes one per id.
 */
function expNeg(d: number): number {
  if (!(d <= 80)) return 0;
  const b = Math.floor(d * 32);
  const r = d - b * 0.03125; // b / 32, exact
  return (
    EXP_TABLE[b] *
    (1 - r * (1 - r * (1 / 2 - r * (1 / 6 - r * (1 / 24 - r * (1 / 120 - r / 720))))))
  );
}

/**
 * The ids that survive min-p, top-k and top-p on logits already divided by the temperature, with
 * their unnormalised weights exp(l - max). Order: every id clear of all three boundaries first (in
 * id order), then the ids near the boundary most likely first, ties to the lowest id. With no
 * filter on: every id in id order. Exported for tests; `Sampler` draws from it.
 *
 * How: one pass puts each id in a histogram bucket by (max - logit), with counts and masses; the
 * filters' boundaries are found on the histogram, and only the one bucket holding the boundary is
 * sorted. So a step costs O(vocab) plus a sort of one bucket, never a sort of the vocabulary.
 */
export function survivors(
  scaled: Float32Array,
  o: Pick<SamplingOptions, "topK" | "topP" | "minP">,
  scratch: SurvivorScratch = new SurvivorScratch(scaled.length),
): { ids: Int32Array; weights: Float64Array } {
  const topK = o.topK ?? 0;
  const topP = o.topP ?? 1;
  const minP = o.minP ?? 0;
  const V = scaled.length;
  assert(scratch.e.length === V, "scratch sized for this vocabulary");
  const max = maxOf(scaled);
  if (!Number.isFinite(max)) {
    // A +Infinity (a logit, or l / T past f32's range), or no number at all: the greedy limit.
    return { ids: Int32Array.of(argmax(scaled)), weights: Float64Array.of(1) };
  }
  // (vocab) exp(l - max) in f64, so the nucleus sums are exact enough for p close to 1. Below
  // exp(-80) = 2e-35 a weight is 0: even 2^17 of them add nothing to a sum that holds a 1.
  const e = scratch.e;
  if (topK > 0 && topK <= SELECT_TOP_K) {
    const selected = selectTopK(scaled, topK, max, scratch);
    if (selected) return cut(selected, 0, scaled, e, o, 0);
  }
  if (topK === 0 && topP >= 1 && minP === 0) {
    for (let i = 0; i < V; i++) {
      const d = max - scaled[i];
      e[i] = expNeg(d);
    }
    return { ids: scratch.identity(), weights: e };
  }
  const { bucket, counts, masses } = scratch;
  counts.fill(0);
  masses.fill(0);
  let massMinP = 0; // mass of the min-p survivors: top-p's normaliser when top-k does not cut
  for (let i = 0; i < V; i++) {
    let d = max - scaled[i];
    if (!(d >= 0)) d = Number.POSITIVE_INFINITY; // NaN: the last bucket, weight 0
    const b = Math.min(BUCKETS - 1, Math.floor(d * BUCKETS_PER_NAT));
    const w = (e[i] = expNeg(d));
    bucket[i] = b;
    counts[b]++;
    masses[b] += w;
    if (w >= minP) massMinP += w;
  }

  // The last bucket that can hold a survivor.
  let last = BUCKETS - 1;
  if (minP > 0) last = Math.min(last, Math.floor(-Math.log(minP) * BUCKETS_PER_NAT));
  if (topK > 0) {
    let n = 0;
    for (let b = 0; b <= last; b++) {
      n += counts[b];
      if (n >= topK) {
        last = b;
        break;
      }
    }
  } else if (topP < 1) {
    let m = 0;
    for (let b = 0; b <= last; b++) {
      m += masses[b];
      if (m >= topP * massMinP) {
        last = b;
        break;
      }
    }
  }

  // Ids clear of the boundary (all survive every filter, except top-p after top-k, which may cut
  // anywhere, so with top-k on everything is sorted), then the sorted boundary ids.
  const sortAll = topK > 0;
  let clearCount = 0;
  let edgeCount = counts[last];
  for (let b = 0; b < last; b++) {
    if (sortAll) edgeCount += counts[b];
    else clearCount += counts[b];
  }
  const ids = new Int32Array(clearCount + edgeCount);
  const edge = ids.subarray(clearCount);
  let c = 0;
  let k = 0;
  for (let i = 0; i < V; i++) {
    const b = bucket[i];
    if (b < last && !sortAll) ids[c++] = i;
    else if (b <= last) edge[k++] = i;
  }
  sortByLogit(scaled, edge);
  return cut(ids, clearCount, scaled, e, o, massMinP);
}

/**
 * Applies min-p, top-k and top-p to candidates `ids`: the first `clearCount` survive all three
 * (any order), the rest are sorted most likely first; `e` holds their weights exp(l - max).
 * `massMinP` is the mass of every min-p survivor (top-p's normaliser when top-k is off).
 */
function cut(
  ids: Int32Array,
  clearCount: number,
  scaled: Float32Array,
  e: Float64Array,
  o: Pick<SamplingOptions, "topK" | "topP" | "minP">,
  massMinP: number,
): { ids: Int32Array; weights: Float64Array } {
  const topK = o.topK ?? 0;
  const topP = o.topP ?? 1;
  const minP = o.minP ?? 0;
  if (minP > 0) {
    let n = clearCount;
    while (n < ids.length && e[ids[n]] >= minP) n++;
    ids = ids.subarray(0, Math.max(n, 1));
  }
  if (topK > 0 && ids.length > topK) {
    const kth = scaled[ids[topK - 1]];
    let n = topK;
    while (n < ids.length && scaled[ids[n]] === kth) n++;
    ids = ids.subarray(0, n);
  }
  if (topP < 1) {
    // With top-k on, `ids` is exactly the top-k (and min-p) survivors, renormalised over; without
    // it, the normaliser is the mass of all min-p survivors.
    let z = massMinP;
    if (topK > 0) {
      z = 0;
      for (const id of ids) z += e[id];
    }
    let before = 0;
    let n = 0;
    while (n < ids.length && before < topP * z) before += e[ids[n++]];
    ids = ids.subarray(0, Math.max(n, 1));
  }
  const weights = new Float64Array(ids.length);
  for (let i = 0; i < ids.length; i++) weights[i] = e[ids[i]];
  return { ids, weights };
}

/** Largest top-k that `survivors` selects with a heap instead of its histogram. */
const SELECT_TOP_K = 1024;

/**
 * Top-k by selection: the k-th largest logit (a min-heap of the k largest, which a logit enters
 * only when it beats the heap's least: a few hundred times per 128K ids for k = 40), then every id
 * at or above it (ties with the k-th kept), sorted, with their weights in `scratch.e`. One pass
 * with a compare per id and one to collect, against an exp, a bucket and two sums per id. Null
 * when no logit is a number.
 */
function selectTopK(
  scaled: Float32Array,
  k: number,
  max: number,
  scratch: SurvivorScratch,
): Int32Array | null {
  const heap = scratch.heap;
  const V = scaled.length;
  let n = 0;
  let i = 0;
  for (; i < V && n < k; i++) {
    // Push and sift up (NaN never enters).
    const v = scaled[i];
    if (Number.isNaN(v)) continue;
    let at = n++;
    while (at > 0) {
      const parent = (at - 1) >> 1;
      if (!(heap[parent] > v)) break;
      heap[at] = heap[parent];
      at = parent;
    }
    heap[at] = v;
  }
  let least = heap[0];
  // Logits in rising order enter the heap one after another (k log k each): past this many
  // entries the histogram is the faster way.
  let entries = 8 * k + 1024;
  for (; i < V; i++) {
    const v = scaled[i];
    if (!(v > least)) continue;
    if (--entries < 0) return null;
    // Replace the least and sift it down.
    let at = 0;
    for (;;) {
      let child = 2 * at + 1;
      if (child >= k) break;
      if (child + 1 < k && heap[child + 1] < heap[child]) child++;
      if (!(heap[child] < v)) break;
      heap[at] = heap[child];
      at = child;
    }
    heap[at] = v;
    least = heap[0];
  }
  if (n === 0) return null;
  // Ties with the k-th are kept; -Infinity ids (fewer than k others) weigh nothing and stay out.
  const kth = Math.max(heap[0], -Number.MAX_VALUE);
  const pick = scratch.picked;
  let m = 0;
  for (let j = 0; j < V; j++) if (scaled[j] >= kth) pick[m++] = j;
  const ids = pick.slice(0, m);
  for (const id of ids) scratch.e[id] = expNeg(max - scaled[id]);
  sortByLogit(scaled, ids);
  return ids;
}

/** Buffers `survivors` reuses across decode steps (a Sampler holds one). */
export class SurvivorScratch {
  /** (vocab) exp(l - max). */
  readonly e: Float64Array;
  /** (vocab) histogram bucket of each id. */
  readonly bucket: Uint16Array;
  /** (BUCKETS) ids and mass per bucket. */
  readonly counts = new Int32Array(BUCKETS);
  readonly masses = new Float64Array(BUCKETS);
  /** `selectTopK`'s heap and its (vocab) list of candidates. */
  readonly heap = new Float64Array(SELECT_TOP_K);
  readonly picked: Int32Array;
  #identity: Int32Array | null = null;

  constructor(vocabSize: number) {
    this.e = new Float64Array(vocabSize);
    this.bucket = new Uint16Array(vocabSize);
    this.picked = new Int32Array(vocabSize);
  }

  /** 0, 1, ..., vocab-1 (callers must not modify it). */
  identity(): Int32Array {
    if (!this.#identity) this.#identity = Int32Array.from(this.e.keys());
    return this.#identity;
  }
}

/**
 * Sorts `ids` in place most likely first, ties to the lowest id. Sorted as packed f64 keys (the
 * f32 logit's bits in descending order, then the id), since a native numeric sort of a
 * Float64Array is several times faster than sorting with a comparator.
 */
function sortByLogit(scaled: Float32Array, ids: Int32Array): void {
  const bits = new Uint32Array(scaled.buffer, scaled.byteOffset, scaled.length);
  const idSpace = 2 ** Math.max(1, Math.ceil(Math.log2(scaled.length)));
  if (idSpace > 2 ** 21) {
    throw new Error("assertion failed: vocabularies above 2^21 ids cannot be packed in sort keys");
  }
  const keys = new Float64Array(ids.length);
  for (let k = 0; k < ids.length; k++) {
    const b = bits[ids[k]];
    // The float's bits as an unsigned order (larger float, larger value), inverted.
    const ordered = b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0;
    keys[k] = (0xffffffff - ordered) * idSpace + ids[k];
  }
  keys.sort();
  for (let k = 0; k < ids.length; k++) ids[k] = keys[k] % idSpace;
}

/** Ids per partial sum of `drawTempered`'s weights: a draw scans one block, not the vocabulary. */
const DRAW_BLOCK = 1024;

/**
 * exp(-d) for d = (max - logit) / T: the weight of one logit; 0 below e^-80 (NaN and -Infinity
 * logits included) and below `minWeight`.
 */
function drawWeight(max: number, logit: number, invT: number, minWeight: number): number {
  const w = expNeg((max - logit) * invT);
  return w >= minWeight ? w : 0;
}

/**
 * Draws an id from softmax(logits / temperature) by its inverse CDF: the plain temperature draw,
 * which is the OpenAI API's default, and min-p alone (`minWeight`: only ids whose weight relative
 * to the max's is >= minWeight; 0 = all). Two passes over the vocabulary: the max, then every
 * weight (expNeg, not Math.exp) summed per block of DRAW_BLOCK ids; the draw walks the
 * block sums, then one block. Nothing per id is stored, and no weight is computed twice but the
 * chosen block's. `survivors` + `drawIndex` draw the same distribution with an array of weights
 * and two more passes.
 *
 * Why an inverse CDF over the weights themselves, and not a faster rejection draw (an id by a
 * step-function bound of its weight, a table lookup, then kept with probability weight / bound):
 * a batched step's logits differ from the same sequence's alone in the last bits (the GEMMs sum in
 * another order), and a step function turns such a difference into a jump of a whole step for the
 * ids it moves across a step, shifting everything after them in the CDF: measured under `serve`
 * with 16 sequences (issue 15's model), 6 of 16 seeded answers then differed from the same
 * question asked alone, against none with continuous weights.
 *
 * `blockSums` holds ceil(vocab / DRAW_BLOCK) values. Returns -1 where it cannot draw (a +Infinity
 * logit, none that is a number, or a temperature whose inverse overflows); the Sampler then takes
 * the greedy limit.
 */
export function drawTempered(
  logits: Float32Array,
  temperature: number,
  rng: Rng,
  blockSums: Float64Array,
  minWeight = 0,
): number {
  const V = logits.length;
  assert(blockSums.length === Math.ceil(V / DRAW_BLOCK), "blockSums sized for this vocabulary");
  const max = maxOf(logits);
  const invT = 1 / temperature;
  if (!Number.isFinite(max) || !Number.isFinite(invT)) return -1;

  // Per block, the sum of its weights; z, their sum in block order.
  let z = 0;
  for (let k = 0, start = 0; start < V; k++, start += DRAW_BLOCK) {
    const end = Math.min(V, start + DRAW_BLOCK);
    let sum = 0;
    for (let j = start; j < end; j++) sum += drawWeight(max, logits[j], invT, minWeight);
    blockSums[k] = sum;
    z += blockSums[k];
  }

  // The block, then the id in it. A target that rounding carries past the sums (subtracting the
  // weights one by one can end above what adding them gave) takes the last id with any weight.
  let target = rng() * z;
  let k = 0;
  while (k < blockSums.length - 1 && !(target < blockSums[k])) target -= blockSums[k++];
  if (blockSums[k] === 0) {
    // Carried past the last block with weight: that block's last id with any.
    while (k > 0 && blockSums[k] === 0) k--;
    target = Number.POSITIVE_INFINITY;
  }
  const end = Math.min(V, (k + 1) * DRAW_BLOCK);
  let last = -1;
  for (let id = k * DRAW_BLOCK; id < end; id++) {
    const w = drawWeight(max, logits[id], invT, minWeight);
    if (w === 0) continue;
    if (target < w) return id;
    target -= w;
    last = id;
  }
  return last;
}

/** Draws an index of `weights` (unnormalised, >= 0) with probability proportional to its weight. */
export function drawIndex(weights: ArrayLike<number>, u: number): number {
  let z = 0;
  for (let i = 0; i < weights.length; i++) z += weights[i];
  const target = u * z;
  let acc = 0;
  for (let i = 0; i < weights.length; i++) {
    acc += weights[i];
    if (target < acc) return i;
  }
  // u * z rounded up to z: the last token with any weight.
  for (let i = weights.length - 1; i > 0; i--) if (weights[i] > 0) return i;
  return 0;
}

/** One request's sampler: holds the penalty counts and the RNG across its decode steps. */
export class Sampler {
  readonly options: SamplingOptions;
  readonly #rng: Rng;
  readonly #penalties: PenaltyState;
  readonly #penalised: boolean;
  readonly #vocabSize: number;
  /** (vocab) penalised logits, logits / temperature, and the survivors' buffers: reused every step. */
  #penalisedLogits: Float32Array | null = null;
  #scaled: Float32Array | null = null;
  #scratch: SurvivorScratch | null = null;
  #blockSums: Float64Array | null = null;

  constructor(options: SamplingOptions, vocabSize: number, rng?: Rng) {
    validateSamplingOptions(options);
    this.options = options;
    this.#vocabSize = vocabSize;
    this.#rng = rng ?? createRng(options.seed ?? randomSeed());
    this.#penalties = new PenaltyState(vocabSize);
    this.#penalised =
      (options.repetitionPenalty ?? 1) !== 1 ||
      (options.presencePenalty ?? 0) !== 0 ||
      (options.frequencyPenalty ?? 0) !== 0;
  }

  /** The prompt's tokens, for the repetition penalty. */
  addPrompt(tokens: ArrayLike<number>): void {
    if (this.#penalised) this.#penalties.addPrompt(tokens);
  }

  /** Picks the next token from the last position's logits and records it for the penalties. */
  sample(logits: Float32Array): SampledToken {
    if (logits.length !== this.#vocabSize) {
      throw new Error(`assertion failed: logits length ${logits.length} != ${this.#vocabSize}`);
    }
    const o = this.options;
    let work = logits;
    if (this.#penalised) {
      work = this.#penalisedLogits ??= new Float32Array(logits.length);
      work.set(logits);
      applyPenalties(work, this.#penalties, o);
    }
    const temperature = o.temperature ?? 1;
    let id: number;
    if (temperature < GREEDY_BELOW || o.topK === 1) {
      id = argmax(work);
    } else if (!o.topK && (o.topP ?? 1) >= 1) {
      this.#blockSums ??= new Float64Array(Math.ceil(logits.length / DRAW_BLOCK));
      id = drawTempered(work, temperature, this.#rng, this.#blockSums, o.minP ?? 0);
      // A +Infinity logit, or none that is a number: the greedy limit.
      if (id < 0) id = argmax(work);
    } else {
      this.#scaled ??= new Float32Array(logits.length);
      this.#scratch ??= new SurvivorScratch(logits.length);
      const scaled = this.#scaled;
      for (let i = 0; i < scaled.length; i++) scaled[i] = work[i] / temperature;
      const { ids, weights } = survivors(scaled, o, this.#scratch);
      id = ids[drawIndex(weights, this.#rng())];
      // A +Infinity logit, l / T past f32's range, or no number at all (survivors then gives the
      // first +Infinity or the first id): the greedy limit, on the logits themselves.
      if (!Number.isFinite(scaled[id])) id = argmax(work);
    }
    if (this.#penalised) this.#penalties.addOutput(id);

    if (o.logprobs === undefined) return { id };
    const lse = logSumExp(logits);
    return { id, logprob: logits[id] - lse, top: topLogprobs(logits, o.logprobs, lse) };
  }
}
