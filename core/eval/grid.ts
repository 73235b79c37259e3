// The flags that lay out an eval's grid: `--lengths 1k,4k,16k,128k,1M` (k = 1024 tokens, M =
// 1048576, or a plain count) and `--depths 0:100:10` (start:stop:step in percent, both ends
// included) or `--depths 0,50,100`.

import { InvalidInputError } from "../errors.ts";

const UNITS: Record<string, number> = { "": 1, k: 1024, K: 1024, m: 1 << 20, M: 1 << 20 };

/** `--lengths` as token counts, ascending, without repeats. */
export function parseLengths(spec: string): number[] {
  const out = new Set<number>();
  for (const part of spec.split(",")) {
    const m = /^\s*(\d+(?:\.\d+)?)([kKmM]?)\s*$/.exec(part);
    const n = m ? Math.round(Number(m[1]) * UNITS[m[2]]) : Number.NaN;
    if (!m || !Number.isSafeInteger(n) || n < 1) {
      throw new InvalidInputError(
        `--lengths: '${part}' is not a token count (examples: 512, 4k, 1M; k = 1024 tokens)`,
      );
    }
    out.add(n);
  }
  return [...out].sort((a, b) => a - b);
}

/** `--depths` as percents, ascending, without repeats. */
export function parseDepths(spec: string): number[] {
  const bad = (why: string) =>
    new InvalidInputError(`--depths: ${why} (examples: 0:100:10, 0,50,100)`);
  const num = (s: string) => {
    if (!/^\s*\d+(\.\d+)?\s*$/.test(s)) throw bad(`'${s}' is not a number`);
    const v = Number(s);
    if (v > 100) throw bad(`${v} is past 100`);
    return v;
  };
  let values: number[];
  const range = spec.split(":");
  if (range.length === 3) {
    const [start, stop, step] = range.map(num);
    if (step <= 0) throw bad("the step must be positive");
    if (stop < start) throw bad("the range runs backwards");
    values = [];
    for (let i = 0; start + i * step <= stop + 1e-9; i++)
      values.push(+(start + i * step).toFixed(6));
  } else if (range.length === 1) values = spec.split(",").map(num);
  else throw bad(`'${spec}' is neither start:stop:step nor a list`);
  return [...new Set(values)].sort((a, b) => a - b);
}

/** A length as the flags write it: 4096 -> "4k", 1048576 -> "1M", 1000 -> "1000". */
export function formatLength(n: number): string {
  if (n >= 1 << 20 && n % (1 << 18) === 0) return `${n / (1 << 20)}M`;
  if (n >= 1024 && n % 256 === 0) return `${n / 1024}k`;
  return String(n);
}
