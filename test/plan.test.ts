// `ultralong plan`: where a context's KV lives and what it costs (core/model/placement.ts), worked
// by hand on UltraLong-8B's numbers, then through the real CLI process (text, JSON, refusals).
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { InvalidInputError } from "../core/errors.ts";
import { kvCacheBytes, memoryFor } from "../core/model/capacity.ts";
import { DATASHEET_RATES, placeContext } from "../core/model/placement.ts";
import { ULTRALONG_8B } from "../core/model/ultralong-8b.ts";
import { runUltralong, scratchDir } from "./support/models.ts";

const GiB = 2 ** 30;
const M = 2 ** 20;
const H200 = 143771 * M;
const base = { shape: ULTRALONG_8B, gpuMemoryBytes: H200, hostMemoryBytes: 0, store: false };

describe("placeContext on UltraLong-8B", () => {
  it("4M tokens of fp8 KV: refused on one H200 with the arithmetic, fits on eight", () => {
    const run = () => placeContext({ ...base, context: 4 * M, kvDtype: "fp8-e4m3", gpus: 1 });
    expect(run).toThrow(InvalidInputError);
    expect(run).toThrow(/4M tokens of fp8-e4m3 KV \(256\.13 GiB\) do not fit: 1 GPU x 2,023,569/);
    const p = placeContext({ ...base, context: 4 * M, kvDtype: "fp8-e4m3", gpus: 8 });
    // By hand: 2 x 32 layers x 8 KV heads x 128 x 1 B = 64 KiB per token, plus f32 scales per
    // (layer, K|V, head, 64 positions): 2 x 32 x 8 x 4 / 64 = 32 B per token.
    expect(p.kvBytesPerToken).toBe(65536 + 32);
    expect(p.perGpu.kvTokens).toBe(512 * 1024);
    expect(p.tiers).toMatchObject({ host: { tokens: 0 }, store: { tokens: 0 } });
    expect(p.perGpu.total).toBe(memoryFor(ULTRALONG_8B, "fp8-e4m3", 0).total + 512 * 1024 * 65568);
  });

  it("2M tokens on one H200: the GPU holds what it can, the host the rest", () => {
    const p = placeContext({
      ...base,
      context: 2 * M,
      kvDtype: "fp8-e4m3",
      gpus: 1,
      hostMemoryBytes: 64 * GiB,
      rates: DATASHEET_RATES.h200,
    });
    const free = H200 - memoryFor(ULTRALONG_8B, "fp8-e4m3", 0).total;
    expect(p.perGpu.kvTokens).toBe(Math.floor(free / 65568));
    expect(p.tiers.host.tokens).toBe(2 * M - p.perGpu.kvTokens);
    expect(p.tiers.gpu.tokens + p.tiers.host.tokens).toBe(2 * M);
    expect(p.decode.hostBytesPerGpu).toBe(p.tiers.host.tokens * 65568);
    // Attention FLOPs: 2 x 32 layers x 32 heads x 128 x N^2.
    expect(p.prefill.attentionFlops).toBe(2 * 32 * 32 * 128 * (2 * M) ** 2);
    // Times only with rates, labelled with where they came from.
    expect(p.rates?.source).toMatch(/datasheet/);
    expect(p.prefill.seconds!.total).toBe(
      Math.max(p.prefill.seconds!.compute, p.prefill.seconds!.copies),
    );
    expect(p.decode.secondsPerToken).toBeGreaterThan(0);
  });

  it("beyond GPU and host: the store tier with --store, else refused", () => {
    const input = {
      ...base,
      context: 4 * M,
      kvDtype: "bf16" as const,
      gpus: 1,
      hostMemoryBytes: 256 * GiB,
    };
    expect(() => placeContext(input)).toThrow(/use fp8 KV, or back the host tier/);
    const p = placeContext({ ...input, store: true });
    const total = p.tiers.gpu.tokens + p.tiers.host.tokens + p.tiers.store.tokens;
    expect(total).toBe(4 * M);
    expect(p.tiers.host.bytes).toBeLessThanOrEqual(256 * GiB);
    expect(p.tiers.store.bytes).toBe(
      kvCacheBytes(ULTRALONG_8B, "bf16", 4 * M) - p.tiers.gpu.bytes - p.tiers.host.bytes,
    );
  });

  it("refuses a model that does not fit a GPU and nonsense counts", () => {
    const small = { ...base, gpuMemoryBytes: 8 * GiB, context: 1024, kvDtype: "bf16" as const };
    expect(() => placeContext({ ...small, gpus: 1 })).toThrow(/does not fit one GPU: weights/);
    expect(() => placeContext({ ...base, context: 0, kvDtype: "bf16", gpus: 1 })).toThrow(
      InvalidInputError,
    );
    expect(() => placeContext({ ...base, context: 1024, kvDtype: "bf16", gpus: 0 })).toThrow(
      /--gpus/,
    );
  });
});

describe("ultralong plan", () => {
  it("prints the placement, JSON with --json, times from a rates file", async () => {
    const text = await runUltralong([
      "plan",
      "--context",
      "4M",
      "--kv-dtype",
      "fp8",
      "--gpus",
      "8",
    ]);
    expect(text.status).toBe(0);
    expect(text.stdout).toContain("4M tokens of fp8 KV = 256.1 GiB (64 KiB per token) on 8 GPUs");
    expect(text.stdout).toContain("times:   need --rates");
    const rates = join(scratchDir("rates"), "rates.json");
    await writeFile(
      rates,
      JSON.stringify({ gemmTflops: 500, attentionTflops: 400, hbmGBps: 4000, hostLinkGBps: 50 }),
    );
    const json = await runUltralong([
      "plan",
      "--context",
      "1M",
      "--kv-dtype",
      "fp8",
      "--rates",
      rates,
      "--json",
    ]);
    expect(json.status).toBe(0);
    const out = JSON.parse(json.stdout);
    expect(out.context).toBe(M);
    expect(out.rates.source).toBe(rates);
    const attention = 2 * 32 * 32 * 128 * M * M;
    expect(out.prefill.seconds.compute).toBeCloseTo(
      out.prefill.gemmFlops / 500e12 + attention / 400e12,
      6,
    );
  });

  it("refuses a plan that does not fit and a mistake alike: one line, non-zero exit", async () => {
    const r = await runUltralong(["plan", "--context", "4M", "--kv-dtype", "fp8"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toMatch(/do not fit: 1 GPU x/);
    for (const args of [
      ["--context", "lots"],
      ["--context", "1M", "--kv-dtype", "f16"],
      ["--context", "1M", "--gpus", "two"],
      [],
    ]) {
      const bad = await runUltralong(["plan", ...args]);
      expect(bad.status, args.join(" ")).not.toBe(0);
      expect(bad.stderr.trim().split("\n"), args.join(" ")).toHaveLength(1);
    }
  });
});
