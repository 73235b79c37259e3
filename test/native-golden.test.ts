// native-wasm against the golden logits of the independent float64 PyTorch reference
// (test/fixtures/golden, made by test/reference/make_goldens.py; the manifest lists each case's
// generator options and commands). Models are regenerated from those options and seeds.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { GenerateOptions } from "../core/model/generate.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { makeModelDir } from "../core/node/make-model.ts";
import { build } from "../native/build.mjs";
import { createNativeWasmRuntime } from "../native/ts/wasm-runtime.ts";
import { scratchDir } from "./support/models.ts";
import { haveEmcc, tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
const fixtures = join(root, "test/fixtures/golden");

interface Case {
  name: string;
  options: GenerateOptions;
  configPatch: Record<string, Record<string, unknown> | number> | null;
  tokens: number;
  last: number;
  vocab: number;
}
const { cases } = JSON.parse(readFileSync(join(fixtures, "manifest.json"), "utf8")) as {
  cases: Case[];
};

// Per case, the layout of <name>.bin: tokens i32[T], argmax i32[T], top1 f32[T], top2 f32[T], then
// the logits of the last L positions f32[L, V]. Views into one copy of the file.
function golden(c: Case) {
  const bytes = new Uint8Array(readFileSync(join(fixtures, `${c.name}.bin`))).buffer;
  const at = (k: number) => 4 * k * c.tokens;
  return {
    tokens: new Int32Array(bytes, at(0), c.tokens),
    lastRows: (row: number) => new Float32Array(bytes, at(4) + 4 * row * c.vocab, c.vocab),
  };
}

async function caseModel(c: Case) {
  const dir = scratchDir(`native-${c.name}`);
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

// Bound on max|ours - reference| / max(1, max|reference|) per logits row: f32 kernels (four-way
// partial sums in the GEMMs, f64 attention sums) against float64, two layers and the lm_head: a few
// f32 ulps of the largest logit. 1e-5 keeps ~10x margin and is far below a wrong rope, mask or head.
const TOL = 1e-5;
// Time, not coverage: the 3000-token yarn case and the 1024-token llama3 case cost the most scalar
// attention in wasm and exercise no path the others miss (llama3 rope is checked against the TS
// reference runtime in native-wasm.test.ts; yarn and head_dim 128 by yarn-gqa1-hd128-bf16 here).
const SKIP = new Set(["yarn-gqa8-hd64-f32", "llama3-gqa4-hd128-bf16"]);

describe.skipIf(!tool("emcc", haveEmcc(), "the native-wasm golden tests"))(
  "native-wasm == float64 reference goldens",
  () => {
    beforeAll(() => build({ root }));
    for (const c of cases.filter((x) => !SKIP.has(x.name))) {
      it(`${c.name}: prefill ${c.tokens - c.last}, then decode ${c.last}`, async () => {
        const g = golden(c);
        const model = await caseModel(c);
        const rt = await createNativeWasmRuntime({ model, maxPositions: c.tokens });
        const rows: Float32Array[] = [];
        if (c.options.rope === "dynamic") {
          // Dynamic frequencies depend on the forward's length (the reference made one pass over all
          // tokens, and the engine holds the frequencies for maxPositions = that length).
          await rt.prefill(g.tokens.subarray(0, c.tokens - 1));
          rows[c.last - 1] = await rt.forward(g.tokens.subarray(c.tokens - 1));
        } else {
          const prefix = c.tokens - c.last;
          await rt.prefill(g.tokens.subarray(0, prefix));
          for (let r = 0; r < c.last; r++)
            rows[r] = await rt.forward(g.tokens.subarray(prefix + r, prefix + r + 1));
        }
        for (let r = 0; r < c.last; r++) {
          if (!rows[r]) continue;
          const want = g.lastRows(r);
          let err = 0;
          let scale = 1;
          for (let i = 0; i < c.vocab; i++) {
            err = Math.max(err, Math.abs(rows[r][i] - want[i]));
            scale = Math.max(scale, Math.abs(want[i]));
          }
          expect(err / scale, `${c.name} row ${r}`).toBeLessThanOrEqual(TOL);
        }
        await rt.close();
      }, 300_000);
    }
  },
);
