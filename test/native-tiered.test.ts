// Tiered KV (docs/native.md "Tiered KV"): with only the pool's first blocks in "device" memory and
// the rest in the host tier, staged per layer into two buffers, the native engine's results equal
// the all-resident engine's BIT FOR BIT. On the emscripten build (reference kernels through the
// real module): single-sequence and paged, f32 / bf16 / fp8 KV, device capacities of 0-3 blocks
// under a 40-row micro-batch (so chunks straddle the tier boundary); several sequences whose
// tables mix device and host blocks; copyBlocks between every pair of tiers; export then import
// across tiers; the memory report's tiers; bad capacities refused with one typed error. Needs emcc.

import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { PagedRuntime, StepItem } from "../core/engine/paged-runtime.ts";
import type { Runtime } from "../core/engine/runtime.ts";
import { InvalidInputError } from "../core/errors.ts";
import type { KvDtype } from "../core/kv/layout.ts";
import type { LoadedModel } from "../core/model/weights.ts";
import { build, buildAddon } from "../native/build.mjs";
import { loadAddonHost } from "../native/ts/addon-host.ts";
import { createNativePagedRuntime } from "../native/ts/native-paged-runtime.ts";
import { createNativeRuntime, engineConfig } from "../native/ts/native-runtime.ts";
import { loadWasmHost } from "../native/ts/wasm-host.ts";
import { NATIVE_WASM_SPEC } from "../native/ts/wasm-runtime.ts";
import { loadTestModel, SMALL_VOCAB, UNEVEN_KV } from "./support/models.ts";
import { suiteTokens } from "./support/runtime-suite.ts";
import { haveEmcc, tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
const hasEmcc = tool("emcc", haveEmcc(), "the tiered native KV tests");
const hasGxx = tool(
  "g++",
  spawnSync("g++", ["--version"]).status === 0,
  "tiered KV through the addon",
);
const addonPath = join(root, "native/build/test-tiered-addon/ul_addon.node");

/** Rows per micro-batch: not a multiple of 16 or 64, so micro-batches straddle blocks and tiers. */
const SPEC = { ...NATIVE_WASM_SPEC, maxChunk: 40 };
/** 4 layers: each staging buffer serves two of them, so a stale buffer shows. */
const MODEL = { ...UNEVEN_KV, layers: 4 };
const MAX_POS = 300; // the single-sequence pool: 5 blocks of 64

function single(
  model: LoadedModel,
  kvDtype: KvDtype,
  deviceKvPositions?: number,
): Promise<Runtime> {
  return loadWasmHost().then((host) =>
    createNativeRuntime(host, SPEC, { model, kvDtype, maxPositions: MAX_POS, deviceKvPositions }),
  );
}

function paged(
  model: LoadedModel,
  kvDtype: KvDtype,
  blockTokens: number,
  deviceKvPositions?: number,
): Promise<PagedRuntime> {
  return loadWasmHost().then((host) =>
    createNativePagedRuntime(host, SPEC, {
      model,
      kvDtype,
      maxPositions: MAX_POS,
      blockTokens,
      poolPositions: 24 * blockTokens,
      deviceKvPositions,
    }),
  );
}

/** A prefill in calls of 150 and 27 tokens, then 4 decode tokens: every call's logits. */
async function runSingle(rt: Runtime, tokens: Int32Array): Promise<Float32Array[]> {
  const out = [
    await rt.forward(tokens.subarray(0, 150)),
    await rt.forward(tokens.subarray(150, 177)),
  ];
  for (let p = 177; p < 181; p++) out.push(await rt.forward(tokens.subarray(p, p + 1)));
  return out;
}

describe.skipIf(!hasEmcc)("tiered KV == resident KV (native-wasm)", () => {
  beforeAll(async () => {
    await build({ root });
  });

  for (const kvDtype of ["f32", "bf16", "fp8-e4m3"] as const) {
    it(`single sequence, ${kvDtype} KV: prefill + decode, export and import, with 0, 1 and 3 device blocks`, async () => {
      const model = await loadTestModel(MODEL);
      const tokens = suiteTokens(200, model.config.vocabSize, 21);
      const resident = await single(model, kvDtype);
      const imported = await single(model, kvDtype);
      try {
        const want = await runSingle(resident, tokens);
        const kv = await resident.exportKv(0, 181);
        const mid = await resident.exportKv(37, 140); // not on a block: fp8 requantises per block
        // Another sequence's KV imported in two pieces, the second mid-block (an fp8 cache
        // requantises it, as a resident import does), then one more forward.
        await imported.prefill(suiteTokens(181, model.config.vocabSize, 22));
        const pieces = [await imported.exportKv(0, 100), await imported.exportKv(100, 181)];
        const importKv = async (rt: Runtime) => {
          rt.truncate(0);
          await rt.importKv(pieces[0], 100, kvDtype);
          await rt.importKv(pieces[1], 81, kvDtype);
        };
        const next = tokens.subarray(181, 183);
        await importKv(imported);
        const importedKv = await imported.exportKv(0, 181);
        const onImport = await imported.forward(next);
        for (const device of [0, 64, 192]) {
          const rt = await single(model, kvDtype, device);
          try {
            const got = await runSingle(rt, tokens);
            for (const [i, logits] of want.entries()) expect(got[i]).toEqual(logits);
            expect(await rt.exportKv(0, 181)).toEqual(kv);
            expect(await rt.exportKv(37, 140)).toEqual(mid);
            // The same import across the tier boundary at `device`, and the forward after it.
            await importKv(rt);
            expect(await rt.exportKv(0, 181)).toEqual(importedKv);
            expect(await rt.forward(next)).toEqual(onImport);
          } finally {
            await rt.close();
          }
        }
      } finally {
        await resident.close();
        await imported.close();
      }
    });
  }

  /**
   * Three sequences over scattered tables that mix device blocks (ids < 3) and host blocks: A and
   * B prefill beside each other (rows cut at 40), then they decode while C prefills; then blocks
   * are copied device -> host, host -> device, host -> host and device -> device, and a sequence
   * continues on the copies. Every step's logits, and every export, as on the resident engine.
   */
  async function pagedScript(rt: PagedRuntime, bs: number, vocab: number) {
    const seqTokens = [
      suiteTokens(120, vocab, 31),
      suiteTokens(120, vocab, 32),
      suiteTokens(120, vocab, 33),
    ];
    const tables =
      bs === 16
        ? [
            Int32Array.from([0, 20, 14, 2, 9, 15, 7]),
            Int32Array.from([11, 1, 12, 13, 10, 23]),
            Int32Array.from([5, 6, 18, 19, 21, 22]),
          ]
        : [Int32Array.from([0, 5]), Int32Array.from([7, 1]), Int32Array.from([9, 10])];
    const item = (s: number, start: number, n: number): StepItem => ({
      tokens: seqTokens[s].subarray(start, start + n),
      start,
      table: tables[s],
      logits: true,
    });
    const out: unknown[] = [];
    out.push(await rt.step([item(0, 0, 70), item(1, 0, 50)]));
    out.push(await rt.step([item(0, 70, 1), item(1, 50, 5), item(2, 0, 77)]));
    out.push(await rt.step([item(0, 71, 1), item(1, 55, 1), item(2, 77, 1)]));
    out.push(await rt.exportKv(tables[0], 0, 72), await rt.exportKv(tables[2], 13, 78));
    // Copies of A's first blocks onto free blocks. 16-position blocks with 5 device blocks:
    // 0 -> 16 device to host, 20 -> 3 host to device, 14 -> 17 and 9 -> 8 host to host,
    // 2 -> 4 device to device; 64-position: 0 -> 8 device to host, 5 -> 2 host to device.
    const copy = bs === 16 ? Int32Array.from([16, 3, 17, 4, 8]) : Int32Array.from([8, 2]);
    await rt.copyBlocks(Array.from(copy, (to, i) => [tables[0][i], to] as const));
    out.push(await rt.exportKv(copy, 0, 72));
    out.push(await rt.step([{ ...item(0, 72, 3), table: copy }]));
    out.push(await rt.exportKv(tables[0], 0, 72));
    // Export B, import it onto blocks of both tiers (A's and C's, done with), continue there.
    const moved = bs === 16 ? Int32Array.from([2, 22, 0, 19]) : Int32Array.from([0, 11]);
    const kvB = await rt.exportKv(tables[1], 0, 56);
    await rt.importKv(moved, 0, kvB.subarray(0, 0), 0, rt.info.kv.dtype); // empty import is a no-op
    const cut = bs === 16 ? 20 : 30; // the second piece starts mid-block
    await rt.importKv(moved, 0, await rt.exportKv(tables[1], 0, cut), cut, rt.info.kv.dtype);
    await rt.importKv(
      moved,
      cut,
      await rt.exportKv(tables[1], cut, 56),
      56 - cut,
      rt.info.kv.dtype,
    );
    out.push(await rt.exportKv(moved, 0, 56));
    out.push(await rt.step([{ ...item(1, 56, 2), table: moved }]));
    return out;
  }

  for (const [kvDtype, bs] of [
    ["f32", 16],
    ["bf16", 16],
    ["fp8-e4m3", 64],
  ] as const) {
    it(`paged, ${kvDtype} KV, ${bs}-position blocks: tables mixing tiers, copyBlocks and export/import across tiers`, async () => {
      const model = await loadTestModel(MODEL);
      const V = model.config.vocabSize;
      const resident = await paged(model, kvDtype, bs);
      const want = await pagedScript(resident, bs, V).finally(() => resident.close());
      for (const deviceBlocks of bs === 16 ? [5, 1] : [3, 1, 0]) {
        const rt = await paged(model, kvDtype, bs, deviceBlocks * bs);
        const got = await pagedScript(rt, bs, V).finally(() => rt.close());
        expect(got.length).toBe(want.length);
        for (const [i, w] of want.entries()) expect(got[i]).toEqual(w);
      }
    });
  }

  it("the memory report says which tier holds what, and the tiers add up", async () => {
    const host = await loadWasmHost();
    const model = await loadTestModel(SMALL_VOCAB);
    const c = model.config;
    for (const kvDtype of ["f32", "fp8-e4m3"] as const) {
      const cfg = engineConfig(c, SPEC, MAX_POS, kvDtype);
      const perSlot = 2 * c.numHiddenLayers * c.numKeyValueHeads * c.headDim;
      // bytes of `slots` slots of one tier, every layer, K and V: values + fp8 scales per 64.
      const tierBytes = (slots: number) =>
        kvDtype === "f32"
          ? perSlot * slots * 4
          : perSlot * slots + (perSlot / c.headDim) * (slots / 64) * 4;
      for (const [engine, blockTokens, total, device] of [
        [host.create(cfg, 2), 64, 5, 2],
        [host.create(cfg), 64, 5, 5],
        [host.createPaged!(cfg, 64, 7, 0), 64, 7, 0],
        [host.createPaged!(cfg, 64, 7, 7), 64, 7, 7],
      ] as const) {
        try {
          const mem = engine.memory();
          const tiers = engine.memoryTiers!();
          expect(tiers.blockTokens).toBe(blockTokens);
          expect(tiers.deviceBlocks).toBe(device);
          expect(tiers.hostBlocks).toBe(total - device);
          expect(tiers.deviceKvBytes).toBe(tierBytes(device * blockTokens));
          expect(tiers.hostKvBytes).toBe(tierBytes((total - device) * blockTokens));
          expect(tiers.deviceKvBytes + tiers.hostKvBytes).toBe(mem.kvBytes);
          // Two staging buffers of one layer's host tier (K and V).
          expect(tiers.stagingBytes).toBe((tiers.hostKvBytes * 2) / c.numHiddenLayers);
        } finally {
          engine.destroy();
        }
      }
    }
  });

  it("bad capacities are refused with one typed error and nothing is made", async () => {
    const host = await loadWasmHost();
    const model = await loadTestModel(SMALL_VOCAB);
    const cfg = engineConfig(model.config, SPEC, MAX_POS, "f32");
    expect(() => host.create(cfg, -1)).toThrow(InvalidInputError);
    expect(() => host.create(cfg, -1)).toThrow(/device_blocks -1 is negative/);
    expect(() => host.create(cfg, 6)).toThrow(/device_blocks 6 is outside \[0, 5\]/);
    expect(() => host.createPaged!(cfg, 16, 8, 9)).toThrow(InvalidInputError);
    expect(() => host.createPaged!(cfg, 16, 8, 9)).toThrow(/outside \[0, 8\]/);
    expect(() => host.create(cfg, 1.5)).toThrow(InvalidInputError);
    expect(() => host.create(cfg, 2 ** 32)).toThrow(InvalidInputError);
    for (const bad of [-64, 65, 1.5, 64 * 6]) {
      await expect(single(model, "f32", bad)).rejects.toThrow(InvalidInputError);
    }
    await expect(paged(model, "f32", 16, 16 * 25)).rejects.toThrow(/outside \[0, 24\]/);
    await expect(paged(model, "f32", 16, 8)).rejects.toThrow(/whole number of 16-position/);
    // The host still makes engines after the refusals, and a full capacity is all resident.
    const ok = host.createPaged!(cfg, 16, 8, 8);
    try {
      expect(ok.memoryTiers!().hostBlocks).toBe(0);
    } finally {
      ok.destroy();
    }
  });
});

describe.skipIf(!hasGxx)("tiered KV through the N-API addon (reference kernels)", () => {
  beforeAll(async () => {
    await buildAddon({ root, withCuda: false, out: addonPath });
  }, 600_000);

  it("deviceKvPositions reaches both create forms; results == resident; tiers reported; refusals typed", async () => {
    const host = loadAddonHost(addonPath);
    expect(host.tiered).toBe(true);
    const model = await loadTestModel(MODEL);
    const V = model.config.vocabSize;
    const tokens = suiteTokens(130, V, 41);
    const spec = { ...SPEC, name: "native-addon-reference" };
    const opts = { model, kvDtype: "bf16" as const, maxPositions: MAX_POS };
    const logitsOf = async (deviceKvPositions?: number) => {
      const rt = await createNativeRuntime(host, spec, { ...opts, deviceKvPositions });
      try {
        return [await rt.forward(tokens.subarray(0, 129)), await rt.forward(tokens.subarray(129))];
      } finally {
        await rt.close();
      }
    };
    const want = await logitsOf();
    expect(await logitsOf(64)).toEqual(want);
    const table = Int32Array.from([4, 0, 3]);
    const stepOf = async (deviceKvPositions?: number) => {
      const rt = await createNativePagedRuntime(host, spec, {
        ...opts,
        blockTokens: 64,
        poolPositions: 5 * 64,
        deviceKvPositions,
      });
      try {
        return await rt.step([{ tokens: tokens.subarray(0, 129), start: 0, table, logits: true }]);
      } finally {
        await rt.close();
      }
    };
    expect(await stepOf(64)).toEqual(await stepOf());
    const cfg = engineConfig(model.config, spec, MAX_POS, "bf16");
    const single = host.create(cfg, 2);
    const pagedEngine = host.createPaged!(cfg, 64, 5, 1);
    try {
      expect(single.memoryTiers!()).toMatchObject({
        blockTokens: 64,
        deviceBlocks: 2,
        hostBlocks: 3,
      });
      expect(pagedEngine.memoryTiers!()).toMatchObject({ deviceBlocks: 1, hostBlocks: 4 });
    } finally {
      single.destroy();
      pagedEngine.destroy();
    }
    expect(() => host.create(cfg, -1)).toThrow(InvalidInputError);
    expect(() => host.createPaged!(cfg, 64, 5, 6)).toThrow(/outside \[0, 5\]/);
  });
});
