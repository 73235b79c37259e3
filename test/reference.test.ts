// The independent PyTorch reference (test/reference/llama_reference.py) on tiny HF model
// directories written by test/reference/write_tiny_model.py: dtype and sharding do not change its
// answer, a model with zero attention/MLP weights gives lm_head(rmsnorm(embedding)) computed here
// by hand, the --kv-out layout is the snapshot layout, GQA follows repeat_kv, and bad directories
// fail with one line.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { haveTorch, TORCH_PYTHON, tool } from "./support/tools.ts";

const REFERENCE = "test/reference/llama_reference.py";

function py(args: string[]) {
  const r = spawnSync(TORCH_PYTHON, args, { encoding: "utf8", timeout: 180_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function pyOk(args: string[]): string {
  const r = py(args);
  if (r.status !== 0) throw new Error(`${args.join(" ")} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** A float32 safetensors file, read by hand (8-byte header length, JSON header, data). */
function readF32Safetensors(path: string): Map<string, { shape: number[]; data: Float32Array }> {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, info] of Object.entries(header) as [string, Record<string, never>][]) {
    if (name === "__metadata__") continue;
    expect(info.dtype).toBe("F32");
    const [b, e] = info.data_offsets as [number, number];
    const bytes = buf.subarray(8 + n + b, 8 + n + e);
    const data = new Float32Array(
      bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length),
    );
    out.set(name, { shape: info.shape, data });
  }
  return out;
}

function readF32(path: string): Float32Array {
  const b = readFileSync(path);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
}

/** rmsnorm(x) * w in float64, as transformers' LlamaRMSNorm. */
function rmsNorm(x: Float64Array, w: Float32Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => w[i] * v * inv);
}

const TOKENS = [3, 141, 59, 26, 5, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79, 50, 28, 8, 41];

describe.skipIf(!tool("torch", haveTorch(), "the PyTorch reference tests"))(
  "llama_reference.py",
  () => {
    let dir = "";
    let checks: Record<string, number> = {};
    const model = (name: string) => join(dir, name);
    const out = (name: string) => join(dir, `${name}.bin`);
    const kvPath = () => join(dir, "kv.bin");
    const sidecar = (name: string) => JSON.parse(readFileSync(`${out(name)}.json`, "utf8"));

    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), "llama-ref-"));
      // Each Python start costs seconds (torch import), so ONE process writes every model (one
      // seed on the bfloat16 grid written four ways, a zero-block model, the bases of the two
      // broken directories), runs the reference's CLI entry point main() on each, and runs
      // reference_checks.py. The process boundary itself (exit status, stderr) is exercised by
      // the --tokens-file and broken-directory tests, which start the script as a program.
      const models: string[][] = [
        [model("f32"), "--round-bf16", "--seed", "7"],
        [model("f32-sharded"), "--round-bf16", "--seed", "7", "--shards", "2"],
        [model("bf16-sharded"), "--round-bf16", "--seed", "7", "--dtype", "bf16", "--shards", "3"],
        [model("f16"), "--round-bf16", "--seed", "7", "--dtype", "f16"],
        [model("zero"), "--layers", "1", "--zero-blocks", "--seed", "9", "--rope", "yarn"],
        [model("tied"), "--tie", "--layers", "1"],
        [model("truncated"), "--layers", "1"],
      ];
      const tokens = ["--tokens", TOKENS.join(",")];
      const runs: string[][] = [
        [model("f32"), ...tokens, "--out", out("f32"), "--kv-out", kvPath()],
        [model("bf16-sharded"), ...tokens, "--out", out("bf16-sharded")],
        [model("f16"), ...tokens, "--out", out("f16")],
        [model("zero"), ...tokens, "--out", out("zero")],
      ];
      const script = [
        "import sys, json",
        "sys.path.insert(0, 'test/reference')",
        "import write_tiny_model, llama_reference, reference_checks",
        "jobs = json.loads(sys.argv[1])",
        "for a in jobs['models']: write_tiny_model.main(a)",
        "for a in jobs['runs']: assert llama_reference.main(a) == 0, a",
        "reference_checks.main(['reference_checks.py', jobs['checks']])",
      ].join("\n");
      const jobs = { models, runs, checks: join(dir, "checks") };
      const stdout = pyOk(["-c", script, JSON.stringify(jobs)]);
      checks = JSON.parse(stdout.trim().split("\n").pop()!);
    }, 300_000);

    afterAll(() => {
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it("gives byte-identical logits for F32 and BF16 writings of the same weights, sharded or not", () => {
      const f32 = readFileSync(out("f32"));
      expect(f32.length).toBe(TOKENS.length * 256 * 4);
      expect(readFileSync(out("bf16-sharded")).equals(f32)).toBe(true);
    });

    // F16 holds every bf16 value of this size exactly except the rare ones below its normal range
    // (6.1e-5), which become subnormals with fewer bits: measured 1 of 106816 weights differs, and
    // the logits by 4.8e-9; 1e-6 leaves 200x headroom and any misread weight moves logits far more.
    it("F16 agrees with F32 to 1e-6", () => {
      const a = readF32(out("f32"));
      const b = readF32(out("f16"));
      let worst = 0;
      for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
      expect(worst).toBeLessThan(1e-6);
    });

    it("a model with zero attention and MLP weights gives lm_head(rmsnorm(embedding))", () => {
      const w = readF32Safetensors(join(model("zero"), "model.safetensors"));
      const config = JSON.parse(readFileSync(join(model("zero"), "config.json"), "utf8"));
      const E = config.hidden_size as number;
      const V = config.vocab_size as number;
      const emb = w.get("model.embed_tokens.weight")!.data;
      const norm = w.get("model.norm.weight")!.data;
      const head = w.get("lm_head.weight")!.data;
      const got = readF32(out("zero"));
      let worst = 0;
      TOKENS.forEach((t, p) => {
        const x = rmsNorm(
          Float64Array.from(emb.subarray(t * E, (t + 1) * E)),
          norm,
          config.rms_norm_eps,
        );
        for (let v = 0; v < V; v++) {
          let dot = 0;
          for (let i = 0; i < E; i++) dot += head[v * E + i] * x[i];
          worst = Math.max(worst, Math.abs(got[p * V + v] - dot) / Math.max(1, Math.abs(dot)));
        }
      });
      // float32 output of float64 sums of 64 terms: within 2 float32 ulp
      expect(worst).toBeLessThan(3e-7);
      expect(sidecar("zero").shape).toEqual([TOKENS.length, V]);
    });

    it("--kv-out writes K then V per layer in (kv_head, pos, head_dim), V checked by hand", () => {
      const config = JSON.parse(readFileSync(join(model("f32"), "config.json"), "utf8"));
      const { num_hidden_layers: L, num_key_value_heads: KV, head_dim: D, hidden_size: E } = config;
      const T = TOKENS.length;
      const kv = readF32(kvPath());
      expect(kv.length).toBe(L * 2 * KV * T * D);
      // layer 0 V at (kv_head h, pos p) = v_proj(rmsnorm(embedding[token_p]) * input_layernorm)
      const w = readF32Safetensors(join(model("f32"), "model.safetensors"));
      const emb = w.get("model.embed_tokens.weight")!.data;
      const ln = w.get("model.layers.0.input_layernorm.weight")!.data;
      const vp = w.get("model.layers.0.self_attn.v_proj.weight")!.data;
      const vBase = KV * T * D; // after layer 0's K
      let worst = 0;
      for (const p of [0, 7, T - 1]) {
        const x = rmsNorm(
          Float64Array.from(emb.subarray(TOKENS[p] * E, (TOKENS[p] + 1) * E)),
          ln,
          1e-5,
        );
        for (let h = 0; h < KV; h++) {
          for (let d = 0; d < D; d++) {
            let dot = 0;
            for (let i = 0; i < E; i++) dot += vp[(h * D + d) * E + i] * x[i];
            worst = Math.max(worst, Math.abs(kv[vBase + (h * T + p) * D + d] - dot));
          }
        }
      }
      expect(worst).toBeLessThan(1e-5);
    });

    it("sharded equals single; --last, --tokens-file and the sidecar describe the same logits", () => {
      const all = readF32(out("f32"));
      const tokFile = join(dir, "tokens.bin");
      writeFileSync(tokFile, Buffer.from(Int32Array.from(TOKENS).buffer));
      const last3Path = join(dir, "last3.bin");
      const args = ["--tokens-file", tokFile, "--last", "3", "--out", last3Path];
      pyOk([REFERENCE, model("f32-sharded"), ...args]);
      const last3 = readF32(last3Path);
      expect(Array.from(last3)).toEqual(Array.from(all.subarray((TOKENS.length - 3) * 256)));
      const side = JSON.parse(readFileSync(`${last3Path}.json`, "utf8"));
      expect(side.shape).toEqual([3, 256]);
      expect(side.positions).toEqual([TOKENS.length - 3, TOKENS.length]);
      const lastRow = Array.from(last3.subarray(2 * 256));
      expect(side.last_argmax).toBe(lastRow.indexOf(Math.max(...lastRow)));
    });

    it("follows repeat_kv, is causal, and its module API equals its CLI", () => {
      const r = checks;
      expect(r.gqa_vs_expanded).toBeLessThan(1e-12);
      expect(r.gqa_vs_tiled).toBeGreaterThan(1e-3); // the check can tell the orders apart
      expect(r.prefix_default).toBeLessThan(1e-12);
      expect(r.prefix_yarn).toBeLessThan(1e-12);
      expect(r.prefix_dynamic).toBeGreaterThan(1e-6); // dynamic rope depends on the length
      expect(r.module_vs_cli).toBe(0);
    });

    it("refuses a missing tensor and a truncated file with one line", () => {
      const tied = model("tied");
      const cfgPath = join(tied, "config.json");
      const cfg = JSON.parse(readFileSync(cfgPath, "utf8"));
      writeFileSync(cfgPath, JSON.stringify({ ...cfg, tie_word_embeddings: false }));
      const r1 = py([REFERENCE, tied, "--tokens", "1,2", "--out", join(dir, "x.bin")]);
      expect(r1.status).toBe(1);
      expect(r1.stderr.trim()).toBe(`llama_reference: ${tied}: tensor lm_head.weight is missing`);

      const cut = model("truncated");
      truncateSync(join(cut, "model.safetensors"), 4000);
      const r2 = py([REFERENCE, cut, "--tokens", "1,2", "--out", join(dir, "y.bin")]);
      expect(r2.status).toBe(1);
      expect(r2.stderr.trim().split("\n")).toHaveLength(1);
      expect(r2.stderr).toMatch(/model\.safetensors: tensor .* runs past the end of the file/);
    });
  },
);
