// native/scripts/gpu-check.sh --dry-run: the GPU check end to end on the C++ reference kernels
// (build, kernel checks, logits against the float64 PyTorch reference, benchmarks beside torch),
// validating the JSON it prints. Needs g++ and Debian's python3 with PyTorch.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { haveTorch, TORCH_PYTHON, tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
const haveGxx = spawnSync("g++", ["--version"], { stdio: "ignore" }).status === 0;
const ready =
  tool("g++", haveGxx, "the gpu-check dry run") &&
  tool("torch", haveTorch(), "the gpu-check dry run");

describe.skipIf(!ready)("gpu-check.sh --dry-run", () => {
  it("runs every step on the reference backend and prints the report JSON", () => {
    const r = spawnSync(join(root, "native/scripts/gpu-check.sh"), ["--dry-run"], {
      cwd: root,
      encoding: "utf8",
      env: { ...process.env, PYTHON: TORCH_PYTHON },
      timeout: 500_000,
    });
    expect(r.status, r.stderr.slice(-3000)).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report).toMatchObject({ dry_run: true, backend: "reference", ok: true });
    expect(report.note).toMatch(/not executed/);

    const ops = report.kernels.kernels.map((k: { op: string }) => k.op);
    for (const op of [
      "rmsnorm",
      "gemm",
      "gemm_accumulate_f32",
      "rope",
      "swiglu",
      "embed",
      "attention_prefill_bf16",
      "attention_decode_bf16",
      "attention_prefill_fp8",
      "attention_decode_fp8",
      "sample_token_ids",
    ]) {
      expect(ops).toContain(op);
    }
    for (const k of report.kernels.kernels) {
      expect(Number.isFinite(k.max_abs_err)).toBe(true);
      expect(k.ok).toBe(true);
    }

    expect(report.golden.length).toBe(3);
    for (const g of report.golden) {
      expect(g.ok, JSON.stringify(g)).toBe(true);
      expect(g.same_argmax).toBe(true);
      expect(g.normalized_err).toBeLessThanOrEqual(g.tolerance);
    }

    const { attention, gemm, prefill } = report.bench;
    expect(attention.map((a: { seq_len: number }) => a.seq_len)).toEqual([128, 256]);
    for (const a of attention) {
      expect(a.ours_tflops).toBeGreaterThan(0);
      expect(a.torch_tflops).toBeGreaterThan(0);
      expect(a.ratio).toBeCloseTo(a.ours_tflops / a.torch_tflops, 6);
    }
    expect(gemm.map((g: { name: string }) => g.name)).toEqual([
      "q_proj",
      "kv_proj",
      "o_proj",
      "gate_up_proj",
      "down_proj",
    ]);
    for (const g of gemm) expect(g.ratio).toBeGreaterThan(0);
    expect(prefill.results.map((p: { tokens: number }) => p.tokens)).toEqual([32, 64]);
    for (const p of prefill.results) expect(p.logits_finite).toBe(true);
    expect(report.targets.prefill_128k_seconds).toBe(15);
  }, 600_000);
});
