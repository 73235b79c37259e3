// One check that the batched runtimes' tests share (test/wasm-paged.test.ts, native-paged.test.ts):
// core's BatchScheduler on a PagedRuntime gives every sequence the logits the same runtime's
// single-sequence form gives it alone (prefill pieces longer than the step budget beside decode
// tokens), and a prefix shared by two sequences and then left mid-block is copied on write (the
// shared KV unchanged). `same` compares one logits row with the one alone (exactly, or within a
// runtime's tolerance).
import { expect } from "vitest";
import type { PagedRuntime } from "../../core/engine/paged-runtime.ts";
import type { Runtime } from "../../core/engine/runtime.ts";
import { BatchScheduler } from "../../core/engine/scheduler.ts";
import { suiteTokens } from "./runtime-suite.ts";

async function logitsOf(rt: Runtime, calls: Int32Array[]): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const c of calls) out.push(await rt.forward(c));
  return out;
}

export async function checkSchedulerMatchesAlone(
  rt: PagedRuntime,
  single: Runtime,
  same: (got: Float32Array, want: Float32Array) => void,
): Promise<void> {
  const V = rt.config.vocabSize;
  const t = (n: number, seed: number) => suiteTokens(n, V, seed);
  const work = [
    [t(150, 1), t(1, 2), t(1, 3)],
    [t(5, 4), t(1, 5), t(1, 6), t(1, 7)],
    [t(70, 8), t(20, 9), t(1, 10)],
  ];
  const scheduler = new BatchScheduler(rt, { maxBatchTokens: 96 });
  const batched = await Promise.all(
    work.map((calls, i) => logitsOf(scheduler.open(`t${i}`), calls)),
  );
  expect(scheduler.stats().steps).toBeLessThan(work.flat().length);
  for (const [i, calls] of work.entries()) {
    single.truncate(0);
    const want = await logitsOf(single, calls);
    for (const [c, w] of want.entries()) same(batched[i][c], w);
  }
  // b shares a's two blocks, then leaves the prefix mid-block: block 1 is copied first.
  const doc = t(128, 11);
  const a = scheduler.open("t");
  await a.prefill(doc);
  const b = scheduler.open("t");
  b.attach(a.blocksOf(0, 128));
  b.truncate(100);
  const bq = await b.forward(t(6, 12));
  expect(b.blocks[0]).toBe(a.blocks[0]);
  expect(b.blocks[1]).not.toBe(a.blocks[1]);
  const aq = await a.forward(t(3, 13));
  single.truncate(0);
  await single.prefill(doc);
  same(aq, await single.forward(t(3, 13)));
  single.truncate(100);
  same(bq, await single.forward(t(6, 12)));
  await a.close();
  await b.close();
}
