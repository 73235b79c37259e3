// The golden cases of the independent float64 PyTorch reference (test/fixtures/golden, made by
// test/reference/make_goldens.py; the manifest lists each case's generator options and commands):
// the cases, their fixture files, their models (regenerated from options and seeds) and the one
// way a runtime is driven through a case.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Runtime } from "../../core/engine/runtime.ts";
import type { GenerateOptions } from "../../core/model/generate.ts";
import type { LoadedModel } from "../../core/model/weights.ts";
import { loadModelDir } from "../../core/node/load-model-dir.ts";
import { makeModelDir } from "../../core/node/make-model.ts";
import { scratchDir } from "./models.ts";

const fixtures = join(import.meta.dirname, "../fixtures/golden");

export interface GoldenCase {
  name: string;
  options: GenerateOptions;
  configPatch: Record<string, Record<string, unknown> | number> | null;
  tokens: number;
  last: number;
  vocab: number;
}

export const goldenCases = (
  JSON.parse(readFileSync(join(fixtures, "manifest.json"), "utf8")) as { cases: GoldenCase[] }
).cases;

/**
 * Time, not coverage: the 3000-token yarn case and the 1024-token llama3 case cost the most scalar
 * attention in wasm and exercise no path the others miss (llama3 rope is checked against the TS
 * reference runtime in native-wasm.test.ts; yarn and head_dim 128 by yarn-gqa1-hd128-bf16).
 */
export const GOLDEN_SLOW_CASES = new Set(["yarn-gqa8-hd64-f32", "llama3-gqa4-hd128-bf16"]);

// Per case, the layout of <name>.bin: tokens i32[T], argmax i32[T], top1 f32[T], top2 f32[T], then
// the logits of the last L positions f32[L, V]. Views into one copy of the file.
export function golden(c: GoldenCase) {
  const bytes = new Uint8Array(readFileSync(join(fixtures, `${c.name}.bin`))).buffer;
  const at = (k: number) => 4 * k * c.tokens;
  return {
    tokens: new Int32Array(bytes, at(0), c.tokens),
    lastRows: (row: number) => new Float32Array(bytes, at(4) + 4 * row * c.vocab, c.vocab),
  };
}

export async function caseModel(c: GoldenCase, prefix: string): Promise<LoadedModel> {
  const dir = scratchDir(`${prefix}-${c.name}`);
  await makeModelDir(dir, c.options);
  if (c.configPatch) {
    const file = join(dir, "config.json");
    const config = JSON.parse(readFileSync(file, "utf8"));
    for (const [k, v] of Object.entries(c.configPatch)) {
      config[k] = typeof v === "object" ? { ...config[k], ...v } : v;
    }
    writeFileSync(file, JSON.stringify(config));
  }
  return loadModelDir(dir);
}

/**
 * The case's last `c.last` logits rows from `rt`: prefill, then decode one token at a time. A
 * dynamic-rope case gives only the last row (undefined before it): its frequencies depend on the
 * forward's length, and the reference made one pass over all tokens.
 */
export async function goldenRows(
  rt: Runtime,
  c: GoldenCase,
): Promise<(Float32Array | undefined)[]> {
  const tokens = golden(c).tokens;
  const rows: (Float32Array | undefined)[] = new Array(c.last);
  if (c.options.rope === "dynamic") {
    await rt.prefill(tokens.subarray(0, c.tokens - 1));
    rows[c.last - 1] = await rt.forward(tokens.subarray(c.tokens - 1));
    return rows;
  }
  const prefix = c.tokens - c.last;
  await rt.prefill(tokens.subarray(0, prefix));
  for (let r = 0; r < c.last; r++)
    rows[r] = await rt.forward(tokens.subarray(prefix + r, prefix + r + 1));
  return rows;
}
