// Continuous batching on the batched reference runtime (the oracle): the scheduler, block tables,
// prefix sharing between sequences, copy-on-write, preemption, tenant isolation, fairness,
// cancellation. The reference runtime computes every row of a batch exactly as it computes it
// alone, so the invariants are checked with exact equality here; test/wasm-paged.test.ts checks
// the wasm runtime's batches within its tolerances.
import { getEventListeners } from "node:events";
import { beforeAll, describe, expect, it } from "vitest";
import { BlockPrefixIndex, createBlockPrefixCache } from "../core/engine/block-prefix-cache.ts";
import { type DoneEvent, SequenceDriver, type TokenEvent } from "../core/engine/driver.ts";
import { createPagedReferenceRuntime } from "../core/engine/paged-reference-runtime.ts";
import type { PagedRuntime } from "../core/engine/paged-runtime.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import type { Runtime } from "../core/engine/runtime.ts";
import { BatchScheduler } from "../core/engine/scheduler.ts";
import { CancelledError, InvalidInputError, LimitError } from "../core/errors.ts";
import { chainKeys } from "../core/kv/chain-key.ts";
import type { LoadedModel } from "../core/model/weights.ts";
import { loadTestModel, SMALL_VOCAB } from "./support/models.ts";

let model: LoadedModel;

beforeAll(async () => {
  model = await loadTestModel(SMALL_VOCAB);
});

/** Deterministic token ids in [1, 500). */
function tokens(n: number, seed: number): Int32Array {
  const out = new Int32Array(n);
  let s = seed * 2654435761;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    out[i] = 1 + (s % 499);
  }
  return out;
}

function concat(...parts: Int32Array[]): Int32Array {
  const out = new Int32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

async function paged(opts: { poolPositions?: number; blockTokens?: number } = {}) {
  return createPagedReferenceRuntime({ model, maxPositions: 256, blockTokens: 8, ...opts });
}

/** Logits of each call in `calls` (prefill pieces, then decode tokens) on one Runtime. */
async function logitsOf(rt: Runtime, calls: Int32Array[]): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const c of calls) out.push(await rt.forward(c));
  return out;
}

describe("the scheduler on the batched reference runtime", () => {
  it("gives each sequence of a batch exactly the logits it gets alone", async () => {
    const runtime = await paged();
    const scheduler = new BatchScheduler(runtime, { maxBatchTokens: 24 });
    // Four sequences: different lengths, prefill pieces longer than the budget, decode tokens.
    const work = [
      [tokens(30, 1), tokens(1, 2), tokens(1, 3), tokens(1, 4)],
      [tokens(5, 5), tokens(1, 6), tokens(1, 7)],
      [tokens(17, 8), tokens(9, 9), tokens(1, 10)],
      [tokens(1, 11), tokens(1, 12), tokens(40, 13), tokens(1, 14)],
    ];
    const batched = await Promise.all(
      work.map((calls, i) => logitsOf(scheduler.open(`t${i % 2}`), calls)),
    );
    expect(scheduler.stats().steps).toBeLessThan(work.flat().length); // calls did share steps
    for (const [i, calls] of work.entries()) {
      const alone = await createReferenceRuntime({ model, maxPositions: 256 });
      const want = await logitsOf(alone, calls);
      await alone.close();
      expect(batched[i].length).toBe(want.length);
      for (let c = 0; c < want.length; c++) expect(batched[i][c]).toEqual(want[c]);
    }
    await runtime.close();
  });

  it("shares a prefix's blocks, copies on write, and never changes the shared KV", async () => {
    const runtime = await paged();
    const scheduler = new BatchScheduler(runtime);
    const doc = tokens(24, 20); // three whole blocks of 8
    const a = scheduler.open("t");
    await a.prefill(doc);
    const b = scheduler.open("t");
    b.attach(a.blocksOf(0, 24));
    expect(b.blocks).toEqual(a.blocks);
    // b leaves the shared prefix mid-block: that block is copied before b writes into it.
    b.truncate(20);
    const bq = await b.forward(tokens(6, 21));
    expect(b.blocks.slice(0, 2)).toEqual(a.blocks.slice(0, 2));
    expect(b.blocks[2]).not.toBe(a.blocks[2]);
    const aq = await a.forward(tokens(3, 22));
    const alone = await createReferenceRuntime({ model, maxPositions: 256 });
    await alone.prefill(doc);
    expect(aq).toEqual(await alone.forward(tokens(3, 22)));
    alone.truncate(20);
    expect(bq).toEqual(await alone.forward(tokens(6, 21)));
    await alone.close();
    await a.close();
    await b.close();
    expect(scheduler.stats().blocks.used).toBe(0);
    await runtime.close();
  });

  it("preempts when the pool runs dry and restores exactly (preempted == never preempted)", async () => {
    // 10 blocks of 8 = 80 positions for three sequences of 40: one must wait outside the pool.
    const runtime = await paged({ poolPositions: 80 });
    const scheduler = new BatchScheduler(runtime, { maxBatchTokens: 16 });
    const work = [0, 1, 2].map((i) => [
      tokens(20, 30 + i),
      ...Array.from({ length: 12 }, (_, k) => tokens(1, 40 + 13 * i + k)),
    ]);
    const batched = await Promise.all(work.map((calls) => logitsOf(scheduler.open("t"), calls)));
    expect(scheduler.stats().preemptions).toBeGreaterThan(0);
    for (const [i, calls] of work.entries()) {
      const alone = await createReferenceRuntime({ model, maxPositions: 256 });
      const want = await logitsOf(alone, calls);
      await alone.close();
      for (let c = 0; c < want.length; c++) expect(batched[i][c]).toEqual(want[c]);
    }
    await runtime.close();
  });

  it("fails a sequence the whole pool cannot hold with LimitError, and the others go on", async () => {
    const runtime = await paged({ poolPositions: 32 });
    const scheduler = new BatchScheduler(runtime);
    const big = scheduler.open("t");
    const small = scheduler.open("t");
    const [bigResult, smallLogits] = await Promise.allSettled([
      big.forward(tokens(40, 50)),
      small.forward(tokens(10, 51)),
    ]);
    expect(bigResult.status).toBe("rejected");
    expect((bigResult as PromiseRejectedResult).reason).toBeInstanceOf(LimitError);
    expect(big.position).toBe(0);
    expect(smallLogits.status).toBe("fulfilled");
    await runtime.close();
  });

  it("refuses bad input with a typed error and changes nothing", async () => {
    const runtime = await paged();
    const scheduler = new BatchScheduler(runtime);
    const seq = scheduler.open("t");
    await seq.prefill(tokens(5, 60));
    await expect(seq.forward(Int32Array.of(1, 512))).rejects.toBeInstanceOf(InvalidInputError);
    await expect(seq.forward(new Int32Array(0))).rejects.toBeInstanceOf(InvalidInputError);
    await expect(seq.forward(tokens(300, 61))).rejects.toBeInstanceOf(LimitError);
    expect(seq.position).toBe(5);
    // The runtime itself refuses tables that do not cover the positions or name unknown blocks.
    const step = (table: number[]) =>
      runtime.step([
        { tokens: tokens(9, 1), start: 0, table: Int32Array.from(table), logits: true },
      ]);
    await expect(step([0])).rejects.toBeInstanceOf(InvalidInputError);
    await expect(step([0, 99999])).rejects.toBeInstanceOf(InvalidInputError);
    const alone = await createReferenceRuntime({ model, maxPositions: 256 });
    await alone.prefill(tokens(5, 60));
    expect(await seq.forward(tokens(1, 62))).toEqual(await alone.forward(tokens(1, 62)));
    await alone.close();
    await runtime.close();
  });

  it("cancels a queued call, keeping only what the sequence held before it", async () => {
    const runtime = await paged();
    const scheduler = new BatchScheduler(runtime, { maxBatchTokens: 8 });
    const seq = scheduler.open("t");
    await seq.prefill(tokens(8, 70));
    const ac = new AbortController();
    const long = seq.prefill(tokens(64, 71), ac.signal); // 8 steps of 8 tokens
    ac.abort();
    await expect(long).rejects.toBeInstanceOf(CancelledError);
    expect(seq.position).toBe(8);
    await seq.close();
    expect(scheduler.stats().blocks.used).toBe(0);
    await runtime.close();
  });

  it("leaves no abort listener behind on a request's signal, however many calls it made", async () => {
    const runtime = await paged();
    const scheduler = new BatchScheduler(runtime, { maxBatchTokens: 8 });
    const seq = scheduler.open("t");
    const ac = new AbortController();
    await seq.prefill(tokens(8, 72), ac.signal);
    for (const t of tokens(20, 73)) await seq.forward(Int32Array.of(t), ac.signal);
    expect(getEventListeners(ac.signal, "abort")).toHaveLength(0);
    await seq.close();
    await runtime.close();
  });

  it("keeps decoding one tenant while another tenant's long prompt prefills", async () => {
    const runtime = await paged({ poolPositions: 1024 });
    const scheduler = new BatchScheduler(runtime, { maxBatchTokens: 16 });
    const decoder = scheduler.open("a");
    await decoder.prefill(tokens(4, 80));
    const long = scheduler.open("b").prefill(tokens(200, 81)); // 13+ steps at 16 tokens a step
    let decoded = 0;
    let longDone = false;
    void long.then(() => {
      longDone = true;
    });
    while (!longDone) {
      await decoder.forward(tokens(1, 82 + decoded));
      decoded++;
      if (decoded > 100) break;
    }
    await long;
    // One decode step per scheduler step while the prompt was in pieces: never starved.
    expect(decoded).toBeGreaterThanOrEqual(10);
    await runtime.close();
  });
  it("caps the prompt tokens beside decode tokens at maxPrefillTokens, and only there", async () => {
    const runtime = await paged({ poolPositions: 1024 });
    const scheduler = new BatchScheduler(runtime, { maxBatchTokens: 16, maxPrefillTokens: 4 });
    expect(scheduler.maxPrefillTokens).toBe(4);
    // A prompt alone runs in steps of 16.
    const alone = scheduler.open("a");
    const before = scheduler.stats().steps;
    await alone.prefill(tokens(64, 90));
    expect(scheduler.stats().steps - before).toBe(4);
    // Beside a decode token, at most 4 of another prompt's tokens a step.
    const long = scheduler.open("b").prefill(tokens(40, 91));
    let longDone = false;
    void long.then(() => {
      longDone = true;
    });
    const stepTokens: number[] = [];
    for (let i = 0; !longDone && i < 100; i++) {
      await alone.forward(tokens(1, 92 + i));
      stepTokens.push(scheduler.stats().lastStepTokens);
    }
    await long;
    expect(stepTokens.length).toBeGreaterThanOrEqual(9); // 40 tokens, 4 a step
    expect(Math.max(...stepTokens)).toBe(5);
    // Bad values are refused; a cap above the step budget is the step budget.
    expect(() => new BatchScheduler(runtime, { maxPrefillTokens: 0 })).toThrow(InvalidInputError);
    expect(
      new BatchScheduler(runtime, { maxBatchTokens: 8, maxPrefillTokens: 64 }).maxPrefillTokens,
    ).toBe(8);
    await runtime.close();
  });
});

describe("prefix sharing through the block prefix cache and the sequence driver", () => {
  async function ask(
    scheduler: BatchScheduler,
    index: BlockPrefixIndex,
    tenant: string,
    prompt: Int32Array,
  ) {
    const seq = scheduler.open(tenant);
    const ctx = { modelFingerprint: "test", dtype: "f32" as const, tenantSalt: tenant };
    const cache = createBlockPrefixCache({
      index,
      chunkTokens: 16,
      chainKeys: (t, chunks) => chainKeys(ctx, t, 16, chunks),
    });
    const driver = new SequenceDriver(seq, { eosTokenIds: [] });
    const out: number[] = [];
    let done: DoneEvent | undefined;
    for await (const ev of driver.generate({
      prompt,
      maxTokens: 4,
      sampling: { temperature: 0 },
      prefixCache: cache,
    })) {
      if (ev.type === "token") out.push((ev as TokenEvent).id);
      if (ev.type === "done") done = ev;
    }
    await seq.close();
    return { out, cached: done!.usage.cachedTokens };
  }

  async function alone(prompt: Int32Array): Promise<number[]> {
    const rt = await createReferenceRuntime({ model, maxPositions: 256 });
    const out: number[] = [];
    for await (const ev of new SequenceDriver(rt, { eosTokenIds: [] }).generate({
      prompt,
      maxTokens: 4,
      sampling: { temperature: 0 },
    })) {
      if (ev.type === "token") out.push(ev.id);
    }
    await rt.close();
    return out;
  }

  it("reads a shared document once per tenant, and never across tenants", async () => {
    const runtime: PagedRuntime = await paged({ poolPositions: 512 });
    const scheduler = new BatchScheduler(runtime);
    const index = new BlockPrefixIndex(scheduler.pool);
    const doc = tokens(64, 90);
    const q = (i: number) => concat(doc, tokens(5, 91 + i));
    const first = await ask(scheduler, index, "alice", q(0));
    expect(first.cached).toBe(0);
    // Three more questions at once from the same tenant: the document's 4 chunks are shared.
    const more = await Promise.all([1, 2, 3].map((i) => ask(scheduler, index, "alice", q(i))));
    for (const r of more) expect(r.cached).toBe(64);
    // Another tenant's same document shares nothing.
    const bob = await ask(scheduler, index, "bob", q(0));
    expect(bob.cached).toBe(0);
    for (const [i, r] of [first, ...more].entries()) expect(r.out).toEqual(await alone(q(i)));
    expect(bob.out).toEqual(first.out);
    // Ended sequences hold nothing; the named chunks stay cached for the next question.
    expect(scheduler.stats().blocks.used).toBe(0);
    expect(scheduler.stats().blocks.cached).toBeGreaterThan(0);
    await runtime.close();
  });

  it("computes a new document once when its questions arrive together", async () => {
    const runtime = await paged({ poolPositions: 512 });
    const scheduler = new BatchScheduler(runtime);
    const index = new BlockPrefixIndex(scheduler.pool);
    const doc = tokens(64, 110);
    const q = (i: number) => concat(doc, tokens(5, 111 + i));
    const results = await Promise.all([0, 1, 2, 3].map((i) => ask(scheduler, index, "t", q(i))));
    // One of them computed the document's 4 chunks; the others waited for each and took it.
    expect(results.map((r) => r.cached).sort((a, b) => a - b)).toEqual([0, 64, 64, 64]);
    const { stepTokens } = scheduler.stats();
    expect(stepTokens).toBe(64 + 4 * (5 + 3)); // the document once; each question and 3 decodes
    for (const [i, r] of results.entries()) expect(r.out).toEqual(await alone(q(i)));
    await runtime.close();
  });

  it("gives cached blocks away when the pool needs them, and recomputes what was lost", async () => {
    const runtime = await paged({ poolPositions: 96 }); // 12 blocks of 8
    const scheduler = new BatchScheduler(runtime);
    const index = new BlockPrefixIndex(scheduler.pool);
    const docA = concat(tokens(64, 100), tokens(5, 101));
    const docB = concat(tokens(64, 102), tokens(5, 103));
    expect((await ask(scheduler, index, "t", docA)).cached).toBe(0);
    expect((await ask(scheduler, index, "t", docB)).cached).toBe(0); // evicts docA's chunks
    const again = await ask(scheduler, index, "t", docA);
    expect(again.cached).toBeLessThan(64);
    expect(again.out).toEqual(await alone(docA));
    await runtime.close();
  });
});
