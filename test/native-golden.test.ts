// native-wasm against the golden logits of the independent float64 PyTorch reference
// (test/fixtures/golden, made by test/reference/make_goldens.py; the manifest lists each case's
// generator options and commands). Models are regenerated from those options and seeds.
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { build } from "../native/build.mjs";
import { createNativeWasmRuntime } from "../native/ts/wasm-runtime.ts";
import {
  caseModel,
  GOLDEN_SLOW_CASES,
  golden,
  goldenCases,
  goldenRows,
} from "./support/goldens.ts";
import { haveEmcc, tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
// Bound on max|ours - reference| / max(1, max|reference|) per logits row: f32 kernels (four-way
// partial sums in the GEMMs, f64 attention sums) against float64, two layers and the lm_head: a few
// f32 ulps of the largest logit. 1e-5 keeps ~10x margin and is far below a wrong rope, mask or head.
const TOL = 1e-5;
describe.skipIf(!tool("emcc", haveEmcc(), "the native-wasm golden tests"))(
  "native-wasm == float64 reference goldens",
  () => {
    beforeAll(() => build({ root }));
    for (const c of goldenCases.filter((x) => !GOLDEN_SLOW_CASES.has(x.name))) {
      it(`${c.name}: prefill ${c.tokens - c.last}, then decode ${c.last}`, async () => {
        const g = golden(c);
        const model = await caseModel(c, "native");
        const rt = await createNativeWasmRuntime({ model, maxPositions: c.tokens });
        const rows = await goldenRows(rt, c);
        for (let r = 0; r < c.last; r++) {
          const row = rows[r];
          if (!row) continue;
          const want = g.lastRows(r);
          let err = 0;
          let scale = 1;
          for (let i = 0; i < c.vocab; i++) {
            err = Math.max(err, Math.abs(row[i] - want[i]));
            scale = Math.max(scale, Math.abs(want[i]));
          }
          expect(err / scale, `${c.name} row ${r}`).toBeLessThanOrEqual(TOL);
        }
        await rt.close();
      }, 300_000);
    }
  },
);
