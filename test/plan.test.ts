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

  it("2M tokens on one H200: the GPU holds what fits beside two staging buffers, the host the rest", () => {
    const p = placeContext({
      ...base,
      context: 2 * M,
      kvDtype: "fp8-e4m3",
      gpus: 1,
      hostMemoryBytes: 64 * GiB,
      rates: DATASHEET_RATES.h200,
    });
    const free = H200 - memoryFor(ULTRALONG_8B, "fp8-e4m3", 0).total;
    // By hand: D device positions (whole 64-position blocks) cost 65568 B each; the 2M - D host
    // positions cost two staging buffers of one layer's host part, 2 x 65568 / 32 = 4098 B each.
    // D x 65568 + (2M - D) x 4098 <= free: D <= (free - 2M x 4098) / 61470, in whole blocks.
    const D = Math.floor((free - 2 * M * 4098) / 61470 / 64) * 64;
    expect(D).toBe(2018624); // 4,945 fewer than the 2,023,569 that fit with no staging
    expect(p.perGpu.kvTokens).toBe(D);
    expect(p.perGpu.stagingBytes).toBe((2 * M - D) * 4098); // 2 x 0.15 GiB
    expect(p.perGpu.stagingBytes).toBe((2 * p.tiers.host.bytes) / 32);
    expect(p.perGpu.total).toBe(H200 - free + D * 65568 + (2 * M - D) * 4098);
    expect(p.perGpu.total).toBeLessThanOrEqual(H200);
    expect(p.perGpu.total + 64 * (65568 - 4098)).toBeGreaterThan(H200); // one block more does not fit
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
    // Staging covers everything off the device, the store's part too (attention reads it all):
    // 2 x (4M - D) x 128 KiB / 32 layers = 25.9 GiB. Each position moved to the host frees its
    // 128 KiB and costs 8 KiB of staging, so the device tier is that much (to a block) below the
    // all-device 1,012,278 positions a GPU would hold with no staging counted.
    const D = p.perGpu.kvTokens;
    expect(D).toBe(800128);
    expect(p.perGpu.stagingBytes).toBe((4 * M - D) * 8192);
    expect(p.perGpu.total).toBeLessThanOrEqual(H200);
    const free = H200 - memoryFor(ULTRALONG_8B, "bf16", 0).total;
    const lost = (Math.floor(free / 131072) - D) * 131072 - p.perGpu.stagingBytes;
    expect(lost).toBeGreaterThanOrEqual(0);
    expect(lost).toBeLessThan(64 * 131072);
    expect(p.tiers.host.bytes).toBeLessThanOrEqual(256 * GiB);
    expect(p.tiers.store.bytes).toBe(
      kvCacheBytes(ULTRALONG_8B, "bf16", 4 * M) - p.tiers.gpu.bytes - p.tiers.host.bytes,
    );
  });

  it("refuses a host tier whose staging alone does not fit, with the arithmetic", () => {
    // 4M of bf16 on a 40 GiB GPU: even with every block on the host, each staging buffer is one
    // layer's host part, 4M x 128 KiB / 32 = 16 GiB, and 2 x 16 GiB > 40 - 16.83 GiB.
    const input = {
      ...base,
      gpuMemoryBytes: 40 * GiB,
      hostMemoryBytes: 1024 * GiB,
      context: 4 * M,
      kvDtype: "bf16" as const,
      gpus: 1,
    };
    const free = 40 * GiB - memoryFor(ULTRALONG_8B, "bf16", 0).total;
    expect(free).toBeLessThan(32 * GiB);
    expect(() => placeContext(input)).toThrow(
      `staging buffers, one layer's host part (4M tokens) each, take 2 x 16.00 GiB = 32.00 GiB > ${(free / GiB).toFixed(2)} GiB beside`,
    );
    expect(() => placeContext({ ...input, store: true })).toThrow(
      /even with every block on the host/,
    );
    // fp8 halves the staging (2 x 8.00 GiB), which fits.
    expect(placeContext({ ...input, kvDtype: "fp8-e4m3" }).perGpu.total).toBeLessThanOrEqual(
      40 * GiB,
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
    // No host part: no staging term.
    expect(text.stdout).toContain("+ KV 32.0 GiB (512K tokens) = 48.8 GiB\n");
    const tiered = await runUltralong([
      "plan",
      "--context",
      "4M",
      "--gpus",
      "1",
      "--host-memory",
      "512G",
      "--json",
    ]);
    expect(tiered.status).toBe(0);
    const perGpu = JSON.parse(tiered.stdout).perGpu;
    expect(perGpu).toMatchObject({ kvTokens: 800128, stagingBytes: (4 * M - 800128) * 8192 });
    expect(perGpu.total).toBe(
      perGpu.weights + perGpu.scratch + perGpu.kvBytes + perGpu.stagingBytes,
    );
    const line = await runUltralong(["plan", "--context", "4M", "--host-memory", "512G"]);
    expect(line.stdout).toContain(
      "+ KV 97.7 GiB (800,128 tokens) + staging 2 x 12.9 GiB = 140.4 GiB\n",
    );
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
