// The GGUF converter (core/gguf, core/node/gguf.ts): what it writes parses back with the right
// metadata, tensor shapes, types, offsets and bytes (q/k rows permuted per head); what it refuses
// leaves no file; and llama.cpp (node-llama-cpp's prebuilt CPU binary) loads the converted model
// and gives our greedy tokens and our tokenization: an independent check of the forward pass.

import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { FormatError, InvalidInputError, NotFoundError } from "../core/errors.ts";
import type { GgmlType, GgufValue } from "../core/gguf/format.ts";
import { readGgufHeader } from "../core/gguf/reader.ts";
import type { GenerateOptions } from "../core/model/generate.ts";
import { convertModelDirToGguf } from "../core/node/gguf.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { FileByteSource } from "../core/node/model-files.ts";
import { Tokenizer } from "../core/tokenizer/index.ts";
import { ensureBuilt } from "../wasm/build.mjs";
import { createWasmRuntime } from "../wasm/src/runtime.ts";
import {
  firstDivergence,
  llamaCppGreedy,
  loadLlamaCpp,
  runtimeGreedy,
} from "./support/llama-cpp.ts";
import { runUltralong, SMALL_VOCAB, scratchDir, TINY, testModelDir } from "./support/models.ts";
import { tool } from "./support/tools.ts";

async function converted(opts: GenerateOptions, type?: GgmlType) {
  const dir = await testModelDir(opts);
  const out = join(scratchDir("gguf"), "model.gguf");
  const result = await convertModelDirToGguf(dir, out, type ? { type } : {});
  const source = new FileByteSource(out);
  return { dir, out, result, source, header: await readGgufHeader(source) };
}

const scalar = (v: GgufValue | undefined) => (v && v.type !== "array" ? v.value : undefined);

describe("GGUF conversion", () => {
  it("writes llama metadata, the tokenizer, and every tensor at an aligned offset", async () => {
    const { dir, result, header } = await converted(TINY);
    const m = header.metadata;
    expect(header.version).toBe(3);
    expect(scalar(m.get("general.architecture"))).toBe("llama");
    expect(scalar(m.get("general.file_type"))).toBe(0);
    expect(scalar(m.get("llama.block_count"))).toBe(2);
    expect(scalar(m.get("llama.embedding_length"))).toBe(64);
    expect(scalar(m.get("llama.feed_forward_length"))).toBe(192);
    expect(scalar(m.get("llama.attention.head_count"))).toBe(4);
    expect(scalar(m.get("llama.attention.head_count_kv"))).toBe(2);
    expect(scalar(m.get("llama.rope.dimension_count"))).toBe(16);
    expect(scalar(m.get("llama.rope.freq_base"))).toBe(500000);
    expect(scalar(m.get("llama.attention.layer_norm_rms_epsilon"))).toBeCloseTo(1e-5, 12);
    expect(scalar(m.get("llama.rope.scaling.type"))).toBe("yarn");
    expect(scalar(m.get("llama.rope.scaling.factor"))).toBe(128);
    expect(scalar(m.get("llama.rope.scaling.original_context_length"))).toBe(8192);
    expect(scalar(m.get("llama.context_length"))).toBe(8192 * 128);

    const tokens = m.get("tokenizer.ggml.tokens");
    const types = m.get("tokenizer.ggml.token_type");
    const merges = m.get("tokenizer.ggml.merges");
    expect(tokens?.type === "array" && tokens.values.length).toBe(128256);
    expect(merges?.type === "array" && merges.values.length).toBe(280147);
    if (tokens?.type !== "array" || types?.type !== "array") throw new Error("no token arrays");
    expect(tokens.values[128000]).toBe("<|begin_of_text|>");
    expect(tokens.values[1]).toBe('"');
    expect(types.values[128000]).toBe(3); // control
    expect(types.values[1]).toBe(1); // normal
    expect(scalar(m.get("tokenizer.ggml.bos_token_id"))).toBe(128000);
    expect(scalar(m.get("tokenizer.ggml.eos_token_id"))).toBe(128001);

    // 2 + 9 per layer + output_norm + output; dims are ggml's (in, out).
    expect(header.tensors).toHaveLength(21);
    expect(result.tensors).toBe(21);
    const byName = new Map(header.tensors.map((t) => [t.name, t]));
    expect(byName.get("token_embd.weight")).toMatchObject({ type: "f32", dims: [64, 128256] });
    expect(byName.get("blk.1.attn_q.weight")).toMatchObject({ type: "f32", dims: [64, 64] });
    expect(byName.get("blk.1.attn_k.weight")).toMatchObject({ type: "f32", dims: [64, 32] });
    expect(byName.get("blk.0.ffn_down.weight")).toMatchObject({ type: "f32", dims: [192, 64] });
    expect(byName.get("output_norm.weight")).toMatchObject({ type: "f32", dims: [64] });
    let end = 0;
    for (const t of header.tensors) {
      expect(t.offset % 32).toBe(0);
      expect(t.offset).toBeGreaterThanOrEqual(end);
      end = t.offset + t.dims.reduce((a, d) => a * d, 1) * 4;
    }
    expect(header.dataStart + end).toBeLessThanOrEqual(result.bytes);

    // The bytes: the embedding as stored, k_proj with each head's rows interleaved.
    const model = await loadModelDir(dir);
    const at = async (name: string, n: number) => {
      const t = byName.get(name)!;
      const b = await new FileByteSource(result.path).read(header.dataStart + t.offset, n * 4);
      return new Float32Array(b.buffer, b.byteOffset, n);
    };
    const embed = await model.weights.read("model.embed_tokens.weight", "f32");
    // Compared as bytes: toEqual over 8M floats takes most of a minute.
    const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    expect(bytes(await at("token_embd.weight", embed.length)).equals(bytes(embed))).toBe(true);
    const k = await model.weights.read("model.layers.1.self_attn.k_proj.weight", "f32");
    const gk = await at("blk.1.attn_k.weight", k.length);
    const row = (a: Float32Array, r: number) => Array.from(a.subarray(r * 64, r * 64 + 64));
    // head_dim 16: GGUF row (head h, 2j + t) is HF row (h, 8t + j).
    for (const [h, j, t] of [
      [0, 0, 0],
      [0, 0, 1],
      [1, 3, 1],
      [1, 7, 0],
    ]) {
      expect(row(gk, h * 16 + 2 * j + t)).toEqual(row(k, h * 16 + 8 * t + j));
    }
  });

  it("keeps norms f32 and writes matrices bf16 from a bf16 checkpoint", async () => {
    const { header } = await converted({ ...TINY, dtype: "bf16", rope: "llama3" });
    const byName = new Map(header.tensors.map((t) => [t.name, t]));
    expect(scalar(header.metadata.get("general.file_type"))).toBe(32);
    expect(byName.get("blk.0.attn_v.weight")?.type).toBe("bf16");
    expect(byName.get("output.weight")?.type).toBe("bf16");
    expect(byName.get("blk.0.attn_norm.weight")?.type).toBe("f32");
    // llama3 rope: per-pair frequency divisors, no scaling keys.
    expect(byName.get("rope_freqs.weight")).toMatchObject({ type: "f32", dims: [8] });
    expect(header.metadata.has("llama.rope.scaling.type")).toBe(false);
  });

  it("converts to f16 on request, rounding as core/safetensors does", async () => {
    const { dir, result, header } = await converted(TINY, "f16");
    const v = header.tensors.find((t) => t.name === "blk.0.attn_v.weight")!;
    expect(result.type).toBe("f16");
    expect(scalar(header.metadata.get("general.file_type"))).toBe(1);
    expect(v.type).toBe("f16");
    const want = await (await loadModelDir(dir)).weights.read(
      "model.layers.0.self_attn.v_proj.weight",
      "f16",
    );
    const got = await new FileByteSource(result.path).read(
      header.dataStart + v.offset,
      want.byteLength,
    );
    expect(
      Buffer.from(got).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength)),
    ).toBe(true);
  });

  it("refuses what llama.cpp cannot run, and leaves no file", async () => {
    const dynamic = await testModelDir({ ...TINY, rope: "dynamic" });
    const out = join(scratchDir("gguf"), "x.gguf");
    await expect(convertModelDirToGguf(dynamic, out)).rejects.toThrow(InvalidInputError);
    await expect(convertModelDirToGguf(dynamic, out)).rejects.toThrow(/dynamic/);
    const noTokenizer = await testModelDir(SMALL_VOCAB);
    await expect(convertModelDirToGguf(noTokenizer, out)).rejects.toThrow(NotFoundError);
    expect(existsSync(out)).toBe(false);
  });

  it("the reader refuses a file that is not GGUF", async () => {
    const dir = await testModelDir(TINY);
    const st = new FileByteSource(join(dir, "model.safetensors"));
    await expect(readGgufHeader(st)).rejects.toThrow(FormatError);
    await expect(readGgufHeader(st)).rejects.toThrow(/not a GGUF file/);
  });
});

const llama = await loadLlamaCpp();

describe.skipIf(!tool("node-llama-cpp", llama !== null, "the llama.cpp agreement tests"))(
  "llama.cpp runs the converted model as we do",
  () => {
    const root = join(import.meta.dirname, "..");
    const prompt = Array.from({ length: 48 }, (_, i) => (i * 7919 + 13) % 128000);

    for (const [label, opts] of [
      ["f32, yarn", TINY],
      ["bf16, llama3", { ...TINY, dtype: "bf16", rope: "llama3" }],
      ["f32, default rope", { ...TINY, rope: "default", seed: 2 }],
    ] as Array<[string, GenerateOptions]>) {
      it(`gives our wasm runtime's greedy tokens (${label})`, async () => {
        await ensureBuilt({ root });
        const { dir, out } = await converted(opts);
        const model = await loadModelDir(dir);
        const rt = await createWasmRuntime({ model, threads: 1, maxPositions: 128 });
        const ours = await runtimeGreedy(rt, prompt, 24).finally(() => rt.close());
        const theirs = await llamaCppGreedy(llama!, out, prompt, 24, 1);
        expect(firstDivergence(ours.tokens, theirs.tokens)).toBeNull();
        expect(theirs.tokens).toHaveLength(24);
      });
    }

    it("tokenizes text as our tokenizer does", async () => {
      const { dir, out } = await converted(TINY);
      const ours = Tokenizer.fromJson(
        await (await loadModelDir(dir)).files.readText("tokenizer.json"),
      );
      const lm = await llama!.loadModel({ modelPath: out, gpuLayers: 0, vocabOnly: true });
      try {
        for (const text of [
          "Hello, world!",
          "  indented\n\tcode();  12345 tokens 'll",
          "é ü 中文 🙂",
        ]) {
          expect(Array.from(lm.tokenize(text))).toEqual(Array.from(ours.encode(text)));
        }
      } finally {
        await lm.dispose();
      }
    });
  },
);

describe("ultralong convert --to gguf (the CLI)", () => {
  it("writes the file the library writes, and says what it wrote", async () => {
    const dir = await testModelDir(TINY);
    const out = join(scratchDir("gguf-cli"), "cli.gguf");
    const r = await runUltralong([
      "convert",
      "--to",
      "gguf",
      "--model",
      dir,
      "--out",
      out,
      "--type",
      "bf16",
    ]);
    expect(r.status, r.stderr).toBe(0);
    const header = await readGgufHeader(new FileByteSource(out));
    expect(r.stdout).toBe(
      `wrote ${out}: ${header.tensors.length} tensors, bf16, ${statSync(out).size} bytes\n`,
    );
    expect(header.tensors.find((t) => t.name === "blk.0.attn_q.weight")?.type).toBe("bf16");
    expect(header.tensors.find((t) => t.name === "blk.0.attn_norm.weight")?.type).toBe("f32");
  });
  for (const [name, args, message] of [
    ["no --to", [], "ultralong convert: --to gguf is required"],
    ["another format", ["--to", "onnx"], "ultralong convert: --to must be gguf, got 'onnx'"],
    [
      "a bad type",
      ["--to", "gguf", "--type", "q4_0"],
      "ultralong convert: --type must be f32, f16 or bf16, got 'q4_0'",
    ],
  ] as const) {
    it(`refuses ${name} in one line and writes nothing`, async () => {
      const dir = await testModelDir(TINY);
      const out = join(scratchDir("gguf-cli"), `refused-${name.replace(/\W/g, "")}.gguf`);
      const r = await runUltralong(["convert", "--model", dir, "--out", out, ...args]);
      expect(r.status).not.toBe(0);
      expect(r.stderr.trim()).toBe(message);
      expect(existsSync(out)).toBe(false);
    });
  }
});
