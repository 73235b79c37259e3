// The WASM runtime against golden logits from the independent float64 PyTorch reference
// (test/reference/make_goldens.py; the cases and the commands that made them are in
// test/fixtures/golden/manifest.json). The models are regenerated here from the same options and
// seed, so the fixtures stay a few hundred KB.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { GenerateOptions } from "../core/model/generate.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { makeModelDir } from "../core/node/make-model.ts";
import { ensureBuilt } from "../wasm/build.mjs";
import { createWasmRuntime } from "../wasm/src/runtime.ts";
import { scratchDir } from "./support/models.ts";

const root = join(import.meta.dirname, "..");
const goldenDir = join(root, "test", "fixtures", "golden");

interface GoldenCase {
  name: string;
  options: GenerateOptions;
  configPatch: Record<string, unknown> | null;
  tokens: number;
  last: number;
  vocab: number;
}

const manifest = JSON.parse(readFileSync(join(goldenDir, "manifest.json"), "utf8")) as {
  cases: GoldenCase[];
};

function readGolden(c: GoldenCase) {
  const buf = readFileSync(join(goldenDir, `${c.name}.bin`));
  const b = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  const T = c.tokens;
  return {
    tokens: new Int32Array(b, 0, T),
    argmax: new Int32Array(b, 4 * T, T),
    top1: new Float32Array(b, 8 * T, T),
    top2: new Float32Array(b, 12 * T, T),
    last: new Float32Array(b, 16 * T, c.last * c.vocab),
  };
}

/** make_goldens.py's patch: merge into config.json, one level deep. */
function patchConfig(dir: string, patch: Record<string, unknown>) {
  const path = join(dir, "config.json");
  const config = JSON.parse(readFileSync(path, "utf8"));
  for (const [key, value] of Object.entries(patch)) {
    if (value && typeof value === "object") config[key] = { ...(config[key] ?? {}), ...value };
    else config[key] = value;
  }
  writeFileSync(path, JSON.stringify(config, null, 2));
}

async function goldenModel(c: GoldenCase) {
  const dir = scratchDir(c.name);
  await makeModelDir(dir, c.options);
  if (c.configPatch) patchConfig(dir, c.configPatch);
  return loadModelDir(dir);
}

// Tolerance on logits, relative to max(1, max|logit|) of the reference row: f32 activations against
// a float64 reference. Each matrix product and norm is within ~K u relative (K <= 1024, u = 2^-24:
// 6e-5 worst case, ~sqrt(K) u = 2e-6 typical), attention adds the softmax over up to 3000 keys; two
// layers and the lm_head compound it. Measured worst: 4e-7 (printed as a fraction of the bound);
// the bound 1e-5 leaves 25x, and is still far below what a wrong rope, mask or head mapping gives.
const TOL = 1e-5;
const CHUNK = 250;

// Lossy settings, each with its own bound (same relative measure). bf16 rounds to 8 significant
// bits, relative error <= 2^-9 = 2e-3: bf16 KV perturbs every key and value once by that (measured
// worst 4.7e-4): bound 2e-3. bf16 weights from an F32 checkpoint perturb every weight of every
// product (measured 3.4e-3): bound 1e-2. int8 weights are off by <= 1/254 of their block's absmax
// (0.4%) in every product (measured 7e-3): bound 2e-2. Two threads only reorder the partial sums.
interface Variant {
  label: string;
  options: { threads: number; kvDtype?: "f32" | "bf16"; weightFormat?: "f32" | "bf16" | "int8" };
  tol: number;
  cases: string[] | "all";
}
const VARIANTS: Variant[] = [
  {
    label: "f32 KV, checkpoint weights, 1 thread",
    options: { threads: 1 },
    tol: TOL,
    cases: "all",
  },
  {
    label: "2 threads",
    options: { threads: 2 },
    tol: TOL,
    cases: ["default-gqa1-hd64-f32", "llama3-gqa4-hd128-bf16"],
  },
  {
    label: "bf16 KV",
    options: { threads: 1, kvDtype: "bf16" },
    tol: 2e-3,
    cases: ["default-gqa1-hd64-f32", "yarn-gqa1-hd128-bf16"],
  },
  {
    label: "bf16 weights",
    options: { threads: 1, weightFormat: "bf16" },
    tol: 1e-2,
    cases: ["default-gqa1-hd64-f32", "dynamic-gqa8-hd128-f32"],
  },
  {
    label: "int8 weights",
    options: { threads: 1, weightFormat: "int8" },
    tol: 2e-2,
    cases: ["linear-gqa4-hd64-bf16", "llama3-gqa4-hd128-bf16"],
  },
];

describe("WASM runtime == float64 reference goldens", () => {
  it("builds the kernels", async () => ensureBuilt({ root }), 120_000);
  for (const v of VARIANTS) {
    for (const c of manifest.cases) {
      if (v.cases !== "all" && !v.cases.includes(c.name)) continue;
      const dynamic = c.options.rope === "dynamic";
      const TOL = v.tol;
      it(`${v.label}: ${c.name}: ${dynamic ? "one forward" : `chunks of ${CHUNK}, then decode`} over ${c.tokens} tokens`, async () => {
        const g = readGolden(c);
        const model = await goldenModel(c);
        const runtime = await createWasmRuntime({ model, ...v.options, maxPositions: c.tokens });
        let worst = 0;
        // Bounds scale with the logits' magnitude: max(1, max|logit|) of the reference row.
        const check = (got: Float32Array, pos: number) => {
          let best = 0;
          for (let i = 1; i < got.length; i++) if (got[i] > got[best]) best = i;
          const bound = TOL * Math.max(1, Math.abs(g.top1[pos]));
          const err = Math.abs(got[best] - g.top1[pos]);
          worst = Math.max(worst, err / bound);
          expect(err).toBeLessThanOrEqual(bound);
          if (g.top1[pos] - g.top2[pos] > 2 * bound) expect(best).toBe(g.argmax[pos]);
        };
        const compareLast = (got: Float32Array, row: number) => {
          const want = g.last.subarray(row * c.vocab, (row + 1) * c.vocab);
          let scale = 1;
          for (let i = 0; i < c.vocab; i++) scale = Math.max(scale, Math.abs(want[i]));
          const bound = TOL * scale;
          let err = 0;
          for (let i = 0; i < c.vocab; i++) err = Math.max(err, Math.abs(got[i] - want[i]));
          worst = Math.max(worst, err / bound);
          expect(err).toBeLessThanOrEqual(bound);
        };
        try {
          if (dynamic) {
            // Dynamic NTK frequencies depend on the length of the forward call (as in transformers),
            // so only one uninterrupted forward reproduces the reference's single pass.
            compareLast(await runtime.forward(g.tokens), c.last - 1);
          } else {
            const prefix = c.tokens - c.last;
            for (let s = 0; s < prefix; s += CHUNK) {
              const e = Math.min(prefix, s + CHUNK);
              check(await runtime.forward(g.tokens.subarray(s, e)), e - 1);
            }
            for (let r = 0; r < c.last; r++) {
              compareLast(await runtime.forward(g.tokens.subarray(prefix + r, prefix + r + 1)), r);
            }
          }
          console.log(
            `${v.label}: ${c.name}: worst error = ${worst.toFixed(3)} of the bound ${TOL} x max(1, max|logit|)`,
          );
        } finally {
          await runtime.close();
        }
      }, 120_000);
    }
  }
});
