// `npm run bench -- cpu-peer [--quick] [--threads 1,2] [--prompts 512,4096] [--dtypes f32,bf16]
//   [--decode N] [--rounds N]`: our WASM runtime against llama.cpp on the same weights, in one run.
//
// A generated Llama model (default the issue's shape: 12 layers, hidden 768, 12/4 heads of 64,
// FFN 2048, vocab 128256, yarn rope; `--quick`: 2 layers, hidden 384) is written once per dtype
// and converted to GGUF by our converter (core/node/gguf.ts). For each dtype, thread count and
// prompt length, llama.cpp (node-llama-cpp's prebuilt CPU binary, the prompt in one batch) and our
// wasm runtime (in-process, as `npm run bench -- runtime` runs it) each prefill the same prompt
// and decode greedily, alternating which goes first, `--rounds` times; the best prefill and best
// decode of each side are reported with their ratio (ours / llama.cpp; > 1 is faster). Every run's
// greedy tokens must equal llama.cpp's: the same weights through an independent forward pass; the
// first divergence is printed if not. Timing is test/support/llama-cpp.ts's, the same on both
// sides. Prints one JSON object; exits 1 if any tokens differ.
import { mkdtempSync, rmSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { InvalidInputError } from "../../core/errors.ts";
import type { GenerateOptions } from "../../core/model/generate.ts";
import { convertModelDirToGguf } from "../../core/node/gguf.ts";
import { loadModelDir } from "../../core/node/load-model-dir.ts";
import { makeModelDir } from "../../core/node/make-model.ts";
import { ensureBuilt } from "../../wasm/build.mjs";
import { createWasmRuntime } from "../../wasm/src/runtime.ts";
import { ISSUE14_MODEL } from "../support/bench-models.ts";
import {
  firstDivergence,
  type GreedyRun,
  llamaCppGreedy,
  loadLlamaCpp,
  runtimeGreedy,
} from "../support/llama-cpp.ts";

const FULL: GenerateOptions = { ...ISSUE14_MODEL, seed: 11 };
const QUICK: GenerateOptions = { ...FULL, layers: 2, hidden: 384, heads: 6, kvHeads: 2, ffn: 1024 };

const round = (x: number, d = 3) => Number(x.toPrecision(d + 1));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function listArg(args: string[], name: string, dflt: string[]): string[] {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  if (args[i + 1] === undefined) throw new InvalidInputError(`${name} needs a value`);
  return args[i + 1].split(",");
}

function positive(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new InvalidInputError(`${name} takes positive integers, got '${v}'`);
  }
  return n;
}

const numArg = (args: string[], name: string, dflt: number) =>
  positive(name, listArg(args, name, [String(dflt)])[0]);

interface Best {
  prefillTokensPerSec: number;
  decodeTokensPerSec: number;
}

function best(runs: GreedyRun[], prompt: number): Best {
  const prefill = Math.min(...runs.map((r) => r.prefillMs));
  const decode = Math.min(...runs.map((r) => r.decodeMs / (r.tokens.length - 1)));
  return {
    prefillTokensPerSec: round((prompt * 1000) / prefill),
    decodeTokensPerSec: round(1000 / decode),
  };
}

const FLAGS = ["--quick"];
const OPTIONS = ["--threads", "--prompts", "--dtypes", "--decode", "--rounds"];

export default async function main(args: string[]): Promise<void> {
  for (let i = 0; i < args.length; i++) {
    if (OPTIONS.includes(args[i])) i++;
    else if (!FLAGS.includes(args[i]))
      throw new InvalidInputError(
        `unknown argument '${args[i]}' (${[...FLAGS, ...OPTIONS].join(", ")})`,
      );
  }
  const quick = args.includes("--quick");
  const opts = quick ? QUICK : FULL;
  const threadList = listArg(args, "--threads", ["1", "2"]).map((v) => positive("--threads", v));
  const prompts = listArg(args, "--prompts", quick ? ["128"] : ["512", "4096"]).map((v) =>
    positive("--prompts", v),
  );
  const dtypes = listArg(args, "--dtypes", quick ? ["f32"] : ["f32", "bf16"]);
  for (const d of dtypes) {
    if (d !== "f32" && d !== "bf16")
      throw new InvalidInputError(`--dtypes: f32 or bf16, got '${d}'`);
  }
  const decode = numArg(args, "--decode", quick ? 8 : 32);
  const rounds = numArg(args, "--rounds", 2);
  const root = join(import.meta.dirname, "..", "..");
  await ensureBuilt({ root });
  const llama = await loadLlamaCpp();
  if (!llama) throw new Error("node-llama-cpp is not installed: run npm install");

  const maxPrompt = Math.max(...prompts);
  // The same prompt ids on both sides: deterministic, spread over the ordinary (non-special) vocab.
  const promptIds = Array.from({ length: maxPrompt }, (_, i) => (i * 7919 + 13) % 128000);
  const dir = mkdtempSync(join(tmpdir(), "ultralong-cpu-peer-"));
  const results: unknown[] = [];
  const conversions: unknown[] = [];
  let allSame = true;
  try {
    for (const dtype of dtypes) {
      const modelDir = join(dir, dtype);
      await makeModelDir(modelDir, { ...opts, dtype: dtype as "f32" | "bf16" });
      const gguf = join(dir, `${dtype}.gguf`);
      const t0 = performance.now();
      const conv = await convertModelDirToGguf(modelDir, gguf);
      const convertMs = performance.now() - t0;
      const model = await loadModelDir(modelDir);
      for (const threads of threadList) {
        const rt = await createWasmRuntime({ model, threads, maxPositions: maxPrompt + decode });
        try {
          // V8 runs WASM in its baseline tier first: warm every kernel up before timing.
          await rt.forward(Int32Array.from(promptIds.slice(0, 64)));
          for (let i = 0; i < 4; i++) await rt.forward(Int32Array.of(promptIds[64 + i]));
          await sleep(300);
          for (const n of prompts) {
            const prompt = promptIds.slice(0, n);
            const ours: GreedyRun[] = [];
            const theirs: GreedyRun[] = [];
            for (let r = 0; r < rounds; r++) {
              const runOurs = async () => {
                rt.truncate(0);
                ours.push(await runtimeGreedy(rt, prompt, decode + 1));
              };
              const runTheirs = async () => {
                theirs.push(await llamaCppGreedy(llama, gguf, prompt, decode + 1, threads));
              };
              // Alternate which side goes first, so neither always gets the cooler machine.
              if (r % 2 === 0) {
                await runTheirs();
                await runOurs();
              } else {
                await runOurs();
                await runTheirs();
              }
            }
            const reference = theirs[0].tokens;
            const divergences = [...ours, ...theirs]
              .map((run) => ({ run, at: firstDivergence(run.tokens, reference) }))
              .filter((d) => d.at !== null || d.run.tokens.length !== reference.length);
            const same = divergences.length === 0;
            allSame &&= same;
            const a = best(ours, n);
            const b = best(theirs, n);
            const row = {
              dtype,
              threads,
              promptTokens: n,
              decodeTokens: decode,
              ours: a,
              llamaCpp: b,
              ratios: {
                prefill: round(a.prefillTokensPerSec / b.prefillTokensPerSec),
                decode: round(a.decodeTokensPerSec / b.decodeTokensPerSec),
              },
              sameGreedyTokens: same,
              ...(same
                ? {}
                : {
                    firstDivergence: divergences.map((d) => ({
                      at: d.at,
                      ours: d.at === null ? null : d.run.tokens[d.at],
                      llamaCpp: d.at === null ? null : reference[d.at],
                      tokens: d.run.tokens.length,
                    }))[0],
                  }),
            };
            results.push(row);
            console.error(JSON.stringify(row));
          }
        } finally {
          await rt.close();
        }
      }
      conversions.push({
        dtype,
        bytes: conv.bytes,
        tensors: conv.tensors,
        convertMs: Math.round(convertMs),
      });
      rmSync(modelDir, { recursive: true, force: true });
      rmSync(gguf, { force: true });
    }
    const report = {
      bench: "cpu-peer",
      machine: { cpus: availableParallelism(), loadAverage1m: round(loadavg()[0]) },
      model: opts,
      peer: {
        name: "llama.cpp",
        via: "node-llama-cpp (prebuilt CPU binary, gpu: false, build: never)",
        release: llama.llamaCppRelease.release,
        buildType: llama.buildType,
        batch: "the whole prompt in one llama_decode batch",
      },
      rounds,
      conversions,
      runs: results,
      targets: { prefill: 0.7, decode: 0.95 },
      sameGreedyTokens: allSame,
    };
    console.log(JSON.stringify(report, null, 2));
    if (!allSame) process.exitCode = 1;
  } finally {
    await llama.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}
