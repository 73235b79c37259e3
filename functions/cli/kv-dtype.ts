// `--kv-dtype` on `ultralong generate` and `ultralong serve`: the KV cache element type asked of
// the runtime. The runtime refuses a dtype it does not offer, naming itself and the ones it has
// (core/engine/registry.ts factories), so this only maps spellings.

import { InvalidInputError } from "../../core/errors.ts";
import type { KvDtype } from "../../core/kv/layout.ts";

const SPELLINGS: Record<string, KvDtype> = {
  f32: "f32",
  bf16: "bf16",
  fp8: "fp8-e4m3", // e4m3 ("fn", max 448) with per-64-position block scales: docs/native.md
  "fp8-e4m3": "fp8-e4m3",
};

export const KV_DTYPE_HELP = "f32|bf16|fp8 (fp8 = e4m3 with block scales)";

/** undefined (the runtime's default) when the flag is absent. */
export function kvDtypeOption(value: string | undefined): KvDtype | undefined {
  if (value === undefined) return undefined;
  const dtype = SPELLINGS[value];
  if (dtype === undefined) {
    throw new InvalidInputError(`--kv-dtype must be f32, bf16 or fp8, got '${value}'`);
  }
  return dtype;
}
