// The WASM runtime's per-phase profile (`npm run bench -- profile`): every phase it names is
// charged, the phases fit inside each shard's forward time, the all-reduce appears only with more
// than one shard, and profiling changes no logits.
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ensureBuilt } from "../wasm/build.mjs";
import { createWasmRuntime } from "../wasm/src/runtime.ts";
import { PROFILE_PHASES } from "../wasm/src/shard.mjs";
import { loadTestModel, SMALL_VOCAB } from "./support/models.ts";

await ensureBuilt({ root: join(import.meta.dirname, "..") });

describe("wasm runtime profile", () => {
  for (const threads of [1, 2]) {
    it(`threads ${threads}: phases charged, inside the forward time, logits unchanged`, async () => {
      const model = await loadTestModel(SMALL_VOCAB);
      const rt = await createWasmRuntime({ model, threads, maxPositions: 256 });
      try {
        const tokens = Int32Array.from({ length: 150 }, (_, i) => (i * 37 + 5) % 512);
        const plain = await rt.forward(tokens);
        rt.truncate(0);
        await rt.setProfiling(true);
        const profiled = await rt.forward(tokens);
        expect(profiled).toEqual(plain);
        const p = await rt.profile();
        expect(p.tokens).toBe(150);
        expect(p.shards).toHaveLength(threads);
        for (const s of p.shards) {
          for (const phase of ["gemm", "attention", "norm", "rope", "kv_store", "logits"] as const)
            expect(s[phase], phase).toBeGreaterThan(0);
          if (threads > 1) expect(s.reduce).toBeGreaterThan(0);
          else expect(s.reduce).toBe(0);
          const phases = PROFILE_PHASES.reduce((sum, k) => sum + s[k], 0);
          expect(s.total).toBeGreaterThanOrEqual(phases);
          expect(p.runMs).toBeGreaterThanOrEqual(s.total);
        }
        await rt.setProfiling(false);
        const off = await rt.profile();
        expect(off.tokens).toBe(0);
        for (const s of off.shards) expect(s.total).toBe(0);
      } finally {
        await rt.close();
      }
    });
  }
});
