// `ultralong inspect --gpu-memory`: the longest context each CUDA KV dtype allows on one GPU, through
// the real CLI process, on a generated model directory and on UltraLong-8B's config.json alone
// (its 16 GB of weights are not needed to size a GPU).
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { longestContext, memoryFor } from "../core/model/capacity.ts";
import { parseConfig } from "../core/model/config.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { runUltralong, scratchDir, TINY, testModelDir } from "./support/models.ts";
import { ULTRALONG_CONFIG } from "./support/ultralong-config.ts";

const GiB = 2 ** 30;
const group = (n: number) => n.toLocaleString("en-US");

async function ultralongConfigFile(): Promise<string> {
  const file = join(scratchDir("ultralong-config"), "config.json");
  await writeFile(file, JSON.stringify(ULTRALONG_CONFIG));
  return file;
}

describe.concurrent("ultralong inspect --gpu-memory", () => {
  it("prints the longest bf16 and fp8 context of a generated model on a 2 GiB GPU", async () => {
    const dir = await testModelDir(TINY);
    const c = (await loadModelDir(dir)).config;
    const r = await runUltralong(["inspect", dir, "--gpu-memory", "2G", "--json"]);
    expect(r.stderr).toBe("");
    const out = JSON.parse(r.stdout);
    expect(out.gpu.memoryBytes).toBe(2 * GiB);
    // bf16 by hand: what is left after weights and reserve, at 2 x layers x kv_heads x head_dim x 2 B
    const left = 2 * GiB - memoryFor(c, "bf16", 0).total;
    const bf16 = Math.floor(left / (2 * c.numHiddenLayers * c.numKeyValueHeads * c.headDim * 2));
    expect(out.gpu.longestContext.bf16).toBe(bf16);
    const fp8 = out.gpu.longestContext.fp8;
    expect(fp8).toBe(longestContext(c, "fp8-e4m3", 2 * GiB));
    expect(fp8).toBeGreaterThan(1.9 * bf16); // 1 B per element plus scales
    expect(out.gpu.weightBytes).toBe(out.parameters * 2); // TINY is stored in bf16 too
    expect(out.fingerprint).toMatch(/^[0-9a-f]{64}$/);

    const text = await runUltralong(["inspect", dir, "--gpu-memory", "2048M"]);
    expect(text.status).toBe(0);
    expect(text.stdout).toContain(`gpu memory   ${group(2 * GiB)} B = 2.00 GiB: bf16 weights`);
    expect(text.stdout).toContain(
      `max context  bf16 ${group(bf16)} tokens, fp8 ${group(fp8)} tokens\n`,
    );
  });

  it("sizes UltraLong-8B from its config.json: about 1.01M bf16 and 2.03M fp8 positions on 141 GiB", async () => {
    const file = await ultralongConfigFile();
    const r = await runUltralong(["inspect", file, "--gpu-memory", "141G", "--json"]);
    expect(r.stderr).toBe("");
    const out = JSON.parse(r.stdout);
    expect(out.parameters).toBe(8_030_261_248);
    expect(out.weightBytes).toBeNull(); // not read: config only
    expect(out.fingerprint).toBeNull();
    expect(out.kvBytesPerToken).toEqual({ f32: 262144, bf16: 131072, fp8: 65536 });
    expect(out.gpu.weightBytes).toBe(16_060_522_496);
    const c = parseConfig(JSON.stringify(ULTRALONG_CONFIG), "config.json");
    expect(out.gpu.longestContext).toEqual({
      bf16: longestContext(c, "bf16", 141 * GiB),
      fp8: longestContext(c, "fp8-e4m3", 141 * GiB),
    });
    // 141 GiB - 14.96 GiB weights - 1.86 GiB reserve = 124.17 GiB at 128 KiB per position
    expect(out.gpu.longestContext.bf16).toBe(
      Math.floor((141 * GiB - 16_060_522_496 - out.gpu.reserveBytes) / 131072),
    );
    expect(out.gpu.longestContext.bf16).toBeGreaterThan(1_000_000);
    expect(out.gpu.longestContext.bf16).toBeLessThan(2 ** 20); // 1M = 2^20 does not fit
    expect(out.gpu.longestContext.fp8).toBeGreaterThan(2_000_000);
    expect(out.gpu.longestContext.fp8).toBeLessThan(2 ** 21);

    // What CUDA reports for an H200 (143771 MiB) is 0.6 GiB less than 141 GiB; 141GB is 10^9s.
    const smi = JSON.parse(
      (await runUltralong(["inspect", file, "--gpu-memory", "143771MiB", "--json"])).stdout,
    );
    expect(smi.gpu.longestContext.bf16).toBe(1_012_278);
    const gb = JSON.parse(
      (await runUltralong(["inspect", file, "--gpu-memory", "141GB", "--json"])).stdout,
    );
    expect(gb.gpu.memoryBytes).toBe(141e9);
    expect(gb.gpu.longestContext.bf16).toBeLessThan(smi.gpu.longestContext.bf16);

    const text = await runUltralong(["inspect", file, "--gpu-memory", "141G"]);
    expect(text.stdout).toContain("weights      not read (config only)\n");
    expect(text.stdout).toContain(
      "gpu memory   151,397,597,184 B = 141.00 GiB: bf16 weights 14.96 GiB + reserve 1.87 GiB",
    );
    expect(text.stdout).toContain(`max context  bf16 ${group(out.gpu.longestContext.bf16)} tokens`);
  });

  it("prints 0 when the weights alone do not fit", async () => {
    const file = await ultralongConfigFile();
    const out = JSON.parse(
      (await runUltralong(["inspect", file, "--gpu-memory", "16G", "--json"])).stdout,
    );
    expect(out.gpu.longestContext).toEqual({ bf16: 0, fp8: 0 });
  });

  it("refuses a size it cannot read with one line", async () => {
    const dir = await testModelDir(TINY);
    const r = await runUltralong(["inspect", dir, "--gpu-memory", "141X"]);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain("--gpu-memory must be a positive number with an optional unit");
  });
});
