// The model function's engine over a real runtime and a real directory store: per-tenant snapshot
// caches kept in a bounded LRU. An evicted tenant's snapshots are found again, its bytes still count.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { openStore } from "../core/node/snapshot-dir.ts";
import type { ModelEvent } from "../core/protocol/events.ts";
import { createDriverEngine } from "../functions/model/driver-engine.ts";
import type { ModelEngine } from "../functions/model/engine.ts";
import { loadDirTokenizer } from "../functions/node/tokenizer-cache.ts";
import { runtimes } from "../functions/runtimes.ts";
import { generateHeader } from "./support/generate-request.ts";
import { scratchDir, testModelDir } from "./support/models.ts";

const CHUNK = 32;
const PROMPT = Int32Array.from({ length: 2 * CHUNK + 16 }, (_, i) => 1000 + i);

let engine: ModelEngine;

beforeAll(async () => {
  const dir = await testModelDir();
  const model = await loadModelDir(dir);
  const tokenizer = await loadDirTokenizer(dir, model.files);
  const runtime = await (await runtimes.pick("reference")).create({ model, maxPositions: 256 });
  engine = await createDriverEngine({
    modelId: "tiny",
    model,
    runtime,
    tokenizer,
    store: { store: openStore(scratchDir("engine-snapshots")), name: "dir", chunkTokens: CHUNK },
    saltSecret: "engine test salt secret 0123456789",
    maxTenantCaches: 1,
  });
}, 60_000);

afterAll(async () => {
  await engine?.close();
});

async function usageOf(tenant: string): Promise<Extract<ModelEvent, { event: "usage" }>["data"]> {
  let usage: Extract<ModelEvent, { event: "usage" }>["data"] | undefined;
  for await (const ev of engine.generate({
    header: generateHeader({
      requestId: `r-${tenant}`,
      tenant,
      promptTokens: PROMPT.length,
      maxTokens: 2,
    }),
    prompt: (async function* () {
      yield PROMPT;
    })(),
    signal: new AbortController().signal,
  })) {
    if (ev.event === "usage") usage = ev.data;
  }
  if (!usage) throw new Error("no usage event");
  return usage;
}

describe("driver engine tenant snapshot caches", () => {
  it("evicts beyond maxTenantCaches, finds the evicted tenant's snapshots again, keeps its bytes counted", async () => {
    const a = await usageOf("tenant-a");
    expect(a.cachedTokens).toBe(0);
    const oneTenant = engine.snapshotBytes!().written;
    expect(oneTenant).toBeGreaterThan(0);
    // Tenant b evicts a's cache (limit 1); a's uploads stay counted once the eviction's flush ends.
    const b = await usageOf("tenant-b");
    expect(b.cachedTokens).toBe(0); // another tenant's salt: a's snapshots are not b's
    // The runtime now holds b's KV, so a's prompt comes back from a's snapshots in the store.
    const again = await usageOf("tenant-a");
    expect(again.cachedTokens).toBe(2 * CHUNK);
    await engine.close();
    const bytes = engine.snapshotBytes!();
    expect(bytes.written).toBe(2 * oneTenant);
    expect(bytes.read).toBeGreaterThan(0);
  }, 60_000);
});
