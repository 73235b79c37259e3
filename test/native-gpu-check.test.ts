// native/scripts/gpu-check.sh --dry-run: the GPU check end to end on the C++ reference kernels. One
// JSON line per stage on stdout and in OUT/gpu-check.jsonl, each ok; the KV export it writes is
// imported here by native/scripts/import-gpu-kv.ts into the wasm (and native-wasm) runtime with
// matching logits; a stage past its time limit is a failed line and the next stages still run.
// Needs g++ and Debian's python3 with PyTorch.
import { spawnSync } from "node:child_process";
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { wasmUnavailableReason as nativeWasmMissing } from "../native/ts/wasm-host.ts";
import { wasmUnavailableReason } from "../wasm/src/module.ts";
import { haveTorch, TORCH_PYTHON, tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
const haveGxx = spawnSync("g++", ["--version"], { stdio: "ignore" }).status === 0;
const ready =
  tool("g++", haveGxx, "the gpu-check dry run") &&
  tool("torch", haveTorch(), "the gpu-check dry run");
const haveWasm = tool(
  "wasm/build/ultralong.wasm",
  (await wasmUnavailableReason()) === null,
  "importing the GPU check's KV export into the wasm runtime",
);
const haveNativeWasm = tool(
  "native/build/wasm (emcc)",
  nativeWasmMissing() === null,
  "importing the GPU check's KV export into the native-wasm runtime",
);

const STAGES = [
  "build",
  "kernels",
  "prefill",
  "chunked",
  "decode",
  "kv-roundtrip",
  "fp8",
  "kv-export",
  "paged",
  "attention-fa2",
  "bench-attention",
  "bench-gemm",
  "bench-prefill",
  "bench-paged-decode",
  "tiered",
];

interface Line {
  stage: string;
  ok: boolean;
  gemm: string;
  seconds: number;
  limit_s: number;
  error?: string;
  [key: string]: unknown;
}

function gpuCheck(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(join(root, "native/scripts/gpu-check.sh"), args, {
    cwd: root,
    encoding: "utf8",
    env: { ...process.env, PYTHON: TORCH_PYTHON, ...env },
    timeout: 900_000,
  });
  const lines = r.stdout
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Line);
  return { status: r.status, stderr: r.stderr, stdout: r.stdout, lines };
}

function importKv(out: string, runtime: string) {
  const r = spawnSync(
    "npx",
    ["tsx", "native/scripts/import-gpu-kv.ts", out, "--runtime", runtime],
    { cwd: root, encoding: "utf8", timeout: 300_000 },
  );
  const last = r.stdout.trim().split("\n").pop() ?? "";
  return { status: r.status, stderr: r.stderr, result: last ? JSON.parse(last) : null };
}

describe.skipIf(!ready)("gpu-check.sh --dry-run", () => {
  const out = mkdtempSync(join(tmpdir(), "ul-gpu-check-"));
  let run: ReturnType<typeof gpuCheck>;
  const stage = (name: string) => {
    const line = run.lines.find((l) => l.stage === name);
    if (!line) throw new Error(`no ${name} line in: ${run.stdout.slice(-2000)}`);
    return line;
  };

  beforeAll(() => {
    run = gpuCheck(["--dry-run", "--out", out]);
  }, 900_000);

  it("prints one ok JSON line per stage, then the summary, each naming the GEMM that ran", () => {
    expect(run.status, run.stderr.slice(-3000)).toBe(0);
    expect(run.lines.map((l) => l.stage)).toEqual([...STAGES, "summary"]);
    for (const l of run.lines) {
      expect(l.ok, JSON.stringify(l).slice(0, 2000)).toBe(true);
      expect(l).toMatchObject({ dry_run: true, backend: "reference", gemm: "reference" });
      expect(l.limit_s).toBeGreaterThan(0);
    }
    const summary = stage("summary");
    expect(summary.failed).toEqual([]);
    expect(summary.note).toMatch(/not executed/);
    expect(summary.limit_s).toBe(STAGES.length * 300); // the dry run's limits
    // The same lines, in order, in the out folder.
    const jsonl = readFileSync(join(out, "gpu-check.jsonl"), "utf8").trim().split("\n");
    expect(jsonl.map((l) => JSON.parse(l))).toEqual(run.lines);
  });

  it("build reports the backend info and the cuBLASLt search", () => {
    const build = stage("build");
    expect(build.info).toEqual({ kernels: "reference", gemm: "reference" });
    const search = build.cublaslt_search as { candidates: string[]; cublaslt_tried: unknown[] };
    expect(search.candidates.slice(0, 3)).toEqual([
      "libcublasLt.so.13",
      "libcublasLt.so.12",
      "libcublasLt.so",
    ]);
  });

  it("kernels: every op of the backend within its tolerance, GEMMs labelled", () => {
    const k = stage("kernels") as Line & {
      kernels: { op: string; ok: boolean; max_abs_err: number; gemm?: string }[];
      gemm_backends: string[];
    };
    expect(k.gemm_backends).toEqual(["reference"]);
    const ops = k.kernels.map((x) => x.op);
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
    for (const x of k.kernels) {
      expect(Number.isFinite(x.max_abs_err)).toBe(true);
      expect(x.ok).toBe(true);
      if (x.op.startsWith("gemm")) expect(x.gemm).toBe("reference");
    }
  });

  it("prefill, chunked (7, 13, 17, max_chunk 13 on 50 tokens) and decode match the float64 reference", () => {
    type Case = {
      case: string;
      ok: boolean;
      normalized_err: number;
      tolerance: number;
      same_argmax: boolean;
    };
    const cases = (name: string) => (stage(name) as Line & { cases: Case[] }).cases;
    expect(cases("prefill").length).toBe(2);
    expect(cases("chunked").map((c) => c.case)).toEqual([
      "yarn_hd128_gqa2/50/feed7",
      "yarn_hd128_gqa2/50/feed13",
      "yarn_hd128_gqa2/50/feed17",
      "yarn_hd128_gqa2/50/maxchunk13",
      "llama3_hd16_tied_f32/37/feed7",
    ]);
    expect(cases("decode").length).toBe(2);
    for (const name of ["prefill", "chunked", "decode"]) {
      for (const c of cases(name)) {
        expect(c.tolerance).toBe(1e-4); // reference kernels: f32 rounding only
        expect(c.normalized_err, c.case).toBeLessThanOrEqual(c.tolerance);
        expect(c.same_argmax).toBe(true);
      }
    }
  });

  it("kv-roundtrip and fp8 hold their bounds", () => {
    const runs = (stage("kv-roundtrip") as Line & { runs: Record<string, unknown>[] }).runs;
    expect(runs[0]).toMatchObject({
      export_dtype: "f32",
      prefix: 70,
      reexport_bytes_equal: true,
      truncate_import_vs_continuing: 0,
      new_engine_import_vs_continuing: 0,
    });
    // An fp8 cache exported as fp8 (one whole 64-position block, scales included) and imported.
    expect(runs[1]).toMatchObject({
      kv_dtype: "fp8",
      export_dtype: "fp8",
      prefix: 64,
      reexport_bytes_equal: true,
      new_engine_import_vs_continuing: 0,
    });
    const fp8 = (stage("fp8") as Line & { cases: { normalized_err: number; tolerance: number }[] })
      .cases;
    expect(fp8.length).toBe(3);
    for (const c of fp8) {
      expect(c.tolerance).toBe(5e-2);
      expect(c.normalized_err).toBeGreaterThan(0); // fp8 really rounds the KV
      expect(c.normalized_err).toBeLessThanOrEqual(c.tolerance);
    }
  });

  it("attention-fa2: every case of the paged, ragged comparison ran, and says what the dry run skips", () => {
    const line = stage("attention-fa2") as Line & {
      variants: { variant: string; cases: { group: number; keys: number; ok: boolean }[] }[];
      skipped: string;
    };
    expect(line.variants.map((v) => v.variant)).toEqual(["reference"]);
    const cases = line.variants[0].cases;
    expect(cases.map((c) => c.group)).toEqual([4, 2, 8, 1]);
    for (const c of cases) {
      expect(c.ok).toBe(true);
      expect(c.keys % 16).not.toBe(0); // off the 16-row and 64-key tiles
    }
    expect(line.skipped).toMatch(/fa2, fa2-32, wmma\) are not executed/);
    expect(stage("summary").figures).toMatchObject({ attention_fa2_max_normalized_err: 0 });
  });

  it("tiered: every tiered case is identical to the resident engine; copy rates measured", () => {
    const line = stage("tiered") as Line & {
      results: {
        kv: string;
        cases: { form: string; device_blocks: number; identical: boolean }[];
      }[];
      copy: { h2d_gbps: number; d2h_gbps: number };
    };
    expect(line.results.map((r) => r.kv)).toEqual(["f32", "fp8"]);
    for (const r of line.results) {
      expect(r.cases.map((c) => `${c.form} ${c.device_blocks}`)).toEqual([
        "single 0",
        "single 1",
        "single 3",
        "paged 3",
      ]);
      for (const c of r.cases) expect(c.identical).toBe(true);
    }
    expect(line.copy.h2d_gbps).toBeGreaterThan(0);
    expect(line.copy.d2h_gbps).toBeGreaterThan(0);
    expect((stage("summary").figures as { tiered_copy: object }).tiered_copy).toBeDefined();
  });

  it("bench-paged-decode: the decode row's KV bandwidth at both lengths, bf16 and fp8", () => {
    const line = stage("bench-paged-decode") as Line & {
      decode_bandwidth: { kv: string; keys: number; gbps: number; fraction_of_hbm: number }[];
    };
    expect(line.decode_bandwidth.map((r) => `${r.kv} ${r.keys}`)).toEqual([
      "bf16 1000",
      "bf16 4099",
      "fp8 1000",
      "fp8 4099",
    ]);
    for (const r of line.decode_bandwidth) {
      expect(r.gbps).toBeGreaterThan(0);
      expect(r.fraction_of_hbm).toBeCloseTo((r.gbps * 1e9) / 4.8e12, 3);
    }
    expect(
      (stage("summary").figures as { decode_bandwidth: unknown[] }).decode_bandwidth,
    ).toHaveLength(4);
  });

  it("benchmarks ran beside torch on tiny shapes", () => {
    const bench = stage("bench-attention") as Line & { skipped: string };
    const attention = bench.results as {
      seq_len: number;
      ratio: number;
      variants: Record<string, { tflops: number }>;
      peers: Record<string, { tflops: number }>;
    }[];
    expect(attention.map((a) => a.seq_len)).toEqual([128, 256]);
    for (const a of attention) {
      expect(a.ratio).toBeGreaterThan(0);
      expect(Object.keys(a.variants)).toEqual(["reference"]);
      expect(Object.keys(a.peers)).toEqual(["math_cpu"]);
    }
    expect(bench.skipped).toMatch(/SDPA backends \(flash, cudnn, efficient\) are not run/);
    const gemm = stage("bench-gemm").results as { name: string; ratio: number }[];
    expect(gemm.map((g) => g.name)).toEqual([
      "q_proj",
      "kv_proj",
      "o_proj",
      "gate_up_proj",
      "down_proj",
    ]);
    const prefill = stage("bench-prefill").results as { tokens: number; logits_finite: boolean }[];
    expect(prefill.map((p) => p.tokens)).toEqual([32, 64]);
    expect(stage("summary").targets).toMatchObject({ prefill_128k_seconds: 15 });
  });

  it("writes a KV export that import-gpu-kv.ts continues in the wasm runtime with the same logits", () => {
    for (const f of ["meta.json", "kv.bin", "tokens.bin", "logits.bin", "reference.f64", "model"]) {
      expect(existsSync(join(out, "kv-export", f)), f).toBe(true);
    }
    if (!haveWasm) return;
    const r = importKv(out, "wasm");
    expect(r.status, r.stderr).toBe(0);
    // The export came from the reference kernels: f32 against the wasm runtime's f32 SIMD kernels.
    expect(r.result).toMatchObject({ runtime: "wasm", ok: true, tolerance: 1e-4, prefix: 70 });
    expect(r.result.normalized_err).toBeLessThanOrEqual(1e-4);
    expect(r.result.same_argmax).toBe(true);
    expect(r.result.vs_float64_reference).toBeLessThanOrEqual(1e-4);
  }, 300_000);

  it.skipIf(!haveNativeWasm)(
    "and in the native-wasm runtime",
    () => {
      const r = importKv(out, "native-wasm");
      expect(r.status, r.stderr).toBe(0);
      expect(r.result).toMatchObject({ runtime: "native-wasm", ok: true });
      expect(r.result.normalized_err).toBeLessThanOrEqual(1e-4);
    },
    300_000,
  );

  it.skipIf(!haveWasm)(
    "import-gpu-kv.ts fails on other logits and refuses a cut KV file",
    () => {
      const bad = mkdtempSync(join(tmpdir(), "ul-gpu-kv-bad-"));
      cpSync(join(out, "kv-export"), join(bad, "kv-export"), { recursive: true });
      // Other logits (the same values, reversed): the comparison must see it.
      const logits = new Float32Array(
        Uint8Array.from(readFileSync(join(bad, "kv-export/logits.bin"))).buffer,
      );
      logits.reverse();
      writeFileSync(join(bad, "kv-export/logits.bin"), logits);
      const wrong = importKv(bad, "wasm");
      expect(wrong.status).toBe(1);
      expect(wrong.result.ok).toBe(false);
      // A KV file one position short: one clear error, exit 2.
      const kv = readFileSync(join(out, "kv-export/kv.bin"));
      writeFileSync(join(bad, "kv-export/kv.bin"), kv.subarray(0, kv.byteLength - 1024));
      copyFileSync(join(out, "kv-export/logits.bin"), join(bad, "kv-export/logits.bin"));
      const cut = importKv(bad, "wasm");
      expect(cut.status).toBe(2);
      expect(cut.stderr).toMatch(/KV bytes/);
    },
    300_000,
  );

  it("a stage past its time limit is a failed line, and the next stages still run", () => {
    const r = gpuCheck(
      [
        "--dry-run",
        "--out",
        mkdtempSync(join(tmpdir(), "ul-gpu-check-limit-")),
        "--stage",
        "chunked",
        "--stage",
        "decode",
      ],
      { UL_GPU_CHECK_BUDGETS: "chunked=0.01" },
    );
    expect(r.status).toBe(1);
    expect(r.lines.map((l) => l.stage)).toEqual(["build", "chunked", "decode", "summary"]);
    const [build, chunked, decode, summary] = r.lines;
    expect(build.ok).toBe(true);
    expect(chunked).toMatchObject({ ok: false, timed_out: true, limit_s: 0.01 });
    expect(chunked.error).toMatch(/timed out after 0.01 s/);
    expect(decode.ok).toBe(true);
    expect(summary).toMatchObject({ ok: false, failed: ["chunked"] });
  }, 900_000);
});
