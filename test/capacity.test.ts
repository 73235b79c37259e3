// The GPU memory plan (core/model/capacity.ts) on UltraLong-8B's real numbers, worked by hand here,
// and the size parsers the CLI and the deploy take GPU memory and contexts with.
import { describe, expect, it } from "vitest";
import { InvalidInputError } from "../core/errors.ts";
import { FP8_BLOCK_POSITIONS } from "../core/kv/layout.ts";
import {
  chunkActivationBytes,
  FIXED_RESERVE_BYTES,
  kvCacheBytes,
  longestContext,
  memoryFor,
  parameterCount,
  planArithmetic,
} from "../core/model/capacity.ts";
import { parseConfig } from "../core/model/config.ts";
import { parseByteSize, parseTokenCount } from "../core/model/quantities.ts";
import { ULTRALONG_8B } from "../core/model/ultralong-8b.ts";
import { ULTRALONG_CONFIG } from "./support/ultralong-config.ts";

const GiB = 2 ** 30;
const H200 = 143771 * 2 ** 20; // nvidia-smi's memory.total for an H200 141 GB, in bytes

describe("UltraLong-8B memory", () => {
  it("plans from the shape its config.json parses to", () => {
    const c = parseConfig(JSON.stringify(ULTRALONG_CONFIG), "config.json");
    for (const [k, v] of Object.entries(ULTRALONG_8B)) expect(c[k as keyof typeof c], k).toBe(v);
  });

  it("has 8.03 B parameters: 16.06 GB of bf16 weights", () => {
    // embed + lm_head (untied): 2 x 128256 x 4096; per layer q,o 4096^2, k,v 1024 x 4096,
    // gate/up/down 3 x 4096 x 14336, two norms; the final norm.
    const perLayer = 2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 4096 * 14336 + 2 * 4096;
    const params = 2 * 128256 * 4096 + 32 * perLayer + 4096;
    expect(params).toBe(8_030_261_248);
    expect(parameterCount(ULTRALONG_8B)).toBe(params);
    expect(memoryFor(ULTRALONG_8B, "bf16", 0).weights).toBe(16_060_522_496);
  });

  it("holds 128 KiB of bf16 KV per position, 64 KiB of fp8 plus its per-block f32 scales", () => {
    expect(kvCacheBytes(ULTRALONG_8B, "bf16", 1)).toBe(128 * 1024);
    expect(kvCacheBytes(ULTRALONG_8B, "bf16", 2 ** 20)).toBe(128 * GiB);
    const blocks = 2 ** 20 / FP8_BLOCK_POSITIONS; // 64 (UL_FP8_BLOCK)
    // one f32 per (layer, K|V, kv_head, block)
    expect(kvCacheBytes(ULTRALONG_8B, "fp8-e4m3", 2 ** 20)).toBe(
      64 * GiB + 32 * 2 * 8 * blocks * 4,
    );
    // a partial block costs a whole block's scales
    expect(kvCacheBytes(ULTRALONG_8B, "fp8-e4m3", 1)).toBe(65536 + 32 * 2 * 8 * 4);
    expect(kvCacheBytes(ULTRALONG_8B, "fp8-e4m3", 65)).toBe(65 * 65536 + 32 * 2 * 8 * 2 * 4);
  });

  it("counts one 4096-row prefill chunk's scratch as the engine allocates it", () => {
    const rows = 4096;
    const bytes =
      64 * 8 + // inv_freq f64
      rows * 4096 * 4 + // x f32
      rows * 4096 * 2 * 2 + // xn, q bf16
      rows * 1024 * 2 * 2 + // k, v
      rows * 14336 * 2 * 2 + // gate, up
      32 * 128256 * 4; // logits f32, 32 rows through lm_head together
    expect(chunkActivationBytes(ULTRALONG_8B)).toBe(bytes);
    expect(chunkActivationBytes(ULTRALONG_8B, { chunkRows: 512 })).toBeLessThan(bytes / 6);
  });

  it("finds the exact longest context: the next position would not fit", () => {
    for (const dtype of ["bf16", "fp8-e4m3"] as const) {
      for (const gpu of [H200, 81559 * 2 ** 20, 46068 * 2 ** 20, 141e9]) {
        const n = longestContext(ULTRALONG_8B, dtype, gpu);
        expect(memoryFor(ULTRALONG_8B, dtype, n).total).toBeLessThanOrEqual(gpu);
        expect(memoryFor(ULTRALONG_8B, dtype, n + 1).total).toBeGreaterThan(gpu);
      }
    }
    expect(longestContext(ULTRALONG_8B, "bf16", 16 * GiB)).toBe(0);
  });

  it("fits about 1.01M bf16 positions on one H200 (not 1M = 2^20) and 2.02M in fp8 (not 2M)", () => {
    const fixed = 16_060_522_496 + chunkActivationBytes(ULTRALONG_8B) + FIXED_RESERVE_BYTES;
    const bf16 = longestContext(ULTRALONG_8B, "bf16", H200);
    expect(bf16).toBe(Math.floor((H200 - fixed) / 131072));
    expect(bf16).toBe(1_012_278);
    const fp8 = longestContext(ULTRALONG_8B, "fp8-e4m3", H200);
    expect(fp8).toBeGreaterThan(2_000_000);
    expect(fp8).toBeLessThan(2 ** 21);
  });

  it("states the arithmetic of a plan against a GPU", () => {
    const plan = memoryFor(ULTRALONG_8B, "bf16", 2 ** 20);
    expect(planArithmetic(plan, H200)).toBe(
      "weights 14.96 GiB + KV 128.00 GiB + reserve 1.87 GiB = 144.83 GiB > GPU 140.40 GiB",
    );
    expect(planArithmetic(memoryFor(ULTRALONG_8B, "bf16", 1000), H200)).toContain("<= GPU");
  });
});

describe("sizes typed on the command line", () => {
  it("takes G and GiB as 2^30, GB as 10^9, M as MiB, a bare number as bytes", () => {
    expect(parseByteSize("--gpu-memory", "141G")).toBe(141 * GiB);
    expect(parseByteSize("--gpu-memory", "141GiB")).toBe(141 * GiB);
    expect(parseByteSize("--gpu-memory", "141gb")).toBe(141e9);
    expect(parseByteSize("--gpu-memory", "143771M")).toBe(H200);
    expect(parseByteSize("--gpu-memory", "143771MiB")).toBe(H200);
    expect(parseByteSize("--gpu-memory", "140.4G")).toBe(Math.floor(140.4 * GiB));
    expect(parseByteSize("--gpu-memory", "150754820096")).toBe(H200);
  });

  it("takes contexts as K = 1024 and M = 2^20 positions, or plain integers", () => {
    expect(parseTokenCount("--max-context", "1M")).toBe(1_048_576);
    expect(parseTokenCount("--max-context", "4m")).toBe(4 * 1_048_576);
    expect(parseTokenCount("--max-context", "256K")).toBe(262_144);
    expect(parseTokenCount("--max-context", "1.5M")).toBe(1_572_864);
    expect(parseTokenCount("--max-context", "100000")).toBe(100_000);
  });

  it("refuses anything else with one line naming the option", () => {
    for (const bad of ["", "0", "-1G", "141X", "G", "1e9", "141 G B"]) {
      expect(() => parseByteSize("--gpu-memory", bad)).toThrow(InvalidInputError);
      expect(() => parseByteSize("--gpu-memory", bad)).toThrow(/^--gpu-memory must be/);
    }
    for (const bad of ["1G", "0.5", "1.0000001K", "0K", "abc"]) {
      expect(() => parseTokenCount("--max-context", bad)).toThrow(/^--max-context must be/);
    }
  });
});
