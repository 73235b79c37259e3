// The paged native engine through the N-API addon host (native/ts/addon-host.ts: stepAsync on a
// libuv worker thread, copyBlocks, exportKvPaged / importKvPaged), built with g++ and the
// reference kernels (no GPU here): the same steps give the logits of the paged native-wasm runtime
// (the same C++ compiled twice: only libm's exp / sin differ), the engine refuses other calls while
// a step runs, and its statuses arrive as core's typed errors. Needs g++ and emcc.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { PagedRuntime, StepItem } from "../core/engine/paged-runtime.ts";
import { InvalidInputError, LimitError } from "../core/errors.ts";
import type { LoadedModel } from "../core/model/weights.ts";
import { build, buildAddon } from "../native/build.mjs";
import { loadAddonHost } from "../native/ts/addon-host.ts";
import { createNativePagedRuntime } from "../native/ts/native-paged-runtime.ts";
import { createPagedNativeWasmRuntime, NATIVE_WASM_SPEC } from "../native/ts/wasm-runtime.ts";
import { loadTestModel, UNEVEN_KV } from "./support/models.ts";
import { relativeError, suiteTokens } from "./support/runtime-suite.ts";
import { haveEmcc, tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
const hasGxx = tool(
  "g++",
  spawnSync("g++", ["--version"]).status === 0,
  "the paged engine through the addon",
);
const hasEmcc = tool("emcc", haveEmcc(), "the paged addon's comparison with native-wasm");
const addonPath = join(root, "native/build/test-paged-addon/ul_addon.node");

/** glibc's and emscripten's libm (exp, sin, cos) differ in the last bit here and there. */
const SAME_CODE = 1e-5;

function addonPaged(model: LoadedModel): Promise<PagedRuntime> {
  return createNativePagedRuntime(
    loadAddonHost(addonPath),
    { ...NATIVE_WASM_SPEC, name: "native-addon-reference" },
    { model, maxPositions: 256, blockTokens: 16, poolPositions: 16 * 16 },
  );
}

describe.skipIf(!hasGxx || !hasEmcc)(
  "paged native engine through the addon (reference kernels)",
  () => {
    beforeAll(async () => {
      await build({ root });
      await buildAddon({ root, withCuda: false, out: addonPath });
    }, 600_000);

    it("a mixed step, copy, export and import match the paged native-wasm runtime", async () => {
      const model = await loadTestModel(UNEVEN_KV);
      const V = model.config.vocabSize;
      const a = suiteTokens(41, V, 1);
      const b = suiteTokens(70, V, 2);
      const steps: StepItem[][] = [
        [
          { tokens: a.subarray(0, 40), start: 0, table: Int32Array.from([3, 9, 1]), logits: true },
          {
            tokens: b.subarray(0, 69),
            start: 0,
            table: Int32Array.from([0, 7, 2, 8, 5]),
            logits: false,
          },
        ],
        [
          {
            tokens: a.subarray(40, 41),
            start: 40,
            table: Int32Array.from([3, 9, 1]),
            logits: true,
          },
          {
            tokens: b.subarray(69, 70),
            start: 69,
            table: Int32Array.from([0, 7, 2, 8, 5]),
            logits: true,
          },
        ],
      ];
      const addon = await addonPaged(model);
      const wasm = await createPagedNativeWasmRuntime({
        model,
        maxPositions: 256,
        blockTokens: 16,
        poolPositions: 16 * 16,
      });
      try {
        for (const items of steps) {
          const got = await addon.step(items);
          const want = await wasm.step(items);
          for (const [i, w] of want.entries()) {
            if (w === null) expect(got[i]).toBeNull();
            else expect(relativeError(got[i]!, w)).toBeLessThanOrEqual(SAME_CODE);
          }
        }
        const table = Int32Array.from([0, 7, 2, 8, 5]);
        const kv = await addon.exportKv(table, 0, 70);
        expect(kv.byteLength).toBe((await wasm.exportKv(table, 0, 70)).byteLength);
        await addon.copyBlocks([
          [0, 10],
          [7, 11],
          [2, 12],
          [8, 13],
          [5, 14],
        ]);
        expect(await addon.exportKv(Int32Array.from([10, 11, 12, 13, 14]), 0, 70)).toEqual(kv);
        // The addon's export imported into native-wasm: the next token's logits agree.
        const moved = Int32Array.from([15, 4, 6, 3, 9]);
        await wasm.importKv(moved, 0, kv, 70, "f32");
        const next = { tokens: suiteTokens(1, V, 3), start: 70, logits: true };
        const [viaWasm] = await wasm.step([{ ...next, table: moved }]);
        const [viaAddon] = await addon.step([{ ...next, table }]);
        expect(relativeError(viaAddon!, viaWasm!)).toBeLessThanOrEqual(SAME_CODE);
      } finally {
        await addon.close();
        await wasm.close();
      }
    });

    it("runs a step on a worker thread (other calls refused meanwhile); bad tables are typed errors", async () => {
      const model = await loadTestModel(UNEVEN_KV);
      const V = model.config.vocabSize;
      const rt = await addonPaged(model);
      try {
        const table = Int32Array.from([1, 2]);
        const running = rt.step([{ tokens: suiteTokens(20, V, 4), start: 0, table, logits: true }]);
        // The work is queued before step() returns; its completion needs the event loop to turn.
        await expect(rt.copyBlocks([[1, 3]])).rejects.toThrow(/busy/);
        expect((await running)[0]!.length).toBe(V);
        const before = await rt.exportKv(table, 0, 20);
        const bad: [StepItem, typeof InvalidInputError | typeof LimitError][] = [
          [
            { tokens: suiteTokens(3, V, 5), start: 20, table: Int32Array.from([1]), logits: true },
            InvalidInputError,
          ],
          [
            {
              tokens: suiteTokens(3, V, 5),
              start: 20,
              table: Int32Array.from([1, 16]),
              logits: true,
            },
            InvalidInputError,
          ],
          [{ tokens: Int32Array.from([V]), start: 20, table, logits: true }, InvalidInputError],
          [
            { tokens: suiteTokens(3, V, 5), start: 254, table: new Int32Array(17), logits: true },
            LimitError,
          ],
        ];
        for (const [item, type] of bad) {
          await expect(rt.step([item])).rejects.toThrow(type);
          expect(await rt.exportKv(table, 0, 20)).toEqual(before);
        }
        await expect(rt.copyBlocks([[1, 99]])).rejects.toThrow(InvalidInputError);
        await expect(rt.importKv(table, 0, before, 19, "f32")).rejects.toThrow(InvalidInputError);
      } finally {
        await rt.close();
      }
    });
  },
);
