// How the WASM runtime cuts a model across worker memories, on UltraLong-8B's real shape (no
// weights are needed to plan): one 4 GiB WebAssembly memory cannot hold it, enough threads can,
// and every head, FFN column and vocab row lands in exactly one shard.
import { describe, expect, it } from "vitest";
import { LimitError } from "../core/errors.ts";
import { generatedConfig } from "../core/model/generate.ts";
import {
  chooseThreads,
  fitMemory,
  MAX_BATCH,
  MEMORY_LIMIT,
  planShards,
  type Range,
} from "../wasm/src/plan.ts";
import { BLOCK_TOKENS, shardBytes } from "../wasm/src/shard.mjs";

const ultralong8b = generatedConfig({
  layers: 32,
  hidden: 4096,
  heads: 32,
  kvHeads: 8,
  ffn: 14336,
  vocab: 128256,
  rope: "yarn",
});

function base(weightFormat: "f32" | "bf16" | "int8") {
  return {
    hidden: 4096,
    layers: 32,
    headDim: 128,
    eps: 1e-5,
    weightFormat,
    kvDtype: "bf16" as const,
    maxBatch: MAX_BATCH,
    maxPositions: 1_048_576,
    blockTokens: BLOCK_TOKENS,
  };
}

function covers(ranges: Range[], total: number) {
  let at = 0;
  for (const r of ranges) {
    expect(r.start).toBe(at);
    expect(r.end).toBeGreaterThanOrEqual(r.start);
    at = r.end;
  }
  expect(at).toBe(total);
}

describe("wasm shard plan for UltraLong-8B", () => {
  it("bf16 weights: one thread does not fit 4 GiB (LimitError), 4 threads hold the weights, 8 leave room for KV", () => {
    expect(() => fitMemory(planShards(ultralong8b, 1, base("bf16")), 1_048_576)).toThrow(
      LimitError,
    );
    const four = planShards(ultralong8b, 4, base("bf16"));
    for (const p of four) expect(shardBytes(p.spec).weights).toBeLessThan(MEMORY_LIMIT);
    const eight = planShards(ultralong8b, 8, base("bf16"));
    const { maxPositions, weightBytes } = fitMemory(eight, 1_048_576);
    // Each shard holds 1 KV head: 2 * 32 layers * 128 * 2 bytes = 16 KiB per position.
    expect(shardBytes(eight[0].spec).kvPerPosition).toBe(2 * 32 * 128 * 2);
    expect(maxPositions).toBeGreaterThan(100_000);
    expect(maxPositions).toBeLessThan(1_048_576);
    // Matrices of 32 layers + lm_head in bf16: 7.5e9 weights x 2 bytes = 13.98 GiB over the shards.
    expect(weightBytes / 2 ** 30).toBeGreaterThan(13.9);
    expect(weightBytes / 2 ** 30).toBeLessThan(14.1);
    for (const p of eight) expect(p.spec.maxPositions).toBe(maxPositions);
  });

  it("int8 weights (1.125 bytes each, 7.9 GiB) need 2 threads, and 3 leave room for long KV", () => {
    expect(() => fitMemory(planShards(ultralong8b, 1, base("int8")), 1024)).toThrow(LimitError);
    const two = fitMemory(planShards(ultralong8b, 2, base("int8")), 1_048_576).maxPositions;
    const three = fitMemory(planShards(ultralong8b, 3, base("int8")), 1_048_576).maxPositions;
    expect(two).toBeGreaterThan(0); // fits, with room for only a few hundred positions
    expect(three).toBeGreaterThan(10_000);
  });

  it("every head, FFN column and vocab row is in exactly one shard, FFN split in 32-column units for int8", () => {
    for (const threads of [1, 3, 5, 8, 12]) {
      const plans = planShards(ultralong8b, threads, base("int8"));
      covers(
        plans.map((p) => p.kvHeads),
        8,
      );
      covers(
        plans.map((p) => p.ffn),
        14336,
      );
      covers(
        plans.map((p) => p.vocab),
        128256,
      );
      for (const p of plans) {
        expect(p.ffn.start % 32).toBe(0);
        expect(p.spec.heads).toBe(4 * p.spec.kvHeads);
      }
    }
  });
});

describe("worker count when none is given (chooseThreads)", () => {
  const kv = (kvDtype: "f32" | "bf16") => ({ ...base("bf16"), kvDtype });
  it("8B bf16 on 2 cores: more workers than cores, the fewest that hold the context asked", () => {
    const c = chooseThreads(ultralong8b, kv("f32"), 2, 8192);
    expect(c.threads).toBeGreaterThan(2);
    // It fits, and one worker fewer does not hold the weights and 8192 positions.
    expect(fitMemory(planShards(ultralong8b, c.threads, kv("f32")), 8192).maxPositions).toBe(8192);
    const fewer = planShards(ultralong8b, c.threads - 1, kv("f32"));
    expect(() => {
      if (fitMemory(fewer, 8192).maxPositions < 8192) throw new LimitError("short");
    }).toThrow(LimitError);
    expect(c.reason).toContain(`${c.threads} workers on 2 core(s)`);
    expect(c.reason).toMatch(/positions by workers: \d+: \d+/);
  });
  it("a context no count holds: the count that holds the most, and each count's context", () => {
    const c = chooseThreads(ultralong8b, kv("bf16"), 2, 1_048_576);
    const listed = [...c.reason.matchAll(/(\d+): (\d+)/g)].map((m) => [+m[1], +m[2]]);
    expect(listed.length).toBeGreaterThan(1);
    const best = listed.reduce((a, b) => (b[1] > a[1] ? b : a));
    expect(c.threads).toBe(best[0]);
    for (const [threads, positions] of listed) {
      expect(fitMemory(planShards(ultralong8b, threads, kv("bf16")), 1_048_576).maxPositions).toBe(
        positions,
      );
    }
    expect(c.reason).toContain("hold the most context");
  });
  it("a model that fits: the core count, no reason", () => {
    expect(chooseThreads(ultralong8b, kv("bf16"), 16, 4096)).toEqual({ threads: 16, reason: "" });
  });
  it("f32 weights of 8B on 2 cores fit 8 memories or more only: still chosen, never a refusal", () => {
    const c = chooseThreads(ultralong8b, { ...base("f32"), kvDtype: "bf16" }, 2, 4096);
    expect(
      fitMemory(planShards(ultralong8b, c.threads, { ...base("f32"), kvDtype: "bf16" }), 4096)
        .maxPositions,
    ).toBeGreaterThan(0);
  });
});
