// The model generator and `ultralong make-model` / `ultralong inspect`: determinism, the HF layout
// transformers-independent PyTorch loads, the weight statistics that keep activations sane, and the
// figures inspect prints.

import { spawnSync } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../core/model/config.ts";
import {
  type GenerateOptions,
  generatedConfig,
  generatedTensor,
  LLAMA31_BOS,
  LLAMA31_EOS,
} from "../core/model/generate.ts";
import { llamaTensors } from "../core/model/llama-tensors.ts";
import { ropeContextLength } from "../core/model/rope.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { makeModelDir } from "../core/node/make-model.ts";
import { f32ToBf16 } from "../core/safetensors/dtype.ts";
import { main } from "../functions/cli/main.ts";
import { runUltralong, SMALL_VOCAB, scratchDir, testModelDir } from "./support/models.ts";
import { haveTorch, TORCH_PYTHON, tool } from "./support/tools.ts";

/** The CLI's main() in this process, with its output captured. */
async function runMain(
  argv: string[],
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const sink = () => {
    const chunks: string[] = [];
    const stream = new Writable({
      write(chunk, _enc, done) {
        chunks.push(String(chunk));
        done();
      },
    });
    return { stream, text: () => chunks.join("") };
  };
  const out = sink();
  const err = sink();
  const status = await main(argv, {
    stdin: process.stdin,
    stdout: out.stream,
    stderr: err.stream,
    env: process.env,
  });
  return { status, stdout: out.text(), stderr: err.text() };
}

async function filesOf(dir: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const f of (await readdir(dir)).sort()) {
    if (!f.startsWith(".")) out.set(f, await readFile(join(dir, f)));
  }
  return out;
}

// The CLI's model from the "done when", made once for the tests below.
const CLI_ARGS = ["--rope", "yarn", "--shards", "2", "--dtype", "bf16"];
let cliModel: Promise<{ dir: string; stdout: string }> | null = null;
function cliModelDir() {
  cliModel ??= (async () => {
    const dir = join(scratchDir("cli"), "model");
    const r = await runUltralong(["make-model", dir, ...CLI_ARGS]);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    return { dir, stdout: r.stdout };
  })();
  return cliModel;
}

describe("make-model", () => {
  it("is deterministic: the same options and seed give the same bytes, another seed other weights", async () => {
    const opts: GenerateOptions = { ...SMALL_VOCAB, shards: 2, dtype: "bf16", seed: 42 };
    const a = scratchDir("det");
    const b = scratchDir("det");
    const c = scratchDir("det");
    await makeModelDir(a, opts);
    await makeModelDir(b, opts);
    await makeModelDir(c, { ...opts, seed: 43 });
    const fa = await filesOf(a);
    const fb = await filesOf(b);
    const fc = await filesOf(c);
    expect([...fa.keys()]).toEqual([
      "config.json",
      "generation_config.json",
      "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors",
      "model.safetensors.index.json",
    ]);
    for (const [name, bytes] of fa) {
      expect(fb.get(name)?.equals(bytes), name).toBe(true);
      const differs = !fc.get(name)?.equals(bytes);
      expect(differs, name).toBe(name.endsWith(".safetensors"));
    }
  });

  it("writes the model the CLI promises: HF files, the real tokenizer, the same bytes as the library", async () => {
    const { dir, stdout } = await cliModelDir();
    expect(stdout).toMatch(/^wrote 7 files to /);
    const lib = scratchDir("lib");
    await makeModelDir(lib, { rope: "yarn", shards: 2, dtype: "bf16" });
    const fromCli = await filesOf(dir);
    const fromLib = await filesOf(lib);
    expect([...fromCli.keys()]).toEqual([...fromLib.keys()]);
    for (const [name, bytes] of fromCli) expect(fromLib.get(name)?.equals(bytes), name).toBe(true);
    const pkgTokenizer = await readFile(
      join("node_modules", "@lenml", "tokenizer-llama3_1", "models", "tokenizer.json"),
    );
    expect(fromCli.get("tokenizer.json")?.equals(pkgTokenizer)).toBe(true);

    const m = await loadModelDir(dir);
    expect(m.config.vocabSize).toBe(128256);
    expect(m.config.bosTokenId).toBe(LLAMA31_BOS);
    expect(m.generation.eosTokenIds).toEqual(LLAMA31_EOS);
    expect(m.config.ropeScaling).toEqual({
      ropeType: "yarn",
      factor: 128,
      originalMaxPositionEmbeddings: 8192,
    });
    expect(m.config.ropeTheta).toBe(500000);
    expect(m.weights.tensors().every((t) => t.dtype === "bf16")).toBe(true);
  });

  it("config.json parses back to the config the generator meant, for every rope type", async () => {
    for (const rope of ["default", "linear", "dynamic", "llama3", "yarn"] as const) {
      const opts: GenerateOptions = { ...SMALL_VOCAB, rope, tieEmbeddings: rope === "linear" };
      const dir = await testModelDir(opts);
      const text = await readFile(join(dir, "config.json"), "utf8");
      const parsed = parseConfig(text, "config.json");
      expect(parsed).toEqual(generatedConfig(opts));
      const context = {
        default: 8192,
        linear: 32768,
        dynamic: 8192,
        llama3: 131072,
        yarn: 1048576,
      };
      expect(ropeContextLength(parsed)).toBe(context[rope]);
      const m = await loadModelDir(dir);
      const names = m.weights.tensors().map((t) => t.name);
      expect(names.includes("lm_head.weight")).toBe(rope !== "linear");
    }
  });

  it("bf16 files hold the round-to-nearest-even of the f32 values", async () => {
    const config = generatedConfig(SMALL_VOCAB);
    const m = await loadModelDir(await testModelDir({ ...SMALL_VOCAB, dtype: "bf16" }));
    for (const name of ["model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"]) {
      const f32 = generatedTensor(config, name, SMALL_VOCAB.seed ?? 0);
      const stored = await m.weights.read(name, "bf16");
      for (let i = 0; i < f32.length; i += 7) expect(stored[i]).toBe(f32ToBf16(f32[i]));
    }
  });

  it("draws weights with the documented statistics, so activations stay in range", async () => {
    const opts: GenerateOptions = { ...SMALL_VOCAB, layers: 4, hidden: 128, ffn: 384, heads: 8 };
    const config = generatedConfig(opts);
    const layers = config.numHiddenLayers;
    for (const t of llamaTensors(config)) {
      const w = generatedTensor(config, t.name, 5);
      let sum = 0;
      let sq = 0;
      let maxAbs = 0;
      for (const x of w) {
        sum += x;
        sq += x * x;
        maxAbs = Math.max(maxAbs, Math.abs(x));
      }
      const mean = sum / w.length;
      const std = Math.sqrt(sq / w.length - mean * mean);
      if (t.shape.length === 1) {
        // RMSNorm weights: 1 + uniform(-0.05, 0.05): std 0.1/sqrt(12).
        expect(Math.abs(mean - 1)).toBeLessThan(0.02);
        expect(maxAbs).toBeLessThanOrEqual(1.05);
        expect(Math.min(...w)).toBeGreaterThanOrEqual(0.95);
        expect(std).toBeGreaterThan((0.1 / Math.sqrt(12)) * 0.7);
        continue;
      }
      const fanIn = t.shape[1];
      let want = t.name === "model.embed_tokens.weight" ? 1 : 1 / Math.sqrt(fanIn);
      if (/(o_proj|down_proj)\.weight$/.test(t.name)) want /= Math.sqrt(2 * layers);
      // Sampling error of a std over n values is ~ std / sqrt(2n); n >= 2048 here.
      expect(Math.abs(std / want - 1), t.name).toBeLessThan(0.05);
      expect(Math.abs(mean), t.name).toBeLessThan(want * 0.1);
      expect(maxAbs, t.name).toBeLessThanOrEqual(want * Math.sqrt(12) * 1.0001);
    }
  });

  it("refuses bad values with one line and a non-zero exit", async () => {
    const dir = join(scratchDir("refuse"), "m");
    const bad: [string[], RegExp][] = [
      [["--layers", "0"], /--layers must be a positive integer, got 0/],
      [["--layers", "two"], /--layers must be a non-negative integer, got 'two'/],
      [
        ["--heads", "3", "--kv-heads", "2", "--head-dim", "16"],
        /--heads \(3\) must be a multiple of --kv-heads \(2\)/,
      ],
      [["--rope", "ntk"], /--rope must be one of default, linear, dynamic, llama3, yarn, got ntk/],
      [["--dtype", "f16"], /--dtype must be f32 or bf16, got f16/],
      [["--shards", "0"], /--shards must be 1\.\.\d+ for this model, got 0/],
      [["--rope-factor", "0.5"], /--rope-factor must be >= 1, got 0\.5/],
      [
        ["--rope", "default", "--rope-factor", "2"],
        /--rope-factor does not apply to --rope default/,
      ],
      [
        ["--hidden", "65"],
        /--hidden \(65\) must be a multiple of --heads \(4\), or give --head-dim/,
      ],
    ];
    // In-process through the CLI's main (the same dispatch and error line as the binary), then
    // two through the real process for the exit status.
    const results = [];
    for (const [args] of bad) results.push(await runMain(["make-model", dir, ...args]));
    for (const i of [1, 4]) {
      const r = await runUltralong(["make-model", dir, ...bad[i][0]]);
      expect(r).toEqual(results[i]);
    }
    results.forEach((r, i) => {
      expect(r.status, bad[i][0].join(" ")).toBe(1);
      const lines = r.stderr.split("\n").filter((l) => l !== "");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(new RegExp(`^ultralong make-model: ${bad[i][1].source}$`));
    });
    const existing = await testModelDir(SMALL_VOCAB);
    const r = await runUltralong(["make-model", existing]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toMatch(
      /is not empty: make-model writes into a new or empty directory$/,
    );
  });
});

describe("inspect", () => {
  it("prints the config, parameters, weight and KV bytes, rope context and fingerprint", async () => {
    const { dir } = await cliModelDir();
    const m = await loadModelDir(dir);
    const c = m.config;
    // Llama parameters by hand: embed + lm_head, per layer q,k,v,o + 3 MLP + 2 norms, final norm.
    const H = c.hiddenSize;
    const perLayer =
      H * c.numAttentionHeads * c.headDim * 2 +
      H * c.numKeyValueHeads * c.headDim * 2 +
      3 * H * c.intermediateSize +
      2 * H;
    const params = 2 * c.vocabSize * H + c.numHiddenLayers * perLayer + H;
    const kv = (bytes: number) => 2 * c.numHiddenLayers * c.numKeyValueHeads * c.headDim * bytes;

    const json = await runUltralong(["inspect", dir, "--json"]);
    expect(json.status).toBe(0);
    const out = JSON.parse(json.stdout);
    expect(out.parameters).toBe(params);
    expect(out.weightBytes).toBe(params * 2);
    expect(out.kvBytesPerToken).toEqual({ f32: kv(4), bf16: kv(2), fp8: kv(1) });
    expect(out.ropeContext).toBe(8192 * 128);
    expect(out.fingerprint).toBe(await m.fingerprint());
    expect(out.config).toEqual(c);

    const text = await runUltralong(["inspect", dir]);
    expect(text.status).toBe(0);
    const group = (n: number) => n.toLocaleString("en-US");
    expect(text.stdout).toContain(`parameters   ${group(params)}\n`);
    expect(text.stdout).toContain(`weights      ${group(params * 2)} bytes, BF16,`);
    expect(text.stdout).toContain(
      `kv / token   f32 ${group(kv(4))} B, bf16 ${group(kv(2))} B, fp8 ${group(kv(1))} B\n`,
    );
    expect(text.stdout).toContain(
      "yarn factor 128 over 8192, theta 500000; built for 1,048,576 tokens",
    );
    expect(text.stdout).toContain(`fingerprint  ${out.fingerprint}\n`);
  });
});

describe.skipIf(!tool("torch", haveTorch(), "running generated models in the PyTorch reference"))(
  "the PyTorch reference (test/reference/llama_reference.py)",
  () => {
    function reference(dir: string, tokens: number[]) {
      const out = join(scratchDir("ref"), "logits.bin");
      const r = spawnSync(
        TORCH_PYTHON,
        ["test/reference/llama_reference.py", dir, "--tokens", tokens.join(","), "--out", out],
        { encoding: "utf8", timeout: 120_000 },
      );
      expect(r.stderr).toBe("");
      expect(r.status).toBe(0);
      return out;
    }

    async function logitStats(out: string, rows: number, vocab: number) {
      const buf = await readFile(out);
      expect(buf.length).toBe(rows * vocab * 4);
      const logits = new Float32Array(buf.buffer, buf.byteOffset, rows * vocab);
      let sq = 0;
      for (const x of logits) {
        expect(Number.isFinite(x)).toBe(true);
        sq += x * x;
      }
      const side = JSON.parse(await readFile(`${out}.json`, "utf8"));
      expect(side.shape).toEqual([rows, vocab]);
      return Math.sqrt(sq / logits.length);
    }

    it("loads and runs `make-model --rope yarn --shards 2 --dtype bf16` with finite logits", async () => {
      const { dir } = await cliModelDir();
      const out = reference(dir, [128000, 9906, 1917]);
      const rms = await logitStats(out, 3, 128256);
      // lm_head has std 1/sqrt(hidden) over a normalised state: logits rms ~1.
      expect(rms).toBeGreaterThan(0.3);
      expect(rms).toBeLessThan(3);
    });

    it("keeps the residual stream's rms bounded through all 24 layers", async () => {
      const dir = await testModelDir({ ...SMALL_VOCAB, layers: 24, seed: 9 });
      // Every rms_norm call sees the residual stream (before attention, before the MLP, final):
      // record its rms by wrapping the reference's rms_norm.
      const script = [
        "import sys, json",
        "sys.path.insert(0, 'test/reference')",
        "import llama_reference as ref",
        "seen = []",
        "orig = ref.rms_norm",
        "def spy(x, w, eps):",
        "    seen.append(x.pow(2).mean().sqrt().item())",
        "    return orig(x, w, eps)",
        "ref.rms_norm = spy",
        "ref.LlamaReference(sys.argv[1]).hidden_states(list(range(1, 65)))",
        "print(json.dumps(seen))",
      ].join("\n");
      const r = spawnSync(TORCH_PYTHON, ["-c", script, dir], {
        encoding: "utf8",
        timeout: 120_000,
      });
      expect(r.stderr).toBe("");
      const seen = JSON.parse(r.stdout) as number[];
      expect(seen).toHaveLength(2 * 24 + 1);
      // Embeddings have std 1; each residual branch adds ~1/(2*layers) of variance at most.
      for (const rms of seen) {
        expect(rms).toBeGreaterThan(0.8);
        expect(rms).toBeLessThan(Math.SQRT2);
      }
    });
  },
);
