// The sizes people type: GPU memory (`141G`, `80GB`, `46068MiB`) and context lengths (`1M`, `256K`).
//
// Bytes: B, K/KiB, M/MiB, G/GiB, T/TiB are powers of 1024 (a bare letter means the binary unit,
// as nvidia-smi's MiB and CUDA's byte counts are); KB, MB, GB, TB are powers of 1000 (how GPU
// vendors' spec sheets are often read). Tokens: K and M are 1024 and 1024^2, as the UltraLong
// names count them (the 1M model is built for 8192 x 128 = 1,048,576 positions).

import { InvalidInputError } from "../errors.ts";

const BYTE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 2 ** 10,
  kib: 2 ** 10,
  kb: 1e3,
  m: 2 ** 20,
  mib: 2 ** 20,
  mb: 1e6,
  g: 2 ** 30,
  gib: 2 ** 30,
  gb: 1e9,
  t: 2 ** 40,
  tib: 2 ** 40,
  tb: 1e12,
};

const TOKEN_UNITS: Record<string, number> = { "": 1, k: 2 ** 10, m: 2 ** 20 };

function parseQuantity(
  what: string,
  raw: string,
  units: Record<string, number>,
  integerOnly: boolean,
): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(raw.trim());
  const unit = m ? units[m[2]!.toLowerCase()] : undefined;
  const value = m && unit !== undefined ? Number(m[1]) * unit : Number.NaN;
  const n = Math.floor(value);
  if (!Number.isSafeInteger(n) || n < 1 || (integerOnly && n !== value)) {
    const forms = Object.keys(units).filter(Boolean).join(", ");
    throw new InvalidInputError(
      `${what} must be a positive ${integerOnly ? "whole number" : "number"} with an optional unit (${forms}), got '${raw}'`,
    );
  }
  return n;
}

/** Bytes from `141G` (141 GiB), `141GB` (141e9), `143771MiB`, `150754820096`; floored. */
export function parseByteSize(what: string, raw: string): number {
  return parseQuantity(what, raw, BYTE_UNITS, false);
}

/** Positions from `1M` (1,048,576), `256K` (262,144), `1.5M`, `100000`; must be whole. */
export function parseTokenCount(what: string, raw: string): number {
  return parseQuantity(what, raw, TOKEN_UNITS, true);
}
