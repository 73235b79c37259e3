// The split-KV decode kernel itself on the CPU: native/programs/decode_emulate.cpp compiles the real
// kernel source (native/src/cuda/attention_decode.cu) with g++, runs every thread block as 128 CPU
// threads (shuffles and __syncthreads emulated), with the split count and chunk the launcher
// computes, and compares each output with a float64 attention through the same shuffled paged
// tables: bf16 and fp8 (per-64-slot block scales) KV, GQA groups 1, 4 and 8, group 4 also with a
// staged host tier over 2 kv heads, query rows of 1, 63, 1000 and 4099 keys and a 100-key row
// without a table, all in one launch. Needs g++ and the CUDA headers (cuda_bf16.h, cuda_fp8.h).
import { spawnSync } from "node:child_process";
import { beforeAll, describe, expect, it } from "vitest";
import { buildEmulation, emulationReady } from "./support/kernel-emulation.ts";

const ready = emulationReady("the decode kernel emulation (decode_emulate.cpp)");

interface Report {
  break_shuffle: boolean;
  ok: boolean;
  cases: {
    case: string;
    heads_per_block: number;
    splits: number;
    normalized_err: number | null;
    finite_and_written: boolean;
    multi_key_ok: boolean;
    ok: boolean;
  }[];
}

describe.skipIf(!ready)("decode_emulate (attention_decode.cu's kernel on CPU threads)", () => {
  let bin = "";

  beforeAll(() => {
    const cc = buildEmulation("decode_emulate");
    expect(cc.status, cc.stderr).toBe(0);
    bin = cc.bin;
  }, 300_000);

  function run(args: string[]) {
    const r = spawnSync(bin, args, { encoding: "utf8", timeout: 600_000 });
    return { status: r.status, report: JSON.parse(r.stdout) as Report };
  }

  it("matches float64 attention within f32 accumulation and bf16 output rounding, every output written", () => {
    const { status, report } = run([]);
    expect(report.cases.map((c) => `${c.case}/${c.heads_per_block}`)).toEqual([
      "bf16_group1/1",
      "bf16_group4/4",
      "bf16_group4_tiered/4",
      "bf16_group8/8",
      "fp8_group1/1",
      "fp8_group4/4",
      "fp8_group4_tiered/4",
      "fp8_group8/4", // fp8 caps a block at 4 heads (registers): two blocks per kv head
    ]);
    for (const c of report.cases) {
      expect(c.finite_and_written, c.case).toBe(true);
      expect(c.splits, c.case).toBeGreaterThan(1); // the split / combine path, not one block a row
      expect(c.normalized_err, c.case).toBeLessThanOrEqual(5e-3);
      expect(c.normalized_err, c.case).toBeGreaterThan(0); // the output is rounded to bf16
    }
    expect(status).toBe(0);
  }, 600_000);

  it("fails when the warp shuffles exchange nothing (a broken reduction)", () => {
    const { status, report } = run(["--break-shuffle"]);
    expect(status).toBe(1);
    expect(report.break_shuffle).toBe(true);
    expect(report.cases.length).toBeGreaterThan(0);
    for (const c of report.cases) expect(c.multi_key_ok, c.case).toBe(false);
  }, 600_000);
});
