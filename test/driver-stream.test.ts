// The sequence driver with a streamed prompt (an async iterable of token chunks) on the reference
// runtime and the real snapshot cache over a directory: the same tokens, usage and KV bytes as the
// whole prompt (fresh, reused from the runtime, restored from snapshots), progress before the rest
// of the prompt is asked for, cancellation while the upload is stalled, a bad id in a later chunk.
import { cpSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import {
  type DriverEvent,
  type GenerateRequest,
  SequenceDriver,
  type TokenEvent,
} from "../core/engine/driver.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import type { Runtime } from "../core/engine/runtime.ts";
import { CancelledError, InvalidInputError } from "../core/errors.ts";
import { createSnapshotCache } from "../core/kv/snapshot-cache.ts";
import type { LoadedModel } from "../core/model/weights.ts";
import { nodeSha256 } from "../core/node/hasher.ts";
import { DirectoryStore } from "../core/node/snapshot-dir.ts";
import { loadTestModel, SMALL_VOCAB, scratchDir } from "./support/models.ts";

let model: LoadedModel;
let prompt: Int32Array;
const SNAPSHOT_CHUNK = 16;

beforeAll(async () => {
  model = await loadTestModel(SMALL_VOCAB);
  prompt = Int32Array.from({ length: 150 }, (_, i) => (i * 37 + 11) % 512);
});

async function newDriver() {
  const runtime = await createReferenceRuntime({ model, maxPositions: 256 });
  return { runtime, driver: new SequenceDriver(runtime, { eosTokenIds: [], chunkTokens: 24 }) };
}

/** `tokens` in chunks of the given sizes (cycled), as an upload would arrive. */
async function* chunks(tokens: Int32Array, sizes: number[]): AsyncGenerator<Int32Array> {
  for (let at = 0, i = 0; at < tokens.length; i++) {
    const n = sizes[i % sizes.length];
    yield tokens.slice(at, at + n);
    at += n;
    await new Promise((r) => setImmediate(r));
  }
}

async function run(driver: SequenceDriver, runtime: Runtime, request: GenerateRequest) {
  const events: DriverEvent[] = [];
  for await (const e of driver.generate({ maxTokens: 6, sampling: { temperature: 0 }, ...request }))
    events.push(e);
  const done = events.at(-1)!;
  expect(done.type).toBe("done");
  return {
    ids: events.filter((e): e is TokenEvent => e.type === "token").map((e) => e.id),
    usage: done.type === "done" ? done.usage : null,
    kv: await runtime.exportKv(0, runtime.position),
    progress: events.flatMap((e) => (e.type === "progress" ? [e] : [])),
  };
}

const SIZES = [[1], [7, 1, 30], [64], [15, 16, 17], [150]];

describe("a streamed prompt", () => {
  it("gives the tokens, usage and KV bytes of the whole prompt, however it is cut", async () => {
    const whole = await newDriver();
    const want = await run(whole.driver, whole.runtime, { prompt });
    for (const sizes of SIZES) {
      const s = await newDriver();
      const got = await run(s.driver, s.runtime, { prompt: chunks(prompt, sizes) });
      expect(got.ids).toEqual(want.ids);
      expect(got.usage).toEqual(want.usage);
      expect(Buffer.from(got.kv).equals(Buffer.from(want.kv))).toBe(true);
      const last = got.progress.at(-1)!;
      expect(last).toMatchObject({ doneTokens: prompt.length, totalTokens: prompt.length });
      expect(last.promptComplete).toBe(true);
    }
  });

  it("reuses what the runtime holds and restores snapshots exactly as the whole prompt does", async () => {
    // Every run starts from the seed's snapshots (a run saves what it computes: the whole prompt's
    // run must not feed the streamed one).
    const seedDir = scratchDir("snapshots");
    const cacheFor = (runtime: Runtime, seeding = false) => {
      const dir = seeding ? seedDir : scratchDir("snapshots");
      if (!seeding) cpSync(seedDir, dir, { recursive: true });
      return createSnapshotCache({
        store: new DirectoryStore(dir),
        modelFingerprint: "e".repeat(64),
        kvLayout: runtime.info.kv,
        tenantSalt: "salt",
        chunkTokens: SNAPSHOT_CHUNK,
        sha256: nodeSha256,
      });
    };
    // Saves the snapshots of the first 100 tokens.
    const seed = await newDriver();
    const seedCache = cacheFor(seed.runtime, true);
    await run(seed.driver, seed.runtime, {
      prompt: prompt.subarray(0, 100),
      prefixCache: seedCache,
    });
    await seedCache.flush();
    // A follow-up on the same runtime: the held 100 tokens (minus the partial chunk) are kept and
    // the chain continues from there.
    const follow = prompt.subarray(0, 140);
    for (const sizes of SIZES) {
      const results = [];
      for (const source of [follow, chunks(follow, sizes)]) {
        // A fresh runtime each time (restore), and one holding the first 100 tokens (reuse).
        const fresh = await newDriver();
        const restored = await run(fresh.driver, fresh.runtime, {
          prompt: source === follow ? follow : chunks(follow, sizes),
          prefixCache: cacheFor(fresh.runtime),
        });
        const held = await newDriver();
        await run(held.driver, held.runtime, {
          prompt: prompt.subarray(0, 100),
          isolationKey: "t",
        });
        const reused = await run(held.driver, held.runtime, {
          prompt: source,
          prefixCache: cacheFor(held.runtime),
          isolationKey: "t",
        });
        results.push({ restored, reused });
      }
      const [w, s] = results;
      // 96 = the six whole 16-token chunks the seed saved; the follow-up's 7th..8th chunks were
      // never stored.
      expect(w.restored.usage?.cachedTokens).toBe(96);
      expect(w.reused.usage?.cachedTokens).toBeGreaterThanOrEqual(96);
      for (const k of ["restored", "reused"] as const) {
        expect(s[k].ids).toEqual(w[k].ids);
        expect(s[k].usage).toEqual(w[k].usage);
        expect(Buffer.from(s[k].kv).equals(Buffer.from(w[k].kv))).toBe(true);
      }
    }
  });

  it("reports progress on its first chunk before the driver asks for the rest", async () => {
    const { driver } = await newDriver();
    const order: string[] = [];
    async function* source() {
      order.push("sent 30");
      yield prompt.slice(0, 30);
      order.push("sent 150");
      yield prompt.slice(30);
    }
    for await (const e of driver.generate({ prompt: source(), maxTokens: 1 }))
      if (e.type === "progress") order.push(`progress ${e.doneTokens}/${e.promptComplete}`);
    // The 24-token chunk is computed from the first 30 tokens, before the next read.
    expect(order.slice(0, 4)).toEqual([
      "sent 30",
      "progress 0/false",
      "progress 24/false",
      "sent 150",
    ]);
  });

  it("is cancelled while the upload is stalled, keeping what it computed", async () => {
    const { driver, runtime } = await newDriver();
    const abort = new AbortController();
    async function* stalled() {
      yield prompt.slice(0, 50);
      await new Promise(() => {}); // the client sends nothing more
    }
    const seen: number[] = [];
    await expect(
      (async () => {
        for await (const e of driver.generate({ prompt: stalled(), signal: abort.signal })) {
          if (e.type !== "progress") continue;
          seen.push(e.doneTokens);
          // After the driver has gone back to waiting for the next chunk.
          if (e.doneTokens === 48) setImmediate(() => abort.abort());
        }
      })(),
    ).rejects.toBeInstanceOf(CancelledError);
    expect(seen).toEqual([0, 24, 48]);
    expect(runtime.position).toBe(48);
    expect(driver.heldTokens).toEqual(Array.from(prompt.subarray(0, 48)));
  });

  it("refuses a bad id in a later chunk with one InvalidInputError, the driver still consistent", async () => {
    const { driver, runtime } = await newDriver();
    async function* bad() {
      yield prompt.slice(0, 60);
      yield Int32Array.of(1, 2, 512);
    }
    await expect(
      (async () => {
        for await (const _ of driver.generate({ prompt: bad() }));
      })(),
    ).rejects.toThrow(new InvalidInputError("prompt token id 512 is outside [0, 512)"));
    expect(driver.heldTokens).toEqual(Array.from(prompt.subarray(0, runtime.position)));
    // And the driver serves the next request, reusing what it holds.
    const next = await run(driver, runtime, { prompt });
    expect(next.usage?.cachedTokens).toBe(48);
  });
});
