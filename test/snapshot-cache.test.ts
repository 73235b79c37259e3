// The snapshot PrefixCache end to end: the real sequence driver, the reference runtime on a small
// generated model, and real stores (a directory, and s3rver behind the fault proxy).
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SequenceDriver } from "../core/engine/driver.ts";
import type { PrefixCache } from "../core/engine/prefix-cache.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import type { Runtime } from "../core/engine/runtime.ts";
import { chainKeys } from "../core/kv/chain-key.ts";
import { parseSnapshotHeader } from "../core/kv/format.ts";
import { S3Store } from "../core/kv/s3-store.ts";
import { createSnapshotCache, type SnapshotCacheOptions } from "../core/kv/snapshot-cache.ts";
import type { SnapshotLogger, SnapshotStore } from "../core/kv/store.ts";
import type { LoadedModel } from "../core/model/weights.ts";
import { DirectoryStore } from "../core/node/snapshot-dir.ts";
import { runtimes } from "../functions/runtimes.ts";
import { type FaultProxy, randomFaults, startS3BehindProxy } from "./harness/fault-proxy.ts";
import { type S3Server, storeOptions } from "./harness/s3.ts";
import { loadTestModel, SMALL_VOCAB, scratchDir } from "./support/models.ts";

const CHUNK = 16;
const quiet: SnapshotLogger = { debug() {}, warn() {} };
let model: LoadedModel;
let fingerprint: string;

function prompt(n: number, seed: number): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = (seed * 131 + i * 17 + ((i * i) % 7)) % 500;
  return out;
}

async function runtime(): Promise<Runtime> {
  return createReferenceRuntime({ model, maxPositions: 256 });
}

/** Greedy generation: the tokens and usage, with or without a cache. */
async function generate(tokens: Int32Array, cache?: PrefixCache) {
  const rt = await runtime();
  const driver = new SequenceDriver(rt, { eosTokenIds: [] });
  const ids: number[] = [];
  let cachedTokens = -1;
  for await (const ev of driver.generate({
    prompt: tokens,
    maxTokens: 6,
    ignoreEos: true,
    sampling: { temperature: 0 },
    prefixCache: cache,
  })) {
    if (ev.type === "token") ids.push(ev.id);
    if (ev.type === "done") cachedTokens = ev.usage.cachedTokens;
  }
  await cache?.flush();
  const kv = await rt.exportKv(0, tokens.length);
  await rt.close();
  return { ids, cachedTokens, kv };
}

function cacheOn(store: SnapshotStore, extra: Partial<SnapshotCacheOptions> = {}) {
  return createSnapshotCache({
    store,
    modelFingerprint: fingerprint,
    kvLayout: { layers: 2, kvHeads: 2, headDim: 16, dtype: "f32" },
    tenantSalt: "tenant-a",
    chunkTokens: CHUNK,
    logger: quiet,
    ...extra,
  });
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(join(e.parentPath, e.name));
  }
  return out;
}

beforeAll(async () => {
  model = await loadTestModel(SMALL_VOCAB);
  fingerprint = await model.fingerprint();
});

describe("snapshot cache on a directory store", () => {
  it("cold then warm generation equals a run without snapshots, and the restored KV is identical", async () => {
    const tokens = prompt(70, 1);
    const plain = await generate(tokens);
    const store = new DirectoryStore(scratchDir("snap"));
    const cold = await generate(tokens, cacheOn(store));
    expect(cold.cachedTokens).toBe(0);
    expect(cold.ids).toEqual(plain.ids);
    const warmCache = cacheOn(store);
    const warm = await generate(tokens, warmCache);
    expect(warm.cachedTokens).toBe(64);
    expect(warmCache.stats().restoredChunks).toBe(4);
    expect(warm.ids).toEqual(plain.ids);
    expect(Buffer.compare(warm.kv, plain.kv)).toBe(0);
  });

  it("a longer prompt sharing a prefix restores the shared chunks only", async () => {
    const store = new DirectoryStore(scratchDir("snap"));
    const base = prompt(50, 2);
    await generate(base, cacheOn(store));
    const longer = new Int32Array(90);
    longer.set(base);
    longer.set(prompt(40, 3), 50);
    const plain = await generate(longer);
    const warm = await generate(longer, cacheOn(store));
    // base has 3 whole chunks (48 tokens); the 4th chunk differs (tokens 48..49 shared, 50.. not).
    expect(warm.cachedTokens).toBe(48);
    expect(warm.ids).toEqual(plain.ids);
  });

  it("a tenant never gets a hit on another tenant's prompt", async () => {
    const store = new DirectoryStore(scratchDir("snap"));
    const tokens = prompt(70, 4);
    await generate(tokens, cacheOn(store, { tenantSalt: "tenant-a" }));
    const other = cacheOn(store, { tenantSalt: "tenant-b" });
    const b = await generate(tokens, other);
    expect(b.cachedTokens).toBe(0);
    expect(other.stats().restoredChunks).toBe(0);
    // And the other way: B's own snapshots now exist, A's are untouched and still hit.
    const again = await generate(tokens, cacheOn(store, { tenantSalt: "tenant-a" }));
    expect(again.cachedTokens).toBe(64);
    const keys: string[] = [];
    for await (const o of store.list("kv/")) keys.push(o.key);
    expect(keys.length).toBe(8);
    expect(new Set(keys.map((k) => k.split("/")[3])).size).toBe(2);
  });

  it("a damaged stored object is quarantined, recomputed and rewritten; the output is unchanged", async () => {
    const dir = scratchDir("snap");
    const store = new DirectoryStore(dir);
    const tokens = prompt(70, 5);
    const plain = await generate(tokens);
    const first = cacheOn(store);
    await generate(tokens, first);
    // Flip one payload byte of chunk 2 on disk.
    const keys = await first.chainKeys(tokens, 4);
    const victim = join(dir, await first.objectKey(keys[2]));
    const bytes = await readFile(victim);
    bytes[300] ^= 0x01;
    await writeFile(victim, bytes);

    const second = cacheOn(store);
    const run = await generate(tokens, second);
    expect(second.stats().quarantined).toBe(1);
    expect(run.cachedTokens).toBe(32);
    expect(run.ids).toEqual(plain.ids);
    expect((await filesUnder(join(dir, "quarantine"))).length).toBe(1);
    // The recomputed chunk was saved again, so the next run restores the whole chain.
    const third = await generate(tokens, cacheOn(store));
    expect(third.cachedTokens).toBe(64);
    expect(third.ids).toEqual(plain.ids);
  });

  it("a snapshot from another model or layout is a miss, never imported", async () => {
    const store = new DirectoryStore(scratchDir("snap"));
    const tokens = prompt(40, 6);
    await generate(tokens, cacheOn(store));
    const otherModel = cacheOn(store, { modelFingerprint: "ab".repeat(32) });
    expect((await generate(tokens, otherModel)).cachedTokens).toBe(0);
    const rt = await runtime();
    const bf16 = cacheOn(store, {
      kvLayout: { layers: 2, kvHeads: 2, headDim: 16, dtype: "bf16" },
    });
    expect((await bf16.restore(rt, tokens)).restoredTokens).toBe(0);
    await rt.close();
  });

  it("encrypts at rest: round trip with the tenant key, a miss with another master key", async () => {
    const dir = scratchDir("snap");
    const store = new DirectoryStore(dir);
    const tokens = prompt(70, 7);
    const plain = await generate(tokens);
    const masterKey = new Uint8Array(32).fill(9);
    await generate(tokens, cacheOn(store, { encryption: { masterKeys: [masterKey] } }));
    for (const f of await filesUnder(join(dir, "kv"))) {
      expect((await parseSnapshotHeader(await readFile(f))).encrypted).toBe(true);
    }
    const warm = await generate(
      tokens,
      cacheOn(store, { encryption: { masterKeys: [masterKey] } }),
    );
    expect(warm.cachedTokens).toBe(64);
    expect(warm.ids).toEqual(plain.ids);
    const rotated = cacheOn(store, { encryption: { masterKeys: [new Uint8Array(32).fill(10)] } });
    const miss = await generate(tokens, rotated);
    expect(miss.cachedTokens).toBe(0);
    expect(rotated.stats().quarantined).toBe(0);
    expect(miss.ids).toEqual(plain.ids);
    // Without any key configured, encrypted objects are a miss too.
    const none = await generate(tokens, cacheOn(new DirectoryStore(join(dir, "nothing"))));
    expect(none.cachedTokens).toBe(0);
  });
});

describe("snapshot keys: rotation, other configurations, tampering", () => {
  const A = new Uint8Array(32).fill(21);
  const B = new Uint8Array(32).fill(22);
  const kvFiles = async (dir: string) => {
    const out = new Map<string, Buffer>();
    for (const f of await filesUnder(join(dir, "kv"))) out.set(f, await readFile(f));
    return out;
  };

  it("an instance without the key, or with another key, leaves encrypted objects alone", async () => {
    const dir = scratchDir("snap");
    const store = new DirectoryStore(dir);
    const tokens = prompt(70, 31);
    const plain = await generate(tokens);
    await generate(tokens, cacheOn(store, { encryption: { masterKeys: [A] } }));
    const before = await kvFiles(dir);
    expect(before.size).toBe(4);
    for (const misconfigured of [
      cacheOn(store),
      cacheOn(store, { encryption: { masterKeys: [B] } }),
    ]) {
      const run = await generate(tokens, misconfigured);
      expect(run.cachedTokens).toBe(0);
      expect(run.ids).toEqual(plain.ids);
      expect(misconfigured.stats()).toMatchObject({ quarantined: 0, uploads: 0 });
      expect(await kvFiles(dir)).toEqual(before); // nothing moved, nothing overwritten
    }
    // Rotation: B now seals, A is still listed: A's objects restore.
    const rotated = cacheOn(store, { encryption: { masterKeys: [B, A] } });
    const warm = await generate(tokens, rotated);
    expect(warm.cachedTokens).toBe(64);
    expect(warm.ids).toEqual(plain.ids);
  });

  it("a chunk tampered with and re-hashed is refused, quarantined and recomputed: same output", async () => {
    const dir = scratchDir("snap");
    const store = new DirectoryStore(dir);
    const tokens = prompt(70, 32);
    const plain = await generate(tokens);
    const keyed = () => cacheOn(store, { encryption: { masterKeys: [A] } });
    await generate(tokens, keyed());
    // The attacker who can write the store edits chunk 1's sealed KV and fixes both digests.
    const target = await keyed().objectKey((await keyed().chainKeys(tokens, 2))[1]);
    const path = join(dir, target);
    const obj = new Uint8Array(await readFile(path));
    obj[300] ^= 0x40;
    obj.set(new Uint8Array(await crypto.subtle.digest("SHA-256", obj.subarray(256))), 192);
    obj.set(new Uint8Array(await crypto.subtle.digest("SHA-256", obj.subarray(0, 224))), 224);
    await writeFile(path, obj);
    const cache = keyed();
    const run = await generate(tokens, cache);
    expect(run.cachedTokens).toBe(16); // chunk 0 restored, chunk 1 refused
    expect(run.ids).toEqual(plain.ids);
    expect(cache.stats().quarantined).toBe(1);
    const again = await generate(tokens, keyed());
    expect(again.cachedTokens).toBe(64); // recomputed and saved under the key
    expect(Buffer.compare(again.kv, plain.kv)).toBe(0);
  });
});

describe("chain keys through the cache", () => {
  it("equal freshly computed keys whatever order prompts and prefixes arrive in", async () => {
    const cache = cacheOn(new DirectoryStore(scratchDir("snap")));
    const ctx = { modelFingerprint: fingerprint, dtype: "f32" as const, tenantSalt: "tenant-a" };
    const a = prompt(80, 20);
    const b = a.slice();
    b[20] = 499; // differs in chunk 1
    const calls: [Int32Array, number][] = [
      [a, 2],
      [a, 5],
      [a.subarray(0, 48), 3],
      [b, 5],
      [a, 4],
      [b, 2],
    ];
    for (const [tokens, chunks] of calls) {
      const got = await cache.chainKeys(tokens, chunks);
      const want = await chainKeys(ctx, tokens, CHUNK, chunks);
      expect(got.map((k) => Buffer.from(k).toString("hex"))).toEqual(
        want.map((k) => Buffer.from(k).toString("hex")),
      );
    }
    b[2] = 498; // the same array, changed in place: the cache must not trust its memo blindly
    expect(Buffer.from((await cache.chainKeys(b, 1))[0]).toString("hex")).toBe(
      Buffer.from((await chainKeys(ctx, b, CHUNK, 1))[0]).toString("hex"),
    );
  });
});

describe("runtime-neutral snapshots", () => {
  it("a chunk saved by the reference runtime restores into the WASM runtime bit for bit, and back", async () => {
    const tokens = prompt(48, 13);
    const wasm = await runtimes.pick("wasm");
    for (const [from, to] of [
      [runtime, () => wasm.create({ model, maxPositions: 256, threads: 1 })],
      [() => wasm.create({ model, maxPositions: 256, threads: 1 }), runtime],
    ] as const) {
      const store = new DirectoryStore(scratchDir("snap"));
      const src = await from();
      await src.prefill(tokens);
      const cache = cacheOn(store);
      for (let p = 0; p < 48; p += CHUNK) await cache.save(src, tokens, p, p + CHUNK);
      await cache.flush();
      const dst = await to();
      expect((await cacheOn(store).restore(dst, tokens)).restoredTokens).toBe(48);
      expect(Buffer.compare(await dst.exportKv(0, 48), await src.exportKv(0, 48))).toBe(0);
      // The restored cache is usable: one more token runs on top of it.
      expect((await dst.forward(Int32Array.of(7))).length).toBe(model.config.vocabSize);
      await src.close();
      await dst.close();
    }
  });
});

describe("snapshot cache on s3rver behind the fault proxy", () => {
  let s3: S3Server;
  let proxy: FaultProxy;
  let stop: () => Promise<void>;
  beforeAll(async () => {
    ({ s3, proxy, close: stop } = await startS3BehindProxy());
  });
  afterAll(() => stop?.());
  const s3store = (prefix: string) =>
    new S3Store({
      ...storeOptions(s3, proxy.endpoint),
      prefix,
      sleep: async () => {},
      retry: { attempts: 8 },
      logger: quiet,
    });

  it("faults of every kind: output equals the plain run, bad objects are quarantined, nothing crashes", async () => {
    const tokens = prompt(100, 8);
    const plain = await generate(tokens);
    const store = s3store("faulty/");
    const random = randomFaults({
      seed: 11,
      rate: 0.35,
      faults: [
        { kind: "status", status: 500 },
        { kind: "throttle" },
        { kind: "reset" },
        { kind: "reset-mid-body" },
        { kind: "truncate" },
        { kind: "bitflip" },
        { kind: "bitflip", target: "request", offset: 400 },
        { kind: "slow", delayMs: 20 },
      ],
    });
    let puts = 0;
    // Every kind at random, plus one damaged upload for certain (the second PUT).
    proxy.setSchedule((r) =>
      r.method === "PUT" && ++puts === 2
        ? { kind: "bitflip", target: "request", offset: 400 }
        : random(r),
    );
    const runs = [];
    let quarantined = 0;
    try {
      for (let i = 0; i < 4; i++) {
        const cache = cacheOn(store);
        runs.push(await generate(tokens, cache));
        quarantined += cache.stats().quarantined;
      }
    } finally {
      proxy.setSchedule(() => null);
    }
    for (const r of runs) expect(r.ids).toEqual(plain.ids);
    expect(proxy.injected["bitflip-request"] ?? 0).toBeGreaterThan(0);
    // Damaged uploads end in quarantine (or were overwritten before anyone read them).
    const q: string[] = [];
    for await (const o of store.list("quarantine/")) q.push(o.key);
    expect(q.length).toBeLessThanOrEqual(quarantined);
    // With the faults gone, the chain is whole again and restores fully.
    const clean = await generate(tokens, cacheOn(store));
    expect(clean.cachedTokens).toBe(96);
    expect(clean.ids).toEqual(plain.ids);
    expect(Buffer.compare(clean.kv, plain.kv)).toBe(0);
  });

  it("an object damaged on upload is quarantined by the next restore and recomputed", async () => {
    const tokens = prompt(40, 12);
    const plain = await generate(tokens);
    const store = s3store("damaged/");
    let puts = 0;
    proxy.setSchedule((r) =>
      r.method === "PUT" && puts++ === 0
        ? { kind: "bitflip", target: "request", offset: 500 }
        : null,
    );
    await generate(tokens, cacheOn(store));
    proxy.setSchedule(() => null);
    const cache = cacheOn(store);
    const run = await generate(tokens, cache);
    expect(cache.stats().quarantined).toBe(1);
    expect(run.cachedTokens).toBe(0);
    expect(run.ids).toEqual(plain.ids);
    const q: string[] = [];
    for await (const o of store.list("quarantine/")) q.push(o.key);
    expect(q).toEqual([
      `quarantine/${await cache.objectKey((await cache.chainKeys(tokens, 1))[0])}`,
    ]);
    expect((await generate(tokens, cacheOn(store))).cachedTokens).toBe(32);
  });

  it("a bit flipped in transit is fetched again, not quarantined", async () => {
    const tokens = prompt(40, 9);
    const store = s3store("transit/");
    await generate(tokens, cacheOn(store));
    let flips = 1;
    proxy.setSchedule((r) =>
      r.method === "GET" && flips-- > 0 ? { kind: "bitflip", offset: 1000 } : null,
    );
    const cache = cacheOn(store);
    const warm = await generate(tokens, cache);
    proxy.setSchedule(() => null);
    expect(warm.cachedTokens).toBe(32);
    expect(cache.stats()).toMatchObject({ refetched: 1, quarantined: 0 });
  });

  it("uploads run behind compute with at most maxPendingUploads in flight", async () => {
    const tokens = prompt(120, 10);
    const store = s3store("pressure/");
    proxy.setSchedule((r) => (r.method === "PUT" ? { kind: "slow", delayMs: 60 } : null));
    const cache = cacheOn(store, { maxPendingUploads: 2 });
    const run = await generate(tokens, cache);
    proxy.setSchedule(() => null);
    const s = cache.stats();
    expect(s.peakPendingUploads).toBe(2);
    expect(s.uploads).toBe(7);
    expect(s.pendingUploads).toBe(0);
    expect(run.cachedTokens).toBe(0);
    expect((await generate(tokens, cacheOn(store))).cachedTokens).toBe(112);
  });

  it("saves called at once (two runtimes, one tenant's cache) still keep to maxPendingUploads", async () => {
    const tokens = prompt(2 * CHUNK, 12);
    const store = s3store("concurrent/");
    proxy.setSchedule((r) => (r.method === "PUT" ? { kind: "slow", delayMs: 60 } : null));
    const cache = cacheOn(store, { maxPendingUploads: 1 });
    const rts = [await runtime(), await runtime()];
    for (const rt of rts) await rt.prefill(tokens);
    await Promise.all(
      rts.flatMap((rt) => [0, 1].map((i) => cache.save(rt, tokens, i * CHUNK, (i + 1) * CHUNK))),
    );
    await cache.flush();
    proxy.setSchedule(() => null);
    // The second runtime's two chunks find the first's objects already stored (same keys).
    expect(cache.stats()).toMatchObject({
      peakPendingUploads: 1,
      uploads: 2,
      uploadsSkipped: 2,
      uploadErrors: 0,
    });
    for (const rt of rts) await rt.close();
  });
});
