// Byte-pair merging of one pre-token, with the reference's rule: repeatedly join the adjacent pair
// with the lowest merge rank, leftmost first, until no pair has a rank. (tiktoken ranks pairs by
// the merged token's id instead; with Llama 3's 280k merges for 128k tokens the two can differ, so
// we use tokenizer.json's merge ranks.)
//
// Short words (almost all) use an array scan with each pair's rank cached and only the two
// neighbours of a merge re-ranked: O(n^2) in the worst case but no allocation. Words longer than
// LONG_WORD bytes use a heap over a linked list, O(n log n), so a megabyte-long run of one letter
// cannot stall the edge.

import { hashPair, lookupToken, type Vocabulary } from "./vocabulary.ts";

const LONG_WORD = 256;
const NO_RANK = 0x7fffffff;

/** Growable list of token ids. */
export class IdList {
  ids = new Int32Array(1024);
  length = 0;

  push(id: number): void {
    if (this.length === this.ids.length) this.grow(1);
    this.ids[this.length++] = id;
  }

  pushAll(src: Int32Array): void {
    if (this.length + src.length > this.ids.length) this.grow(src.length);
    this.ids.set(src, this.length);
    this.length += src.length;
  }

  private grow(extra: number): void {
    const next = new Int32Array(Math.max(this.ids.length * 2, this.length + extra));
    next.set(this.ids.subarray(0, this.length));
    this.ids = next;
  }

  /** A copy of the ids so far. */
  take(): Int32Array {
    return this.ids.slice(0, this.length);
  }
}

export class BpeModel {
  /** id of each single byte's token. */
  readonly byteIds = new Int32Array(256);
  private readonly mmask: number;
  // Scratch for the short-word path: (n) symbol ids and (n) rank of the pair starting there.
  private sym = new Int32Array(LONG_WORD);
  private rank = new Int32Array(LONG_WORD);

  constructor(private readonly v: Vocabulary) {
    this.mmask = v.mergeTable.length - 1;
    const one = new Uint8Array(1);
    for (let b = 0; b < 256; b++) {
      one[0] = b;
      const id = this.lookupIn(one, 0, 1);
      if (id < 0) throw new Error(`vocabulary has no token for byte ${b}`);
      this.byteIds[b] = id;
    }
  }

  /** Model-vocabulary id whose bytes are bytes[start, end), or -1. */
  lookupIn(bytes: Uint8Array, start: number, end: number): number {
    return lookupToken(this.v, bytes, start, end);
  }

  /** Merge rank of the pair (a, b), or NO_RANK. */
  pairRank(a: number, b: number): number {
    const { mergeTable, mergeLeft, mergeRight } = this.v;
    let h = hashPair(a, b) & this.mmask;
    for (;;) {
      const e = mergeTable[h];
      if (e === 0) return NO_RANK;
      const r = e - 1;
      if (mergeLeft[r] === a && mergeRight[r] === b) return r;
      h = (h + 1) & this.mmask;
    }
  }

  /** Token ids of the pre-token bytes[0, n), appended to `out`. */
  encodeWord(bytes: Uint8Array, n: number, out: IdList): void {
    if (n === 1) {
      out.push(this.byteIds[bytes[0]]);
      return;
    }
    if (this.v.ignoreMerges) {
      const id = this.lookupIn(bytes, 0, n);
      if (id >= 0) {
        out.push(id);
        return;
      }
    }
    if (n > LONG_WORD) {
      this.mergeLong(bytes, n, out);
      return;
    }
    const { sym, rank } = this;
    const result = this.v.mergeResult;
    for (let i = 0; i < n; i++) sym[i] = this.byteIds[bytes[i]];
    for (let i = 0; i + 1 < n; i++) rank[i] = this.pairRank(sym[i], sym[i + 1]);
    let m = n;
    for (;;) {
      let best = NO_RANK;
      let at = -1;
      for (let i = 0; i + 1 < m; i++) {
        if (rank[i] < best) {
          best = rank[i];
          at = i;
        }
      }
      if (at < 0) break;
      sym[at] = result[best];
      m--;
      for (let i = at + 1; i < m; i++) {
        sym[i] = sym[i + 1];
        rank[i] = rank[i + 1];
      }
      if (at > 0) rank[at - 1] = this.pairRank(sym[at - 1], sym[at]);
      if (at + 1 < m) rank[at] = this.pairRank(sym[at], sym[at + 1]);
    }
    for (let i = 0; i < m; i++) out.push(sym[i]);
  }

  /** The same merge order with a binary heap of (rank, position) over a linked list. */
  private mergeLong(bytes: Uint8Array, n: number, out: IdList): void {
    const result = this.v.mergeResult;
    const sym = new Int32Array(n); // (n) id of the symbol starting at byte i, -1 once merged away
    const next = new Int32Array(n); // (n) index of the next live symbol, n at the end
    const prev = new Int32Array(n); // (n) index of the previous live symbol, -1 at the start
    for (let i = 0; i < n; i++) {
      sym[i] = this.byteIds[bytes[i]];
      next[i] = i + 1;
      prev[i] = i - 1;
    }
    // Heap keys: rank * 2^32 + position, exact in a double (rank < 2^21, position < 2^32).
    const heap = new MinHeap(n);
    const pushPair = (i: number) => {
      const j = next[i];
      if (j >= n) return;
      const r = this.pairRank(sym[i], sym[j]);
      if (r !== NO_RANK) heap.push(r * 4294967296 + i);
    };
    for (let i = 0; i + 1 < n; i++) pushPair(i);
    while (heap.size > 0) {
      const key = heap.pop();
      const r = Math.floor(key / 4294967296);
      const i = key - r * 4294967296;
      const j = next[i];
      // Stale entry: the left symbol merged away or either side changed since it was pushed.
      if (sym[i] < 0 || j >= n || this.pairRank(sym[i], sym[j]) !== r) continue;
      sym[i] = result[r];
      sym[j] = -1;
      next[i] = next[j];
      if (next[j] < n) prev[next[j]] = i;
      if (prev[i] >= 0) pushPair(prev[i]);
      pushPair(i);
    }
    for (let i = 0; i < n; i = next[i]) out.push(sym[i]);
  }
}

class MinHeap {
  private a: Float64Array;
  size = 0;

  constructor(capacity: number) {
    this.a = new Float64Array(Math.max(16, capacity));
  }

  push(x: number): void {
    if (this.size === this.a.length) {
      const b = new Float64Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    const a = this.a;
    let i = this.size++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p] <= x) break;
      a[i] = a[p];
      i = p;
    }
    a[i] = x;
  }

  pop(): number {
    const a = this.a;
    const top = a[0];
    const x = a[--this.size];
    let i = 0;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= this.size) break;
      if (c + 1 < this.size && a[c + 1] < a[c]) c++;
      if (a[c] >= x) break;
      a[i] = a[c];
      i = c;
    }
    a[i] = x;
    return top;
  }
}
