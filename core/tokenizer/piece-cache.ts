// Pre-token -> ids cache keyed by the characters in place: the lookup hashes text[start, end)
// straight from the input string and compares against a character pool, so a hit allocates
// nothing. (A Map<string, ...> keyed by `text.slice()` spent most of its time creating and hashing
// the slice.) When the table or a pool fills, it is cleared:
// no eviction bookkeeping on the hot path, and memory stays fixed.

// About 5 MB in all, allocated once per Tokenizer.
const SLOTS = 1 << 16; // open addressing, cleared at 3/4 full
const CHAR_POOL = 1 << 20; // UTF-16 code units of cached keys
const ID_POOL = 1 << 19; // cached token ids

export class PieceCache {
  // (SLOTS) per slot: key start in chars, key length (0 = empty), ids start, ids count, hash
  private readonly keyStart = new Int32Array(SLOTS);
  private readonly keyLength = new Int32Array(SLOTS);
  private readonly idStart = new Int32Array(SLOTS);
  private readonly idCount = new Int32Array(SLOTS);
  private readonly hashes = new Int32Array(SLOTS);
  readonly chars = new Uint16Array(CHAR_POOL);
  readonly ids = new Int32Array(ID_POOL);
  private used = 0;
  private charsUsed = 0;
  private idsUsed = 0;

  static hash(text: string, start: number, end: number): number {
    let h = 0x811c9dc5;
    for (let i = start; i < end; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
    return h | 0;
  }

  /** Slot of text[start, end) with hash `h`, or -1. Its ids are ids[idStartOf(slot), + idCountOf(slot)). */
  find(text: string, start: number, end: number, h: number): number {
    const n = end - start;
    let s = h & (SLOTS - 1);
    for (;;) {
      const len = this.keyLength[s];
      if (len === 0) return -1;
      if (len === n && this.hashes[s] === h) {
        const k = this.keyStart[s];
        let i = 0;
        while (i < n && this.chars[k + i] === text.charCodeAt(start + i)) i++;
        if (i === n) return s;
      }
      s = (s + 1) & (SLOTS - 1);
    }
  }

  idStartOf(slot: number): number {
    return this.idStart[slot];
  }

  idCountOf(slot: number): number {
    return this.idCount[slot];
  }

  /** Remember text[start, end) -> ids[0, count). Pieces too large for the pools are not cached. */
  insert(
    text: string,
    start: number,
    end: number,
    h: number,
    ids: Int32Array,
    count: number,
  ): void {
    const n = end - start;
    if (n > 4096 || count > 4096) return;
    if (
      this.used >= (SLOTS * 3) / 4 ||
      this.charsUsed + n > CHAR_POOL ||
      this.idsUsed + count > ID_POOL
    ) {
      this.keyLength.fill(0);
      this.used = this.charsUsed = this.idsUsed = 0;
    }
    let s = h & (SLOTS - 1);
    while (this.keyLength[s] !== 0) s = (s + 1) & (SLOTS - 1);
    for (let i = 0; i < n; i++) this.chars[this.charsUsed + i] = text.charCodeAt(start + i);
    this.ids.set(ids.subarray(0, count), this.idsUsed);
    this.keyStart[s] = this.charsUsed;
    this.keyLength[s] = n;
    this.idStart[s] = this.idsUsed;
    this.idCount[s] = count;
    this.hashes[s] = h;
    this.used++;
    this.charsUsed += n;
    this.idsUsed += count;
  }
}
