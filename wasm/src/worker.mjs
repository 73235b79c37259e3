// Worker entry for the threaded WASM runtime: one Shard (shard.mjs) per worker, driven by the
// request/response protocol of core/node/worker-pool.ts. Plain JS: it must start with no TS loader.
//
// Shared memory (a SharedArrayBuffer from the main thread), byte offsets in `layout`:
//   ctl     Int32Array(16): [0] arrivals, [1] barrier generation, [2] cancel request, [3] decision,
//           [4] a worker failed (reset with [0] and [2] by the main thread before each forward)
//   input   (maxBatch, H) f32      the micro-batch's embeddings, written by the main thread
//   step    (stepLayout(maxBatch, maxTable).ints) i32   the micro-batch's step (shard.mjs)
//   slots   (2, workers, maxBatch, H) f32   partial residual updates, two phases (attention, FFN)
//   logits  (LOGIT_ROWS, vocab) f32   each worker writes its vocab rows' logits at its offset
import { parentPort } from "node:worker_threads";
import { LOGIT_ROWS, PROFILE_TOTAL, REDUCE_PHASE, Shard } from "./shard.mjs";

const ARRIVED = 0;
const GENERATION = 1;
const CANCEL = 2;
const DECISION = 3;
const FAILED = 4;
/** Loads of the generation word before a waiting worker sleeps (about 10-20 microseconds). */
const SPIN = 4000;

let shard = null;
let ctx = null;
let phase = 0;

class Cancelled extends Error {}
class PeerFailed extends Error {}

/**
 * Wait until every worker arrives. The last to arrive reads the cancel request and publishes the
 * decision, so all workers see the same one and stop at the same layer.
 */
function barrier() {
  const ctl = ctx.ctl;
  if (Atomics.load(ctl, FAILED) !== 0) throw new PeerFailed("another shard failed");
  const gen = Atomics.load(ctl, GENERATION);
  if (Atomics.add(ctl, ARRIVED, 1) === ctx.count - 1) {
    Atomics.store(ctl, ARRIVED, 0);
    Atomics.store(ctl, DECISION, Atomics.load(ctl, CANCEL));
    Atomics.add(ctl, GENERATION, 1);
    Atomics.notify(ctl, GENERATION);
  } else {
    // Spin a little before sleeping: a decode step's layers take tens of microseconds, about what
    // a futex wake-up costs, so the last arrival is usually seen while spinning. Then sleep, so a
    // worker that waits long (another still computing, or descheduled) gives its core back.
    for (let i = 0; i < SPIN && Atomics.load(ctl, GENERATION) === gen; i++);
    while (Atomics.load(ctl, GENERATION) === gen) Atomics.wait(ctl, GENERATION, gen);
  }
  if (Atomics.load(ctl, FAILED) !== 0) throw new PeerFailed("another shard failed");
  return Atomics.load(ctl, DECISION) !== 0;
}

/** Publish this worker's partial, wait for all, then add every partial in worker order. */
function reduce(partial) {
  const t = shard.clock();
  const n = partial.length;
  const slots = ctx.slots[phase];
  slots[ctx.index].set(partial);
  if (barrier()) throw new Cancelled();
  for (let w = 0; w < ctx.count; w++) shard.addToResidual(slots[w].subarray(0, n));
  phase ^= 1;
  shard.lap(REDUCE_PHASE, t);
}

const handlers = {
  init(module, spec, sab, layout, index, count) {
    shard = new Shard(module, spec);
    const H = spec.hidden;
    const B = spec.maxBatch;
    const slots = [0, 1].map((p) =>
      Array.from(
        { length: count },
        (_, w) => new Float32Array(sab, layout.slots + (p * count + w) * B * H * 4, B * H),
      ),
    );
    ctx = {
      ctl: new Int32Array(sab, layout.ctl, 16),
      input: new Float32Array(sab, layout.input, B * H),
      step: new Int32Array(sab, layout.step, layout.stepInts),
      logits: new Float32Array(sab, layout.logits, LOGIT_ROWS * layout.vocab),
      slots,
      index,
      count,
      vocab: layout.vocab,
      vocabOffset: layout.vocabOffset,
    };
    return { weightBytes: shard.weightBytes };
  },
  setVector: (key, layer, data) => shard.setVector(key, layer, data),
  setMatrix: (key, layer, rowOffset, data) => shard.setMatrix(key, layer, rowOffset, data),
  setRope: (invFreq, scaling) => shard.setRope(invFreq, scaling),
  forward(stepInts) {
    const t = shard.clock();
    try {
      return forward(stepInts);
    } finally {
      shard.lap(PROFILE_TOTAL, t);
    }
  },
  logits(rows) {
    const t = shard.clock();
    try {
      const V = shard.spec.vocab;
      const out = shard.logits(rows);
      for (let i = 0; i < rows.length; i++) {
        ctx.logits.set(out.subarray(i * V, (i + 1) * V), i * ctx.vocab + ctx.vocabOffset);
      }
    } finally {
      shard.lap(PROFILE_TOTAL, t);
    }
  },
  setProfiling: (on) => shard.setProfiling(on),
  profile: () => shard.profile?.slice() ?? new Float64Array(0),
  exportKv: (table, start, end) => shard.exportKv(table, start, end),
  importKv: (bytes, table, start, n) => shard.importKv(bytes, table, start, n),
  copyBlocks: (pairs) => shard.copyBlocks(pairs),
  memoryBytes: () => shard.memoryBytes,
};

function forward(stepInts) {
  const H = shard.spec.hidden;
  phase = 0;
  try {
    shard.step().set(ctx.step.subarray(0, stepInts));
    shard.input().set(ctx.input.subarray(0, ctx.step[0] * H));
    shard.begin();
    for (let l = 0; l < shard.spec.layers; l++) {
      shard.attention(l, reduce);
      shard.ffn(l, reduce);
    }
  } catch (err) {
    if (err instanceof Cancelled) return { cancelled: true };
    if (!(err instanceof PeerFailed)) {
      // Release the others from any barrier: they see FAILED and stop instead of waiting forever.
      Atomics.store(ctx.ctl, FAILED, 1);
      Atomics.add(ctx.ctl, GENERATION, 1);
      Atomics.notify(ctx.ctl, GENERATION);
    }
    throw err;
  }
  return { cancelled: false };
}

parentPort.on("message", ({ id, method, args }) => {
  try {
    const result = handlers[method](...args);
    const transfer = ArrayBuffer.isView(result) ? [result.buffer] : [];
    parentPort.postMessage({ id, ok: true, result }, transfer);
  } catch (err) {
    parentPort.postMessage({
      id,
      ok: false,
      error: { message: String(err?.message ?? err), code: err?.code, stack: err?.stack },
    });
  }
});
