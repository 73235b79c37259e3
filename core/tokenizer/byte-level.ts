// GPT-2 byte-level alphabet: tokenizer.json spells every token as a string of 256 printable
// stand-in characters, one per byte. We convert tokens back to raw bytes once (at compile time) and
// work on bytes from then on, so encode never builds the stand-in strings.

/** byte -> stand-in code point, as in GPT-2's `bytes_to_unicode`. */
export const BYTE_TO_CHAR: readonly number[] = (() => {
  const table = new Array<number>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable =
      (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = printable ? b : 256 + extra++;
  }
  return table;
})();

const CHAR_TO_BYTE: ReadonlyMap<number, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

/** Raw bytes of a byte-level token string, or undefined if it holds a character outside the alphabet. */
export function byteLevelToBytes(token: string): Uint8Array | undefined {
  const out = new Uint8Array(token.length);
  let n = 0;
  for (const ch of token) {
    const b = CHAR_TO_BYTE.get(ch.codePointAt(0)!);
    if (b === undefined) return undefined;
    out[n++] = b;
  }
  return out.subarray(0, n);
}
