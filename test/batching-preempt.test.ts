// Preemption through the snapshot store (core/engine/kv-swap.ts): a preempted sequence's KV goes to
// a real store (a directory, and s3rver) as snapshot objects, not to the heap, and comes back
// exactly; without a store it goes to host memory up to a budget, past which the victim alone fails
// with BusyError; a corrupt or missing object fails that request alone; two tenants' swaps never
// share objects.
//
// The scenarios are deterministic: calls are made one after another, so which sequence the
// scheduler preempts is fixed (the newest idle one when the oldest needs blocks).
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KvSwap } from "../core/engine/kv-swap.ts";
import { createPagedReferenceRuntime } from "../core/engine/paged-reference-runtime.ts";
import type { PagedRuntime } from "../core/engine/paged-runtime.ts";
import type { PagedSequence } from "../core/engine/paged-sequence.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import type { Runtime } from "../core/engine/runtime.ts";
import { BatchScheduler } from "../core/engine/scheduler.ts";
import { BusyError } from "../core/errors.ts";
import { tenantTag } from "../core/kv/chain-key.ts";
import { kvPayloadBytes } from "../core/kv/layout.ts";
import { S3Store } from "../core/kv/s3-store.ts";
import { type SnapshotStore, StoreError } from "../core/kv/store.ts";
import type { LoadedModel } from "../core/model/weights.ts";
import { DirectoryStore } from "../core/node/snapshot-dir.ts";
import { ensureBuilt } from "../wasm/build.mjs";
import { createPagedWasmRuntime } from "../wasm/src/paged-runtime.ts";
import { type S3Server, startS3, storeOptions } from "./harness/s3.ts";
import { loadTestModel, SMALL_VOCAB } from "./support/models.ts";
import { suiteTokens } from "./support/runtime-suite.ts";

await ensureBuilt({ root: join(import.meta.dirname, "..") });

let model: LoadedModel;
let fingerprint: string;
const dirs: string[] = [];

beforeAll(async () => {
  model = await loadTestModel(SMALL_VOCAB);
  fingerprint = await model.fingerprint();
});
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function dirStore(): Promise<DirectoryStore> {
  const dir = await mkdtemp(join(tmpdir(), "ultralong-swap-"));
  dirs.push(dir);
  return new DirectoryStore(dir);
}

const tokens = (n: number, seed: number) => suiteTokens(n, 500, seed);

async function swapKeys(store: SnapshotStore, prefix = "swap/"): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of store.list(prefix)) keys.push(o.key);
  return keys.sort();
}

/** `inner` with some of its methods replaced (a slow or counting store over a real one). */
function over(inner: SnapshotStore, own: Partial<SnapshotStore>): SnapshotStore {
  return {
    name: inner.name,
    put: (key, bytes) => inner.put(key, bytes),
    create: (key, bytes) => inner.create(key, bytes),
    get: (key, range) => inner.get(key, range),
    head: (key) => inner.head(key),
    delete: (key) => inner.delete(key),
    list: (prefix) => inner.list(prefix),
    move: (from, to) => inner.move(from, to),
    ...own,
  };
}

/** `inner` whose reads wait until `open()` (a slow store), counting them. */
function heldReads(inner: SnapshotStore) {
  let open = () => {};
  const gate = new Promise<void>((r) => {
    open = r;
  });
  let reads = 0;
  const store = over(inner, {
    get: async (key, range) => {
      reads++;
      await gate;
      return inner.get(key, range);
    },
  });
  return { store, open: () => open(), reads: () => reads };
}

/**
 * The preemption scenario over a directory store whose reads are held (heldReads): b swapped, its
 * pieces written (in the store only), a open.
 */
async function swappedBehindHeldReads() {
  const inner = await dirStore();
  const held = heldReads(inner);
  const runtime = await referencePool();
  const scheduler = new BatchScheduler(runtime, {
    swap: {
      store: held.store,
      modelFingerprint: fingerprint,
      chunkTokens: 16,
      maxHostBytes: 1 << 20,
    },
  });
  const { a, b } = await fillAndPreempt(scheduler);
  await scheduler.swap.settled();
  return { inner, held, runtime, scheduler, a, b };
}

/** A scheduler whose swaps go to `store` only (no host memory), in pieces of 16 positions. */
function storeScheduler(runtime: PagedRuntime, store: SnapshotStore, chunkTokens = 16) {
  return new BatchScheduler(runtime, {
    swap: { store, modelFingerprint: fingerprint, chunkTokens, maxHostBytes: 0 },
  });
}

/** 10 blocks of 8 positions: two sequences of 40 fill it. */
function referencePool(): Promise<PagedRuntime> {
  return createPagedReferenceRuntime({
    model,
    maxPositions: 256,
    blockTokens: 8,
    poolPositions: 80,
  });
}

/** Old `a` and new `b` fill the pool of 2n positions; a's next call needs a block: b is preempted. */
async function fillAndPreempt(scheduler: BatchScheduler, n = 40) {
  const a = scheduler.open("t");
  const b = scheduler.open("t");
  const out = [await a.forward(tokens(n, 1)), await b.forward(tokens(n, 2))];
  out.push(await a.forward(tokens(8, 3)));
  return { a, b, out };
}

/**
 * Old (`a`) and new (`b`) sequences fill the pool; a's next call preempts idle b (`whileSwapped`
 * runs then). Returns the logits of every call, b's last one made after the preemption (b
 * restored, a preempted in turn).
 */
async function preemptScenario(
  scheduler: BatchScheduler,
  n = 40,
  whileSwapped: (b: PagedSequence) => Promise<void> = async () => {},
) {
  const { a, b, out } = await fillAndPreempt(scheduler, n);
  const stats = scheduler.stats();
  await whileSwapped(b);
  out.push(await b.forward(tokens(1, 4))); // b restored (a preempted to make room)
  out.push(await a.forward(tokens(1, 5)));
  return { a, b, out, stats };
}

/**
 * The scenario with b's KV in `store`: objects appear there (none in memory) in the snapshot
 * format, sealed, under the tenant's tag; restored == never preempted; nothing left afterwards.
 */
async function checkThroughStore(store: SnapshotStore): Promise<void> {
  const runtime = await referencePool();
  const scheduler = storeScheduler(runtime, store);
  const { a, b, out } = await preemptScenario(scheduler, 40, async (victim) => {
    // b is out of the pool: three objects (16 + 16 + a partial 8) in the store, none in memory.
    const st = scheduler.stats();
    expect(st.preemptions).toBe(1);
    expect(st.swapped).toBe(1);
    expect(victim.blocks).toEqual([]);
    expect(st.swap.hostBytes).toBe(0);
    expect(st.swap.storeBytesWritten).toBeGreaterThan(0);
    const tag = await tenantTag("t");
    const keys = await swapKeys(store);
    expect(keys).toHaveLength(3);
    for (const k of keys) {
      expect(k.startsWith(`swap/v1/${fingerprint.slice(0, 16)}/${tag}/`)).toBe(true);
    }
    expect(keys.map((k) => k.split("/").at(-1)).sort()).toEqual(["0", "16", "32"]);
    const first = await store.get(keys[0]);
    expect(new TextDecoder().decode(first.subarray(0, 8))).toBe("ULKVSNAP");
    expect(new DataView(first.buffer, first.byteOffset).getUint32(12, true) & 1).toBe(1);
  });
  const st = scheduler.stats();
  expect(st.preemptions).toBeGreaterThanOrEqual(2);
  expect(st.swap.restoreFailures).toBe(0);
  const single = await createReferenceRuntime({ model, maxPositions: 256 });
  const want = await alone(single);
  await single.close();
  for (const [i, w] of want.entries()) expect(out[i]).toEqual(w);
  await closeAll(scheduler, store, [a, b]);
  await runtime.close();
}

/** Closes `seqs`: every swap object is deleted (restored ones already were) and every block back. */
async function closeAll(scheduler: BatchScheduler, store: SnapshotStore, seqs: PagedSequence[]) {
  for (const s of seqs) await s.close();
  await scheduler.swap.settled();
  expect(await swapKeys(store)).toEqual([]);
  expect(scheduler.stats().blocks.used).toBe(0);
}

/** The same calls on a runtime alone (never preempted). */
async function alone(rt: Runtime, n = 40): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  const run = async (calls: Array<[number, number]>) => {
    rt.truncate(0);
    const got: Float32Array[] = [];
    for (const [len, seed] of calls) got.push(await rt.forward(tokens(len, seed)));
    return got;
  };
  const [a1, a2, a3] = await run([
    [n, 1],
    [8, 3],
    [1, 5],
  ]);
  const [b1, b2] = await run([
    [n, 2],
    [1, 4],
  ]);
  out.push(a1, b1, a2, b2, a3);
  return out;
}

describe("preemption through the snapshot store", () => {
  it("writes the victim's KV to a directory store, not memory, and restores it exactly", async () => {
    await checkThroughStore(await dirStore());
  });

  it("keeps preempted == never preempted for concurrent sequences through the store", async () => {
    const runtime = await referencePool();
    const store = await dirStore();
    const scheduler = new BatchScheduler(runtime, {
      maxBatchTokens: 16,
      swap: { store, modelFingerprint: fingerprint, chunkTokens: 8, maxHostBytes: 0 },
    });
    const work = [0, 1, 2].map((i) => [
      tokens(20, 30 + i),
      ...Array.from({ length: 12 }, (_, k) => tokens(1, 40 + 13 * i + k)),
    ]);
    const batched = await Promise.all(
      work.map(async (calls) => {
        const seq = scheduler.open("t");
        const out: Float32Array[] = [];
        for (const c of calls) out.push(await seq.forward(c));
        await seq.close();
        return out;
      }),
    );
    const st = scheduler.stats();
    expect(st.preemptions).toBeGreaterThan(0);
    expect(st.swap.storeBytesWritten).toBeGreaterThan(0);
    expect(st.swap.hostBytes).toBe(0);
    for (const [i, calls] of work.entries()) {
      const single = await createReferenceRuntime({ model, maxPositions: 256 });
      for (const [c, call] of calls.entries())
        expect(batched[i][c]).toEqual(await single.forward(call));
      await single.close();
    }
    await scheduler.swap.settled();
    expect(await swapKeys(store)).toEqual([]);
    await runtime.close();
  });

  it("restores exactly on the wasm runtime too", async () => {
    // 4 blocks of 64: two sequences of 128 fill it.
    const opts = { model, threads: 1, maxPositions: 512, blockTokens: 64 };
    const runtime = await createPagedWasmRuntime({ ...opts, poolPositions: 256 });
    const store = await dirStore();
    const scheduler = new BatchScheduler(runtime, {
      swap: { store, modelFingerprint: fingerprint, chunkTokens: 64, maxHostBytes: 0 },
    });
    const { out } = await preemptScenario(scheduler, 128);
    expect(scheduler.stats().preemptions).toBeGreaterThanOrEqual(2);
    expect(scheduler.stats().swap.storeBytesWritten).toBeGreaterThan(0);
    // Never preempted: the same calls, one sequence at a time, on a pool that holds them.
    const roomy = await createPagedWasmRuntime({ ...opts, poolPositions: 512 });
    const other = new BatchScheduler(roomy);
    const want = await alone(other.open("t"), 128);
    expect(other.stats().preemptions).toBe(0);
    for (const [i, w] of want.entries()) expect(out[i]).toEqual(w);
    await runtime.close();
    await roomy.close();
  });

  it("fails only the request whose swap object is corrupt or missing", async () => {
    for (const damage of ["corrupt", "missing"] as const) {
      const runtime = await referencePool();
      const store = await dirStore();
      const scheduler = storeScheduler(runtime, store);
      const { a, b } = await fillAndPreempt(scheduler); // b preempted into the store
      const [key] = (await swapKeys(store)).slice(-1);
      const path = join(store.root, key);
      if (damage === "corrupt") {
        const bytes = await readFile(path);
        bytes[bytes.length - 100] ^= 1; // a payload byte
        await writeFile(path, bytes);
      } else {
        await rm(path);
      }
      await expect(b.forward(tokens(1, 4))).rejects.toBeInstanceOf(StoreError);
      await expect(b.forward(tokens(1, 4))).rejects.toBeInstanceOf(StoreError); // and stays failed
      expect(scheduler.stats().swap.restoreFailures).toBe(1);
      // a goes on, exactly.
      const got = await a.forward(tokens(1, 5));
      const single = await createReferenceRuntime({ model, maxPositions: 256 });
      await single.forward(tokens(40, 1));
      await single.forward(tokens(8, 3));
      expect(got).toEqual(await single.forward(tokens(1, 5)));
      await single.close();
      await closeAll(scheduler, store, [a, b]);
      await runtime.close();
    }
  });

  it("without a store, or when its writes fail, keeps swapped KV in host memory up to the budget, then fails the victim", async () => {
    const single = await createReferenceRuntime({ model, maxPositions: 256 });
    const want = await alone(single);
    await single.close();
    const perToken = kvPayloadBytes((await referencePool()).info.kv, 1);
    // A store that refuses every write: a directory store whose root is a regular file.
    const notADir = join(await mkdtemp(join(tmpdir(), "ultralong-swap-")), "file");
    dirs.push(notADir);
    await writeFile(notADir, "not a directory");
    // Within the budget: exact, and the bytes are counted while swapped. A restore preempts first
    // and frees its own bytes after: a's 48 positions with b's 40, then b's 41 with a's 48.
    for (const store of [undefined, new DirectoryStore(notADir)]) {
      const warnings: string[] = [];
      const runtime = await referencePool();
      const scheduler = new BatchScheduler(runtime, {
        swap: {
          store,
          modelFingerprint: fingerprint,
          maxHostBytes: 89 * perToken,
          logger: { debug() {}, warn: (m) => warnings.push(m) },
        },
      });
      const { out, stats } = await preemptScenario(scheduler);
      expect(stats.swap.hostBytes).toBe(40 * perToken);
      expect(stats.swapped).toBe(1);
      for (const [i, w] of want.entries()) expect(out[i]).toEqual(w);
      // The writes (failing) run in the background: their errors are counted once they end.
      await scheduler.swap.settled();
      const st = scheduler.stats().swap;
      expect(st.hostBytes).toBe(41 * perToken); // b, preempted again
      expect(st.storeBytesWritten).toBe(0);
      expect(st.storeWriteErrors).toBe(store ? 3 : 0); // b, a, b again: one piece each
      expect(warnings.length).toBe(st.storeWriteErrors);
      await runtime.close();
    }
    // Past it: b (the victim) fails with BusyError (HTTP 503), a goes on; nothing is held.
    {
      const runtime = await referencePool();
      const scheduler = new BatchScheduler(runtime, { swap: { maxHostBytes: 40 * perToken - 1 } });
      const { a, b, out } = await fillAndPreempt(scheduler);
      expect(out[2]).toEqual(want[2]);
      expect(scheduler.stats().swap.hostBytes).toBe(0);
      expect(scheduler.stats().swapped).toBe(0);
      const err = await b.forward(tokens(1, 4)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BusyError);
      expect((err as BusyError).retryAfterS).toBeGreaterThan(0);
      expect((err as Error).message).toMatch(/swap budget/);
      expect(await a.forward(tokens(1, 5))).toEqual(want[4]);
      await runtime.close();
    }
  });

  it("writes to the store in the background: the step that preempts does not wait for it", async () => {
    // A directory store whose writes wait for `open` (a slow store): the preempting call returns
    // while every write is still held; the KV sits in host memory, counted, until they land.
    const inner = await dirStore();
    let open = () => {};
    let gate = Promise.resolve();
    const slow = over(inner, {
      put: async (key, bytes) => {
        await gate;
        await inner.put(key, bytes);
      },
    });
    const perToken = kvPayloadBytes((await referencePool()).info.kv, 1);
    const single = await createReferenceRuntime({ model, maxPositions: 256 });
    const want = await alone(single);
    await single.close();
    for (const restoreBeforeWrites of [false, true]) {
      gate = new Promise<void>((r) => {
        open = r;
      });
      const runtime = await referencePool();
      const scheduler = new BatchScheduler(runtime, {
        swap: {
          store: slow,
          modelFingerprint: fingerprint,
          chunkTokens: 16,
          maxHostBytes: 1 << 20,
        },
      });
      const { a, b, out } = await fillAndPreempt(scheduler); // b preempted; a's call returned
      expect(scheduler.stats().swapped).toBe(1);
      expect(scheduler.stats().swap.hostBytes).toBe(40 * perToken);
      expect(await swapKeys(inner)).toEqual([]); // nothing written yet
      if (!restoreBeforeWrites) {
        open();
        await scheduler.swap.settled();
        expect(await swapKeys(inner)).toHaveLength(3);
        expect(scheduler.stats().swap.hostBytes).toBe(0);
      }
      // b comes back exactly (from memory while its writes are held, else from the store).
      out.push(await b.forward(tokens(1, 4)));
      out.push(await a.forward(tokens(1, 5)));
      for (const [i, w] of want.entries()) expect(out[i]).toEqual(w);
      open();
      await closeAll(scheduler, inner, [a, b]);
      expect(scheduler.stats().swap.hostBytes).toBe(0);
      await runtime.close();
    }
  });

  it("reads a swapped sequence's pieces back ahead of its restore, within the host budget", async () => {
    const inner = await dirStore();
    let gets = 0;
    const counting = over(inner, {
      get: (key, range) => {
        gets++;
        return inner.get(key, range);
      },
    });
    const runtime = await referencePool();
    const perToken = kvPayloadBytes(runtime.info.kv, 1);
    const table = Int32Array.of(0, 1, 2, 3, 4);
    await runtime.step([{ tokens: tokens(40, 9), start: 0, table, logits: false }]);
    const kv = {
      export: (a: number, b: number) => runtime.exportKv(table, a, b),
      import: (a: number, b: number, bytes: Uint8Array) =>
        runtime.importKv(table, a, bytes, b - a, runtime.info.kv.dtype),
    };
    const before = await kv.export(0, 40);
    const zeros = new Uint8Array(before.length);
    for (const budget of [64, 20]) {
      // Pieces of 16, 16, 8 positions; a budget of 20 positions' bytes reads only the first ahead.
      const swap = new KvSwap(runtime.info.kv, runtime.info.blockTokens, {
        store: counting,
        modelFingerprint: fingerprint,
        chunkTokens: 16,
        maxHostBytes: budget * perToken,
      });
      const saved = await swap.save("t", 0, 0, 40, kv);
      await swap.settled(); // written; nothing in memory
      expect(swap.stats().hostBytes).toBe(0);
      await kv.import(0, 40, zeros);
      gets = 0;
      swap.prefetch(saved, 40);
      await swap.settled();
      const ahead = budget === 64 ? 40 : 16;
      expect(gets).toBe(budget === 64 ? 3 : 1);
      expect(swap.stats().storeBytesPrefetched).toBe(ahead * perToken);
      expect(swap.stats().hostBytes).toBe(ahead * perToken);
      await swap.restore(saved, 40, kv);
      expect(gets).toBe(3); // each piece read once, ahead or by the restore
      expect(await kv.export(0, 40)).toEqual(before);
      expect(swap.stats().hostBytes).toBe(0);
      await swap.settled();
      expect(await swapKeys(inner)).toEqual([]);
    }
    // A piece that cannot be read ahead (damaged) is left to the restore, which refuses it.
    const swap = new KvSwap(runtime.info.kv, runtime.info.blockTokens, {
      store: counting,
      modelFingerprint: fingerprint,
      chunkTokens: 16,
      maxHostBytes: 64 * perToken,
    });
    const saved = await swap.save("t", 0, 0, 40, kv);
    await swap.settled();
    const [first] = await swapKeys(inner);
    await writeFile(join(inner.root, first), "damaged");
    swap.prefetch(saved, 40);
    await swap.settled();
    expect(swap.stats().storeBytesPrefetched).toBe(24 * perToken); // the other two
    await expect(swap.restore(saved, 40, kv)).rejects.toBeInstanceOf(StoreError);
    expect(swap.stats().hostBytes).toBe(0);
    await runtime.close();
  });

  it("prefetches a sequence that waits for room, so its restore imports from memory", async () => {
    const store = await dirStore();
    const runtime = await referencePool();
    const scheduler = new BatchScheduler(runtime, {
      maxBatchTokens: 8,
      swap: { store, modelFingerprint: fingerprint, chunkTokens: 16, maxHostBytes: 1 << 20 },
    });
    const { a, b, out } = await fillAndPreempt(scheduler); // b swapped; a holds 6 of 10 blocks
    await scheduler.swap.settled(); // b's pieces are in the store, not in memory
    expect(scheduler.stats().swap.hostBytes).toBe(0);
    // a's 24-token prefill runs in three steps (a is older and busy: b cannot take its blocks),
    // b's call waits for room meanwhile, and its pieces are read back; then b comes back.
    const [, bLogits] = await Promise.all([a.prefill(tokens(24, 6)), b.forward(tokens(1, 4))]);
    expect(scheduler.stats().swap.storeBytesPrefetched).toBeGreaterThan(0);
    const single = await createReferenceRuntime({ model, maxPositions: 256 });
    await single.forward(tokens(40, 2));
    expect(bLogits).toEqual(await single.forward(tokens(1, 4)));
    expect(out[1]).toEqual((await alone(single))[1]);
    await single.close();
    await closeAll(scheduler, store, [a, b]);
    await runtime.close();
  });

  it("reads a swapped sequence back off the step's path: the others decode while the store is slow", async () => {
    // A directory store whose reads wait for `open`: b's restore cannot read its pieces, yet c's
    // decode steps run meanwhile; once the reads land, b comes back exactly.
    const { inner, held, runtime, scheduler, a, b } = await swappedBehindHeldReads();
    await a.close(); // room for b, and for c
    const c = scheduler.open("t");
    const cOut = [await c.forward(tokens(16, 7))];
    let bDone = false;
    const bCall = b.forward(tokens(1, 4)).then((l) => {
      bDone = true;
      return l;
    });
    const cSteps = (async () => {
      for (let i = 0; i < 4; i++) cOut.push(await c.forward(tokens(1, 10 + i)));
      return "ran";
    })();
    // A liveness bound, not a timing: before, the step waited for b's reads, so c never ran.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stalled = new Promise((r) => {
      timer = setTimeout(() => r("stalled"), 10_000);
    });
    const ran = await Promise.race([cSteps, stalled]);
    clearTimeout(timer);
    if (ran !== "ran") held.open(); // let the calls finish before the test fails
    expect(ran).toBe("ran");
    expect(bDone).toBe(false); // still waiting for its pieces
    expect(held.reads()).toBeGreaterThan(0);
    expect(scheduler.stats().swapped).toBe(1);
    held.open();
    const bLogits = await bCall;
    const single = await createReferenceRuntime({ model, maxPositions: 256 });
    await single.forward(tokens(40, 2));
    expect(bLogits).toEqual(await single.forward(tokens(1, 4)));
    single.truncate(0);
    const cWant = [await single.forward(tokens(16, 7))];
    for (let i = 0; i < 4; i++) cWant.push(await single.forward(tokens(1, 10 + i)));
    expect(cOut).toEqual(cWant);
    await single.close();
    await closeAll(scheduler, inner, [b, c]);
    await runtime.close();
  });

  it("a swapped sequence's call cancelled while its pieces are read back leaves the scheduler idle", async () => {
    const { inner, held, runtime, scheduler, a, b } = await swappedBehindHeldReads(); // a idle
    const abort = new AbortController();
    const call = b.forward(tokens(1, 4), abort.signal);
    for (let i = 0; i < 1000 && held.reads() === 0; i++) await new Promise((r) => setImmediate(r));
    expect(held.reads()).toBe(1); // its read-back has begun (and waits at the gate)
    abort.abort();
    await expect(call).rejects.toThrow();
    held.open();
    await scheduler.swap.settled();
    await new Promise((r) => setTimeout(r, 10)); // the read-back's end has woken the pump
    // Nothing to run now: the pump has stopped. (It once kicked itself again and again here, a
    // setImmediate spin, or with no idle sequence a synchronous recursion.)
    const real = globalThis.setImmediate;
    let turns = 0;
    globalThis.setImmediate = ((fn: (...a: unknown[]) => void, ...args: unknown[]) => {
      turns++;
      return real(fn, ...args);
    }) as typeof setImmediate;
    try {
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      globalThis.setImmediate = real;
    }
    expect(turns).toBeLessThan(10);
    // And it still serves: b comes back exactly.
    const single = await createReferenceRuntime({ model, maxPositions: 256 });
    await single.forward(tokens(40, 2));
    expect(await b.forward(tokens(1, 4))).toEqual(await single.forward(tokens(1, 4)));
    await single.close();
    await closeAll(scheduler, inner, [a, b]);
    await runtime.close();
  });

  it("never lets two tenants' swapped sequences share objects", async () => {
    const runtime = await referencePool();
    const store = await dirStore();
    const scheduler = storeScheduler(runtime, store);
    const old = scheduler.open("o");
    const x = scheduler.open("x");
    const y = scheduler.open("y");
    await old.forward(tokens(16, 1));
    // The same tokens in both tenants: content-named objects would collide; swap objects do not.
    await x.forward(tokens(32, 2));
    await y.forward(tokens(32, 2));
    await old.forward(tokens(64, 3)); // 8 more blocks: y, then x, preempted
    expect(scheduler.stats().swapped).toBe(2);
    const keys = await swapKeys(store);
    expect(keys).toHaveLength(4);
    const [tx, ty] = [await tenantTag("x"), await tenantTag("y")];
    const ofX = keys.filter((k) => k.split("/")[3] === tx);
    const ofY = keys.filter((k) => k.split("/")[3] === ty);
    expect(ofX).toHaveLength(2);
    expect(ofY).toHaveLength(2);
    // Each sequence's objects sit in a directory of its own.
    const seqDir = (k: string) => k.split("/").slice(0, -1).join("/");
    expect(new Set(ofX.map(seqDir)).size).toBe(1);
    expect(seqDir(ofX[0])).not.toBe(seqDir(ofY[0]));
    // An object moved under the other tenant's key is refused, not imported.
    const yFirst = ofY.find((k) => k.endsWith("/0")) as string;
    const xFirst = ofX.find((k) => k.endsWith("/0")) as string;
    await writeFile(join(store.root, yFirst), await readFile(join(store.root, xFirst)));
    await old.close(); // room for both
    await expect(y.forward(tokens(1, 4))).rejects.toBeInstanceOf(StoreError);
    const single = await createReferenceRuntime({ model, maxPositions: 256 });
    await single.forward(tokens(32, 2));
    expect(await x.forward(tokens(1, 4))).toEqual(await single.forward(tokens(1, 4)));
    await single.close();
    await runtime.close();
  });
});

describe("preemption with a shared document (its blocks stay in the pool)", () => {
  /** The alone runtime's logits of `calls` after `prefix` (tokens given as [length, seed]). */
  async function aloneAfter(prefix: Int32Array, calls: Array<[number, number]>) {
    const rt = await createReferenceRuntime({ model, maxPositions: 256 });
    await rt.prefill(prefix);
    const out: Float32Array[] = [];
    for (const [len, seed] of calls) out.push(await rt.forward(tokens(len, seed)));
    await rt.close();
    return out;
  }

  it("writes only the victim's own blocks, keeps the shared ones in its table, and restores exactly", async () => {
    const store = await dirStore();
    const runtime = await referencePool(); // 10 blocks of 8
    const scheduler = storeScheduler(runtime, store);
    const doc = tokens(24, 10); // 3 whole blocks
    const a = scheduler.open("t");
    await a.prefill(doc);
    const b = scheduler.open("t");
    b.attach(a.blocksOf(0, 24));
    const bOut = [await b.forward(tokens(16, 11))]; // 2 blocks of b's own: 5 used
    const aOut = [await a.forward(tokens(16, 12)), await a.forward(tokens(24, 13))]; // 10 used
    // a's next block: idle b is preempted; its 3 shared blocks are neither written nor freed.
    aOut.push(await a.forward(tokens(8, 14)));
    const st = scheduler.stats();
    expect(st.preemptions).toBe(1);
    expect(st.preemptionKeptBlocks).toBe(3);
    expect(b.swapped?.from).toBe(24);
    expect(b.blocks).toEqual(a.blocks.slice(0, 3));
    const keys = await swapKeys(store);
    expect(keys.map((k) => k.split("/").at(-1))).toEqual(["24"]); // [24, 40) only
    // The one object holds 16 positions' KV, not 40.
    const object = await store.get(keys[0]);
    expect(object.length).toBeGreaterThan(kvPayloadBytes(runtime.info.kv, 16));
    expect(object.length).toBeLessThan(kvPayloadBytes(runtime.info.kv, 24));
    // b goes on (a preempted in turn, keeping the same 3 blocks), then a again.
    bOut.push(await b.forward(tokens(1, 15)));
    aOut.push(await a.forward(tokens(1, 16)));
    expect(scheduler.stats().preemptions).toBeGreaterThanOrEqual(2);
    expect(aOut).toEqual(
      await aloneAfter(doc, [
        [16, 12],
        [24, 13],
        [8, 14],
        [1, 16],
      ]),
    );
    expect(bOut).toEqual(
      await aloneAfter(doc, [
        [16, 11],
        [1, 15],
      ]),
    );
    await closeAll(scheduler, store, [a, b]);
    await runtime.close();
  });

  it("never preempts a sequence whose blocks are all shared (it would free nothing)", async () => {
    const runtime = await referencePool();
    const scheduler = new BatchScheduler(runtime);
    const a = scheduler.open("t");
    await a.prefill(tokens(32, 20)); // 4 blocks
    const c = scheduler.open("t");
    await c.prefill(tokens(40, 21)); // 5 blocks
    const b = scheduler.open("t"); // the newest: only the document, all of it a's blocks
    b.attach(a.blocksOf(0, 32));
    await a.prefill(tokens(8, 22)); // 10 blocks used
    await a.forward(tokens(8, 23)); // a needs one: c is preempted, not the newer b
    const st = scheduler.stats();
    expect(st.preemptions).toBe(1);
    expect(c.swapped).not.toBeNull();
    expect(b.swapped).toBeNull();
    expect(b.blocks).toEqual(a.blocks.slice(0, 4));
    for (const s of [a, b, c]) await s.close();
    expect(scheduler.stats().blocks.used).toBe(0);
    await runtime.close();
  });

  it("writes the kept blocks too once nobody else holds them, and restores the whole sequence", async () => {
    const store = await dirStore();
    const runtime = await referencePool();
    const scheduler = storeScheduler(runtime, store);
    const doc = tokens(24, 30);
    const a = scheduler.open("t");
    await a.prefill(doc);
    const b = scheduler.open("t");
    b.attach(a.blocksOf(0, 24));
    const first = await b.forward(tokens(16, 31)); // b: 3 shared + 2 own
    await a.prefill(tokens(40, 32)); // a: 3 shared + 5 own: 10 used
    await a.forward(tokens(1, 33)); // b preempted, keeping the 3 shared blocks
    expect(b.swapped?.from).toBe(24);
    await a.close(); // b alone holds the 3 blocks now
    // d needs 9 of the 10 blocks: b's kept 3 are written (ahead of its other piece) and freed.
    const d = scheduler.open("t");
    await d.forward(tokens(72, 34));
    expect(b.swapped?.from).toBe(0);
    expect(b.blocks).toEqual([]);
    expect((await swapKeys(store)).map((k) => k.split("/").at(-1)).sort()).toEqual([
      "0",
      "16",
      "24",
    ]);
    await d.close();
    const again = await b.forward(tokens(1, 35));
    expect([first, again]).toEqual(
      await aloneAfter(doc, [
        [16, 31],
        [1, 35],
      ]),
    );
    await closeAll(scheduler, store, [b]);
    await runtime.close();
  });
});

describe("preemption through an S3 store (s3rver)", () => {
  let s3: S3Server;
  beforeAll(async () => {
    s3 = await startS3();
  });
  afterAll(() => s3?.close());

  it("writes the victim's KV as objects in the bucket and restores it exactly", async () => {
    await checkThroughStore(new S3Store({ ...storeOptions(s3), prefix: "swaps/" }));
  });
});
