// The fa2_prefill kernel itself on the CPU: native/programs/fa2_emulate.cpp compiles the real
// kernel source (native/src/cuda/attention_fa2.cu) with g++, runs every thread block as 256 CPU
// threads with ldmatrix, mma.sync and cp.async emulated from the PTX ISA's description (copies land
// only when a wait_group forces them), and compares the outputs with a float64 causal attention
// through the same paged tables: GQA groups 4, 2 and 8, two items in one launch, sizes off every
// tile, tables of 16 and 5 positions and the identity, 7 key tiles (the K/V ring wraps), each on
// both kernel shapes (16 and 32 rows a warp). Needs g++ and the CUDA headers (cuda_bf16.h).
import { spawnSync } from "node:child_process";
import { beforeAll, describe, expect, it } from "vitest";
import { buildEmulation, emulationReady } from "./support/kernel-emulation.ts";

const ready = emulationReady("the fa2 kernel emulation (fa2_emulate.cpp)");

interface Report {
  break_wait: boolean;
  ok: boolean;
  access_error: string;
  cases: {
    case: string;
    warp_rows: number;
    normalized_err: number | null;
    finite_and_written: boolean;
    ok: boolean;
  }[];
}

describe.skipIf(!ready)("fa2_emulate (attention_fa2.cu's kernel on CPU threads)", () => {
  let bin = "";

  beforeAll(() => {
    const cc = buildEmulation("fa2_emulate");
    expect(cc.status, cc.stderr).toBe(0);
    bin = cc.bin;
  }, 300_000);

  function run(args: string[]) {
    const r = spawnSync(bin, args, { encoding: "utf8", timeout: 300_000 });
    return { status: r.status, stderr: r.stderr, report: JSON.parse(r.stdout) as Report };
  }

  it("matches float64 attention within bf16 rounding in every case, every output written", () => {
    const { status, report } = run([]);
    expect(report.access_error).toBe("");
    // Each case on both kernel shapes: 16 rows a warp (8 warps, 64-key tiles) and 32 (4 warps, 32-key).
    expect(report.cases.map((c) => `${c.case}/${c.warp_rows}`)).toEqual(
      [
        "group4_table16_two_items",
        "group2_identity",
        "group8_table5",
        "group4_420_keys",
        "group4_table16_tiered", // the same two items with 5 pool blocks resident, the rest staged
      ].flatMap((name) => [`${name}/16`, `${name}/32`]),
    );
    for (const c of report.cases) {
      expect(c.finite_and_written, c.case).toBe(true);
      expect(c.normalized_err, c.case).toBeLessThanOrEqual(1e-2);
      expect(c.normalized_err, c.case).toBeGreaterThan(0); // bf16 P and output do round
    }
    expect(status).toBe(0);
  }, 300_000);

  it("fails when the cp.async pipeline waits for one group too few", () => {
    const { status, report } = run(["--break-wait"]);
    expect(status).toBe(1);
    expect(report.break_wait).toBe(true);
    for (const c of report.cases) expect(c.ok, c.case).toBe(false);
  }, 300_000);
});
