// The sequence driver on the reference runtime, with the real tokenizer and the real snapshot cache
// over a local directory: greedy == argmax of the runtime's logits, seeds, stop conditions, context
// full, reuse of what the runtime holds, snapshot restore, progress, logprobs, cancellation.
import { beforeAll, describe, expect, it } from "vitest";
import {
  type DoneEvent,
  type DriverEvent,
  eosTokenIds,
  type GenerateRequest,
  type ProgressEvent,
  SequenceDriver,
  type TokenEvent,
  type TokenTextDecoder,
  tokenTextDecoder,
} from "../core/engine/driver.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import type { Runtime } from "../core/engine/runtime.ts";
import { argmax, logSumExp } from "../core/engine/sampling.ts";
import { CancelledError, InvalidInputError, LimitError } from "../core/errors.ts";
import { createSnapshotCache } from "../core/kv/snapshot-cache.ts";
import type { LoadedModel } from "../core/model/weights.ts";
import { nodeSha256 } from "../core/node/hasher.ts";
import { DirectoryStore } from "../core/node/snapshot-dir.ts";
import type { Tokenizer } from "../core/tokenizer/index.ts";
import { loadTokenizer } from "../core/tokenizer/load.ts";
import { loadTestModel, scratchDir, TINY } from "./support/models.ts";

let model: LoadedModel;
let tokenizer: Tokenizer;
let prompt: Int32Array;

beforeAll(async () => {
  model = await loadTestModel(TINY);
  tokenizer = await loadTokenizer(model.files);
  const bos = model.config.bosTokenId!;
  prompt = Int32Array.from([
    bos,
    ...tokenizer.encode("The quick brown fox jumps over the lazy dog."),
  ]);
});

function decoder(): TokenTextDecoder {
  return tokenTextDecoder(tokenizer.createDecoder({ skipSpecialTokens: true }));
}

async function newDriver(opts: { maxPositions?: number; eos?: number[]; chunk?: number } = {}) {
  const runtime = await createReferenceRuntime({ model, maxPositions: opts.maxPositions ?? 256 });
  const driver = new SequenceDriver(runtime, {
    eosTokenIds: opts.eos ?? eosTokenIds(model),
    chunkTokens: opts.chunk,
  });
  return { runtime, driver };
}

async function collect(driver: SequenceDriver, request: GenerateRequest) {
  const events: DriverEvent[] = [];
  for await (const e of driver.generate(request)) events.push(e);
  const tokens = events.filter((e): e is TokenEvent => e.type === "token");
  const progress = events.filter((e): e is ProgressEvent => e.type === "progress");
  const done = events.at(-1) as DoneEvent;
  expect(done.type).toBe("done");
  return {
    events,
    tokens,
    progress,
    done,
    ids: tokens.map((t) => t.id),
    text: tokens.map((t) => t.text).join(""),
  };
}

/** Greedy decoding done by hand on a runtime: forward, argmax, repeat. */
async function greedyByHand(runtime: Runtime, tokens: Int32Array, n: number): Promise<number[]> {
  const out: number[] = [];
  let logits = await runtime.forward(tokens);
  for (let i = 0; i < n; i++) {
    out.push(argmax(logits));
    if (i + 1 < n) logits = await runtime.forward(Int32Array.of(out[i]));
  }
  return out;
}

describe("SequenceDriver", () => {
  let greedy: number[]; // 8 greedy tokens after `prompt`

  beforeAll(async () => {
    const runtime = await createReferenceRuntime({ model, maxPositions: 256 });
    greedy = await greedyByHand(runtime, prompt, 8);
  });

  it("at temperature 0 generates the argmax of the runtime's logits", async () => {
    const { driver } = await newDriver({ chunk: 5 });
    const r = await collect(driver, { prompt, maxTokens: 8, sampling: { temperature: 0 } });
    expect(r.ids).toEqual(greedy);
    expect(r.done.finishReason).toBe("length");
    expect(r.done.usage).toEqual({
      promptTokens: prompt.length,
      completionTokens: 8,
      cachedTokens: 0,
    });
    expect(r.done.timings.prefillTokens).toBe(prompt.length);
  });

  it("reports prefill progress chunk by chunk up to the whole prompt", async () => {
    const { driver } = await newDriver({ chunk: 4 });
    const r = await collect(driver, { prompt, maxTokens: 1, sampling: { temperature: 0 } });
    const done = r.progress.map((p) => p.doneTokens);
    const want = [0];
    for (let at = 4; at < prompt.length; at += 4) want.push(at);
    want.push(prompt.length);
    expect(done).toEqual(want);
    for (const p of r.progress) expect(p.totalTokens).toBe(prompt.length);
    expect(r.progress.at(-1)!.tokensPerSecond).toBeGreaterThan(0);
  });

  it("gives the same tokens for the same seed and different ones for another seed", async () => {
    const { driver } = await newDriver();
    const run = async (seed: number) =>
      (await collect(driver, { prompt, maxTokens: 6, sampling: { temperature: 1.5, seed } })).ids;
    const a = await run(1);
    expect(await run(1)).toEqual(a);
    expect(await run(2)).not.toEqual(a);
  });

  it("stops at an EOS id from the model, emitting no text for it", async () => {
    const eos = greedy[3];
    const { driver } = await newDriver({ eos: [eos] });
    const r = await collect(driver, { prompt, maxTokens: 8, sampling: { temperature: 0 } });
    expect(r.ids).toEqual(greedy.slice(0, greedy.indexOf(eos) + 1));
    expect(r.done).toMatchObject({ finishReason: "stop", stop: eos });
    expect(r.tokens.at(-1)!.text).toBe("");
    // ignoreEos carries on; a request's stop token ids stop it too.
    const past = await collect(driver, {
      prompt,
      maxTokens: 8,
      ignoreEos: true,
      sampling: { temperature: 0 },
    });
    expect(past.ids).toEqual(greedy);
    const byId = await collect(driver, {
      prompt,
      maxTokens: 8,
      stopTokenIds: [greedy[5]],
      ignoreEos: true,
      sampling: { temperature: 0 },
    });
    expect(byId.ids).toEqual(greedy.slice(0, greedy.indexOf(greedy[5]) + 1));
  });

  it("stops at a stop string, emitting exactly the text before it", async () => {
    const { driver } = await newDriver();
    const full = await collect(driver, {
      prompt,
      maxTokens: 8,
      decoder: decoder(),
      sampling: { temperature: 0 },
    });
    expect(full.text).toBe(tokenizer.decode(greedy, { skipSpecialTokens: true }));
    // A stop string that starts inside one token and ends in a later one.
    const pieces = greedy.map((id) => tokenizer.decode([id]));
    const start = pieces[0].length + pieces[1].length - 1;
    const stop = full.text.slice(start, start + pieces[2].length + 2);
    const cut = full.text.indexOf(stop);
    const r = await collect(driver, {
      prompt,
      maxTokens: 8,
      stop: [stop],
      decoder: decoder(),
      sampling: { temperature: 0 },
    });
    expect(r.text).toBe(full.text.slice(0, cut));
    expect(r.done).toMatchObject({ finishReason: "stop", stop });
    // No token event ever showed a part of the stop string that later got cut.
    let shown = "";
    for (const t of r.tokens) {
      shown += t.text;
      expect(full.text.startsWith(shown)).toBe(true);
      expect(shown.length).toBeLessThanOrEqual(cut);
    }
  });

  it("stops when the context is full (prompt + output = the runtime's positions)", async () => {
    const { driver } = await newDriver({ maxPositions: prompt.length + 3 });
    const r = await collect(driver, { prompt, sampling: { temperature: 0 } });
    expect(r.ids).toEqual(greedy.slice(0, 3));
    expect(r.done.finishReason).toBe("length");
  });

  it("reuses the prefix the runtime already holds, with the same output as a fresh runtime", async () => {
    const { driver, runtime } = await newDriver();
    await collect(driver, { prompt, maxTokens: 4, sampling: { temperature: 0 } });
    // The runtime holds the prompt and the first 3 generated tokens (the 4th was never forwarded).
    expect(runtime.position).toBe(prompt.length + 3);
    expect(driver.heldTokens).toEqual([...prompt, ...greedy.slice(0, 3)]);
    const longer = Int32Array.from([...prompt, ...greedy.slice(0, 4), ...tokenizer.encode(" And")]);
    const r = await collect(driver, { prompt: longer, maxTokens: 3, sampling: { temperature: 0 } });
    expect(r.done.usage.cachedTokens).toBe(prompt.length + 3);
    expect(r.progress[0]).toMatchObject({
      doneTokens: prompt.length + 3,
      cachedTokens: prompt.length + 3,
    });
    const fresh = await newDriver();
    const want = await collect(fresh.driver, {
      prompt: longer,
      maxTokens: 3,
      sampling: { temperature: 0 },
    });
    expect(r.ids).toEqual(want.ids);
    expect(want.done.usage.cachedTokens).toBe(0);
    // The same prompt again: all but the last token reused (its logits are needed).
    const again = await collect(driver, {
      prompt: longer,
      maxTokens: 3,
      sampling: { temperature: 0 },
    });
    expect(again.done.usage.cachedTokens).toBe(longer.length - 1);
    expect(again.ids).toEqual(want.ids);
  });

  it("does not reuse another isolation key's prefix", async () => {
    const { driver } = await newDriver();
    await collect(driver, { prompt, maxTokens: 1, isolationKey: "tenant-a" });
    const b = await collect(driver, { prompt, maxTokens: 1, isolationKey: "tenant-b" });
    expect(b.done.usage.cachedTokens).toBe(0);
    const b2 = await collect(driver, { prompt, maxTokens: 1, isolationKey: "tenant-b" });
    expect(b2.done.usage.cachedTokens).toBe(prompt.length - 1);
  });

  it("restores snapshot chunks from a prefix cache into a fresh runtime", async () => {
    const store = new DirectoryStore(scratchDir("snapshots"));
    const chunkTokens = 4;
    const makeCache = (runtime: Runtime) =>
      createSnapshotCache({
        store,
        modelFingerprint: "f".repeat(64),
        kvLayout: runtime.info.kv,
        tenantSalt: "salt",
        chunkTokens,
        sha256: nodeSha256,
      });
    const first = await newDriver({ chunk: 3 });
    const cache1 = makeCache(first.runtime);
    const r1 = await collect(first.driver, {
      prompt,
      maxTokens: 4,
      prefixCache: cache1,
      sampling: { temperature: 0 },
    });
    await cache1.flush();
    // Chunks never straddle a snapshot boundary: every multiple of 4 shows up in the progress.
    const done = r1.progress.map((p) => p.doneTokens);
    for (let b = chunkTokens; b < prompt.length; b += chunkTokens) expect(done).toContain(b);
    expect(r1.ids).toEqual(greedy.slice(0, 4));

    const second = await newDriver({ chunk: 3 });
    const r2 = await collect(second.driver, {
      prompt,
      maxTokens: 4,
      prefixCache: makeCache(second.runtime),
      sampling: { temperature: 0 },
    });
    const restorable = Math.floor((prompt.length - 1) / chunkTokens) * chunkTokens;
    expect(r2.done.usage.cachedTokens).toBe(restorable);
    expect(r2.done.timings.prefillTokens).toBe(prompt.length - restorable);
    expect(r2.ids).toEqual(r1.ids);
  });

  it("reports raw logprobs and the top alternatives", async () => {
    const { driver } = await newDriver();
    const r = await collect(driver, {
      prompt,
      maxTokens: 2,
      sampling: { temperature: 0, logprobs: 3 },
    });
    const runtime = await createReferenceRuntime({ model, maxPositions: 256 });
    const logits = await runtime.forward(prompt);
    const first = r.tokens[0];
    expect(first.logprob).toBeCloseTo(logits[first.id] - logSumExp(logits), 6);
    expect(first.top).toHaveLength(3);
    expect(first.top![0].id).toBe(first.id); // greedy: the chosen token is the most likely
  });

  it("cancels on an AbortSignal and keeps the runtime usable", async () => {
    const { driver, runtime } = await newDriver({ chunk: 4 });
    const controller = new AbortController();
    const seen: DriverEvent[] = [];
    await expect(
      (async () => {
        for await (const e of driver.generate({
          prompt,
          maxTokens: 8,
          signal: controller.signal,
          sampling: { temperature: 0 },
        })) {
          seen.push(e);
          if (e.type === "token") controller.abort();
        }
      })(),
    ).rejects.toThrow(CancelledError);
    expect(seen.filter((e) => e.type === "token")).toHaveLength(1);
    expect(driver.heldTokens).toHaveLength(runtime.position);
    const r = await collect(driver, { prompt, maxTokens: 8, sampling: { temperature: 0 } });
    expect(r.ids).toEqual(greedy);
    expect(r.done.usage.cachedTokens).toBe(prompt.length - 1);
  });

  it("is free for the next request when the consumer stops early", async () => {
    const { driver } = await newDriver();
    for await (const e of driver.generate({ prompt, maxTokens: 8, sampling: { temperature: 0 } })) {
      if (e.type === "token") break;
    }
    const r = await collect(driver, { prompt, maxTokens: 2, sampling: { temperature: 0 } });
    expect(r.ids).toEqual(greedy.slice(0, 2));
  });

  it("starts the next token's forward before handing a token out; a consumer that stops leaves it counted", async () => {
    const { runtime, driver } = await newDriver();
    // Forwards the runtime has been asked for, counted at the call (the runtime itself unchanged).
    let forwards = 0;
    const forward = runtime.forward.bind(runtime);
    runtime.forward = (...args: Parameters<Runtime["forward"]>) => {
      forwards++;
      return forward(...args);
    };
    const asked: number[] = [];
    const ids: number[] = [];
    for await (const e of driver.generate({ prompt, maxTokens: 4, sampling: { temperature: 0 } })) {
      if (e.type !== "token") continue;
      asked.push(forwards);
      ids.push(e.id);
    }
    expect(ids).toEqual(greedy.slice(0, 4));
    // The prompt's forward, then one per token but the last, each asked before its token's event.
    expect(asked).toEqual([2, 3, 4, 4]);
    // A consumer that stops after two tokens: the third token's forward ran, it is held.
    let seen = 0;
    for await (const e of driver.generate({ prompt, maxTokens: 8, sampling: { temperature: 0 } })) {
      if (e.type === "token" && ++seen === 2) break;
    }
    expect(runtime.position).toBe(prompt.length + 2);
    expect(driver.heldTokens).toEqual([...prompt, ...greedy.slice(0, 2)]);
    const r = await collect(driver, { prompt, maxTokens: 3, sampling: { temperature: 0 } });
    expect(r.ids).toEqual(greedy.slice(0, 3));
    expect(r.done.usage.cachedTokens).toBe(prompt.length - 1);
  });

  it("refuses bad requests before doing any work", async () => {
    const { driver } = await newDriver({ maxPositions: prompt.length });
    expect(() => driver.generate({ prompt: [] })).toThrow(InvalidInputError);
    expect(() => driver.generate({ prompt: [model.config.vocabSize] })).toThrow(InvalidInputError);
    expect(() => driver.generate({ prompt })).toThrow(LimitError);
    expect(() => driver.generate({ prompt: [1], maxTokens: 0 })).toThrow(InvalidInputError);
    expect(() => driver.generate({ prompt: [1], stop: ["x"] })).toThrow(InvalidInputError);
    expect(() => driver.generate({ prompt: [1], sampling: { topP: 2 } })).toThrow(
      InvalidInputError,
    );
  });
});
