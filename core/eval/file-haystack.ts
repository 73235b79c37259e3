// A user's text file as haystack units: whitespace runs become one space, the text is cut into
// sentences, and sentences are grouped into units of about 400 characters (about 100 tokens), each
// starting with a space so their ids laid end to end are the text's ids (see filler.ts). Needles
// go between units. A file shorter than the haystack is read again from its start, as RULER does
// with its essays.

import { InvalidInputError } from "../errors.ts";

const UNIT_CHARS = 400;

export function fileUnits(text: string, name: string): string[] {
  const flat = text.replace(/\s+/g, " ").trim();
  if (!flat) throw new InvalidInputError(`--haystack ${name}: the file has no text`);
  const sentences = flat.split(/(?<=[.!?])\s+/);
  const units: string[] = [];
  let cur = "";
  for (const s of sentences) {
    cur += ` ${s}`;
    if (cur.length >= UNIT_CHARS) {
      units.push(cur);
      cur = "";
    }
  }
  if (cur) units.push(cur);
  return units;
}

/** The units again and again. */
export function* cycle(units: readonly string[]): Generator<string> {
  for (;;) yield* units;
}
