// Character classes of the Llama 3 pre-tokenizer pattern: \p{L}, \p{N}, Unicode White_Space
// (split into \r\n and the rest) and everything else.
//
// Letters and numbers come from unicode-tables.ts, generated from the reference tokenizer, not
// from the JS engine's `\p{L}`: Node 20 ships Unicode 17 and classes 4,657 newer code points as
// letters that the reference does not, and workerd's V8 may differ again. Whitespace is Unicode's
// White_Space property (what the reference's `\s` means), not JavaScript's `\s`, which adds U+FEFF
// and drops U+0085.

import { LETTER_RANGES, NUMBER_RANGES } from "./unicode-tables.ts";

export const CLASS_OTHER = 0;
export const CLASS_LETTER = 1;
export const CLASS_NUMBER = 2;
export const CLASS_SPACE = 3;
export const CLASS_NEWLINE = 4;

/** Unicode White_Space minus \r and \n (all in the BMP). */
const WHITE_SPACE = [
  0x09, 0x0b, 0x0c, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005,
  0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
];

function unpack(packed: string): Int32Array {
  const parts = packed.split(",");
  const out = new Int32Array(parts.length * 2); // (ranges, 2): first and last code point
  let prev = 0;
  parts.forEach((p, i) => {
    const dot = p.indexOf(".");
    const first = prev + Number.parseInt(p.slice(0, dot), 36);
    prev = first + Number.parseInt(p.slice(dot + 1), 36);
    out[2 * i] = first;
    out[2 * i + 1] = prev;
  });
  return out;
}

// (0x10000) class of every BMP code point; astral code points use binary search over the ranges.
const bmp = new Uint8Array(0x10000);
const astralRanges: [Int32Array, number][] = [];
for (const [packed, cls] of [
  [LETTER_RANGES, CLASS_LETTER],
  [NUMBER_RANGES, CLASS_NUMBER],
] as const) {
  const r = unpack(packed);
  for (let i = 0; i < r.length; i += 2) {
    if (r[i] < 0x10000) bmp.fill(cls, r[i], Math.min(r[i + 1], 0xffff) + 1);
  }
  astralRanges.push([r, cls]);
}
for (const c of WHITE_SPACE) bmp[c] = CLASS_SPACE;
bmp[0x0a] = CLASS_NEWLINE;
bmp[0x0d] = CLASS_NEWLINE;

function inRanges(r: Int32Array, cp: number): boolean {
  let lo = 0;
  let hi = r.length / 2 - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (cp < r[2 * mid]) hi = mid - 1;
    else if (cp > r[2 * mid + 1]) lo = mid + 1;
    else return true;
  }
  return false;
}

/** Class of a code point (not a surrogate half). */
export function classOf(cp: number): number {
  if (cp < 0x10000) return bmp[cp];
  for (const [r, cls] of astralRanges) if (inRanges(r, cp)) return cls;
  return CLASS_OTHER;
}
