// Character classes of the Llama 3 pre-tokenizer pattern: \p{L}, \p{N}, Unicode White_Space
// (split into \r\n and the rest) and everything else.
//
// Whitespace is Unicode's White_Space property, as in the reference's regex engine, not JavaScript's
// `\s` (which adds U+FEFF and drops U+0085). Letters and numbers come from the engine's Unicode
// tables through `\p{L}` / `\p{N}`, cached per code point on first sight so the cost is one RegExp
// test per distinct non-ASCII character.

export const CLASS_OTHER = 0;
export const CLASS_LETTER = 1;
export const CLASS_NUMBER = 2;
export const CLASS_SPACE = 3;
export const CLASS_NEWLINE = 4;
const UNKNOWN = 255;

const LETTER = /^\p{L}$/u;
const NUMBER = /^\p{N}$/u;

/** Unicode White_Space minus \r and \n. */
const WHITE_SPACE = new Set([
  0x09, 0x0b, 0x0c, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006,
  0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
]);

function compute(cp: number): number {
  if (cp === 0x0a || cp === 0x0d) return CLASS_NEWLINE;
  if (WHITE_SPACE.has(cp)) return CLASS_SPACE;
  const s = String.fromCodePoint(cp);
  if (LETTER.test(s)) return CLASS_LETTER;
  if (NUMBER.test(s)) return CLASS_NUMBER;
  return CLASS_OTHER;
}

// (code point) for the BMP, UNKNOWN until first seen; surrogates are never looked up here.
const bmp = new Uint8Array(0x10000).fill(UNKNOWN);
for (let c = 0; c < 0x80; c++) bmp[c] = compute(c);
const astral = new Map<number, number>();

/** Class of a code point (not a surrogate half). */
export function classOf(cp: number): number {
  if (cp < 0x10000) {
    const k = bmp[cp];
    if (k !== UNKNOWN) return k;
    return (bmp[cp] = compute(cp));
  }
  let k = astral.get(cp);
  if (k === undefined) astral.set(cp, (k = compute(cp)));
  return k;
}
