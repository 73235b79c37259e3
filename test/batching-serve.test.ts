// Continuous batching through the served function: real sockets, client -> edge -> model function
// (functions/entries/local.ts) with `maxSeqs` 4 on the batched reference runtime, whose batches
// compute exactly what one sequence alone computes. Many questions about one document at once:
// each answer equals the answer asked alone, the steps did batch them, the document's blocks are
// shared within a tenant and never across tenants, and disconnects at random moments free their
// sequences and blocks while the others finish correctly.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sha256Hex } from "../core/hash/sha256.ts";
import { type LocalServer, startLocal } from "../functions/entries/local.ts";
import { testModelDir } from "./support/models.ts";

const KEYS = { a: "batching-key-tenant-a-0123", b: "batching-key-tenant-b-0123" };
let s: LocalServer;
const logs: Record<string, unknown>[] = [];

beforeAll(async () => {
  s = await startLocal({
    modelDir: await testModelDir(),
    modelId: "tiny",
    runtime: "reference",
    maxSeqs: 4,
    maxBatchTokens: 64,
    maxPrefillTokens: 24,
    maxSwapBytes: 123_456_789,
    store: null,
    snapshotChunkTokens: 32,
    maxPositions: 2048,
    maxWaiting: 16,
    keys: {
      tenants: { a: { rpm: 0 }, b: { rpm: 0 } },
      keys: [
        { sha256: await sha256Hex(KEYS.a), tenant: "a" },
        { sha256: await sha256Hex(KEYS.b), tenant: "b" },
      ],
    },
    log: (line) => logs.push(line),
  });
});
afterAll(async () => {
  await s?.close();
});

const DOC = Array.from({ length: 120 }, (_, i) => `fact${(i * 37) % 101}`).join(" ");
const question = (i: number) => `${DOC}\nQuestion ${i}: what is item ${i * 3}?`;

interface Answer {
  text: string;
  cached: number;
}

async function ask(tenant: keyof typeof KEYS, prompt: string, signal?: AbortSignal) {
  const res = await fetch(`${s.url}/v1/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${KEYS[tenant]}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "tiny", prompt, max_tokens: 6, temperature: 0 }),
    signal,
  });
  const body = await res.json();
  expect(res.status, JSON.stringify(body)).toBe(200);
  return {
    text: body.choices[0].text,
    cached: body.usage.prompt_tokens_details?.cached_tokens ?? 0,
  } as Answer;
}

const stats = () => {
  const b = s.engine.batchStats?.();
  if (!b) throw new Error("the engine is not batching");
  return b;
};

describe("serve with continuous batching", () => {
  it("says it batches on /readyz's engine info", () => {
    const info = s.engine.info();
    expect(info.maxSeqs).toBe(4);
    expect(info.batching).toMatchObject({
      maxBatchTokens: 64,
      maxPrefillTokens: 24,
      blockTokens: 16,
      swapTo: "host", // no store: preempted KV stays in host memory, up to the budget given
      maxSwapBytes: 123_456_789,
    });
  });

  it("answers concurrent questions about one document as it answers each alone", async () => {
    const first = await ask("a", question(0)); // reads the document once
    expect(first.cached).toBe(0);
    const before = stats();
    const together = await Promise.all([1, 2, 3, 4, 5, 6].map((i) => ask("a", question(i))));
    const after = stats();
    // Steps ran several sequences at once: fewer steps than sequences times tokens.
    const steps = after.steps - before.steps;
    const seqs = after.stepSequences - before.stepSequences;
    expect(seqs / steps).toBeGreaterThan(1.5);
    // The document's whole chunks came from the blocks the first question left.
    for (const r of together) expect(r.cached).toBeGreaterThanOrEqual(32 * 4);
    for (const [k, r] of together.entries()) {
      expect(r.text).toBe((await ask("a", question(k + 1))).text);
    }
    // Another tenant shares nothing with tenant a.
    expect((await ask("b", question(1))).cached).toBe(0);
    expect(stats().blocks.used).toBe(0);
    expect(stats().sequences).toBe(0);
  });

  it("n choices of a new prompt compute it once: the others take its blocks", async () => {
    // A document never asked about before (the words of DOC backwards): nothing cached.
    const prompt = `${DOC.split(" ").reverse().join(" ")}\nQuestion: which item comes first?`;
    const before = logs.length;
    const res = await fetch(`${s.url}/v1/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${KEYS.b}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", prompt, max_tokens: 4, temperature: 1, seed: 3, n: 3 }),
    });
    const body = await res.json();
    expect(res.status, JSON.stringify(body)).toBe(200);
    expect(body.choices).toHaveLength(3);
    const rid = res.headers.get("x-request-id");
    const cached = ["", ".1", ".2"]
      .map((suffix) =>
        logs.slice(before).find((l) => l.app === "model" && l.requestId === `${rid}${suffix}`),
      )
      .map((l) => l?.cachedTokens as number)
      .sort((x, y) => x - y);
    // One computed the prompt's chunks; the other two took its blocks.
    const whole = Math.floor((body.usage.prompt_tokens - 1) / 32) * 32;
    expect(whole).toBeGreaterThanOrEqual(128);
    expect(cached[0]).toBe(0);
    expect(cached[1]).toBeGreaterThanOrEqual(whole);
    expect(stats().blocks.used).toBe(0);
  });

  it("frees a disconnected client's sequence at once; the others finish correctly", async () => {
    const want = await Promise.all([10, 11, 12, 13].map((i) => ask("a", question(i))));
    const aborts = [10, 11, 12, 13].map(() => new AbortController());
    const runs = [10, 11, 12, 13].map((i, k) =>
      ask("a", question(i), aborts[k].signal).then(
        (r) => ({ ok: true as const, r }),
        (err) => ({ ok: false as const, err }),
      ),
    );
    // Two of the four go away while the four are being served.
    while (stats().sequences < 4) await new Promise((r) => setTimeout(r, 2));
    aborts[1].abort();
    aborts[3].abort();
    const results = await Promise.all(runs);
    expect(results[0]).toEqual({ ok: true, r: want[0] });
    expect(results[2]).toEqual({ ok: true, r: want[2] });
    expect(results[1].ok).toBe(false);
    expect(results[3].ok).toBe(false);
    for (let i = 0; i < 500 && stats().sequences > 0; i++)
      await new Promise((r) => setTimeout(r, 5));
    expect(stats().sequences).toBe(0);
    expect(stats().blocks.used).toBe(0);
    const cancelled = logs.filter((l) => l.app === "model" && l.status === 499);
    expect(cancelled.length).toBeGreaterThanOrEqual(2);
  });
});
