// `npm run bench -- profile [--quick] [--threads 1,2] [--prompt 512] [--weights f32|bf16|int8]
// [--batch N] [--model issue14|issue15]` (ULTRALONG_WASM_SIMD=plain for the plain SIMD128 build instead of the relaxed one):
// where one prefill and one decode step of the WASM runtime spend their time, phase by phase
// (wasm/src/shard.mjs PROFILE_PHASES: GEMM, attention, norms, rotary, KV writes, elementwise, the
// shards' all-reduce, lm_head; `glue` is the shard's JS between kernels, `main` the main thread's
// share: embeddings, messages to the workers, waiting for the slowest shard). The model is issue
// 14's shape (12 layers, hidden 768, 12/4 heads, FFN 2048, Llama 3's 128256 vocabulary), or with
// `--model issue15` the batching benchmark's (8 layers, hidden 512, 8/4 heads, FFN 1536).
// The peer, measured in the same run: the SIMD128 multiply-add peak of one core, against which
// the GEMM phase's own GFLOP/s are set. Prints a table per run on stderr and one JSON object.
// With --batch N, also one decode step of N sequences batched on the paged runtime
// (wasm/src/paged-runtime.ts; the prompt's blocks shared by all N) against its peer, the same N
// sequences stepped one at a time on the same runtime, and their ratio; then the batched step's
// phases and how many of its rows attended to the shared prompt in one group pass (shared-prefix
// attention, wasm/src/prefix-groups.mjs). `--prompt 8192` for a long shared document.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InvalidInputError } from "../../core/errors.ts";
import type { GenerateOptions } from "../../core/model/generate.ts";
import type { LoadedModel } from "../../core/model/weights.ts";
import { loadModelDir } from "../../core/node/load-model-dir.ts";
import { makeModelDir } from "../../core/node/make-model.ts";
import { ensureBuilt, TEST_WASM_FILE } from "../../wasm/build.mjs";
import {
  createPagedWasmRuntime,
  createWasmRuntime,
  type WasmProfile,
} from "../../wasm/src/runtime.ts";
import { BLOCK_TOKENS, type WeightFormat } from "../../wasm/src/shard.mjs";
import { ISSUE14_MODEL, ISSUE15_MODEL } from "../support/bench-models.ts";
import { simdPeak } from "./runtime.ts";

const MODELS: Record<string, GenerateOptions> = { issue14: ISSUE14_MODEL, issue15: ISSUE15_MODEL };

const round = (x: number, d = 3) => Number(x.toPrecision(d));

interface PhaseRow {
  phase: string;
  ms: number;
  share: number;
}

/** Phases averaged over the shards (they run in parallel), then the main thread's rest. */
function rows(p: WasmProfile): PhaseRow[] {
  const names = Object.keys(p.shards[0]).filter((k) => k !== "total");
  const mean = (k: string) =>
    p.shards.reduce((s, r) => s + r[k as keyof (typeof p.shards)[0]], 0) / p.shards.length;
  const slowest = Math.max(...p.shards.map((r) => r.total));
  const out = names.map((phase) => ({ phase, ms: mean(phase) }));
  out.push({ phase: "main", ms: p.runMs - slowest });
  return out.map((r) => ({ ...r, ms: round(r.ms), share: round(r.ms / p.runMs, 2) }));
}

function table(title: string, p: WasmProfile, r: PhaseRow[]): string {
  const lines = [`${title}: ${round(p.runMs)} ms for ${p.tokens} token(s)`];
  for (const row of r) {
    lines.push(
      `  ${row.phase.padEnd(12)} ${String(row.ms).padStart(9)} ms ${(row.share * 100).toFixed(1).padStart(5)}%`,
    );
  }
  return lines.join("\n");
}

/**
 * One decode step of `n` sequences that share a `prompt`-token prefix, batched, against the same
 * n sequences stepped one at a time on the same runtime (the peer), best of `rounds` each.
 */
async function batchedDecode(
  model: LoadedModel,
  threads: number,
  weightFormat: WeightFormat,
  tokens: Int32Array,
  n: number,
) {
  const prompt = tokens.length - 1;
  const full = Math.floor(prompt / BLOCK_TOKENS); // blocks every sequence shares
  const rt = await createPagedWasmRuntime({
    model,
    threads,
    weightFormat,
    maxPositions: prompt + 1,
    poolPositions: (full + 1 + n) * BLOCK_TOKENS,
  });
  try {
    const shared = Array.from({ length: full + 1 }, (_, b) => b);
    await rt.step([
      {
        tokens: tokens.subarray(0, prompt),
        start: 0,
        table: Int32Array.from(shared),
        logits: false,
      },
    ]);
    // Each sequence's own copy of the prompt's last, partial block (copy-on-write), where its
    // decode token goes.
    const own = Array.from({ length: n }, (_, i) => full + 1 + i);
    await rt.copyBlocks(own.map((b) => [full, b] as const));
    const items = own.map((b, i) => ({
      tokens: Int32Array.of((i * 31 + 5) % model.config.vocabSize),
      start: prompt,
      table: Int32Array.from([...shared.slice(0, full), b]),
      logits: true,
    }));
    const time = async (run: () => Promise<unknown>) => {
      await run(); // warm-up
      let best = Number.POSITIVE_INFINITY;
      for (let r = 0; r < 3; r++) {
        const t0 = performance.now();
        await run();
        best = Math.min(best, performance.now() - t0);
      }
      return best;
    };
    const batched = await time(() => rt.step(items));
    const single = await time(async () => {
      for (const item of items) await rt.step([item]);
    });
    // One more batched step, profiled: where it goes, and how many of its rows attended to the
    // shared prompt in one group pass (shared-prefix attention; n when all of them did).
    await rt.setProfiling(true);
    await rt.step(items);
    const profiled = await rt.profile();
    await rt.setProfiling(false);
    return {
      sequences: n,
      sharedPromptTokens: prompt,
      batchedStepMs: round(batched),
      batchedStepPhases: rows(profiled),
      sharedPrefixRows: profiled.sharedPrefixRows,
      peer: { oneAtATimeMs: round(single) },
      speedup: round(single / batched),
    };
  } finally {
    await rt.close();
  }
}

export default async function main(args: string[]): Promise<void> {
  const arg = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const quick = args.includes("--quick");
  const threadList = (arg("--threads") ?? "1,2").split(",").map(Number);
  const promptTokens = Number(arg("--prompt") ?? (quick ? 256 : 512));
  const weightFormat = (arg("--weights") ?? "f32") as WeightFormat;
  const batch = arg("--batch") === undefined ? 0 : Number(arg("--batch"));
  if (!Number.isInteger(batch) || batch < 0 || batch > 256) {
    throw new InvalidInputError(
      `--batch takes a sequence count in [1, 256], not ${arg("--batch")}`,
    );
  }
  const modelName = arg("--model") ?? "issue14";
  if (!(modelName in MODELS)) {
    throw new InvalidInputError(
      `--model takes one of ${Object.keys(MODELS).join(", ")}, not ${modelName}`,
    );
  }
  const full: GenerateOptions = { ...MODELS[modelName], dtype: "f32", seed: 7 };
  const opts = quick ? { ...full, layers: 2, vocab: 32000 } : full;
  const root = join(import.meta.dirname, "..", "..");
  await ensureBuilt({ root });
  const peak = await simdPeak(new WebAssembly.Module(readFileSync(join(root, TEST_WASM_FILE))));

  const H = opts.hidden!;
  const hd = H / opts.heads!;
  const qkvo = H * (opts.heads! + 2 * opts.kvHeads!) * hd + H * opts.heads! * hd;
  const gemmFlopsPerToken = 2 * opts.layers! * (qkvo + 3 * H * opts.ffn!);

  const dir = mkdtempSync(join(tmpdir(), "ultralong-profile-"));
  const runs = [];
  try {
    await makeModelDir(dir, opts);
    const model = await loadModelDir(dir);
    const tokens = Int32Array.from(
      { length: promptTokens + 1 },
      (_, i) => (i * 7919 + 13) % opts.vocab!,
    );
    for (const threads of threadList) {
      const rt = await createWasmRuntime({
        model,
        threads,
        weightFormat,
        maxPositions: promptTokens + 64,
      });
      try {
        // Warm-up: every kernel leaves V8's baseline tier before anything is timed.
        await rt.prefill(tokens.subarray(0, Math.min(256, promptTokens)));
        await rt.forward(tokens.subarray(0, 1));
        rt.truncate(0);
        await rt.setProfiling(true);
        await rt.prefill(tokens.subarray(0, promptTokens));
        const prefill = await rt.profile();
        const decodeSteps = 16;
        await rt.setProfiling(true);
        for (let i = 0; i < decodeSteps; i++) await rt.forward(tokens.subarray(i, i + 1));
        const decode = await rt.profile();
        await rt.setProfiling(false);
        const pr = rows(prefill);
        const dr = rows(decode).map((r) => ({ ...r, ms: round(r.ms / decodeSteps) }));
        const gemmMs = pr.find((r) => r.phase === "gemm")!.ms;
        // Per shard: the shards split the GEMM's rows, so one shard's GEMM does 1/threads of it.
        const gemmGflops = (gemmFlopsPerToken * promptTokens) / threads / gemmMs / 1e6;
        const prefillTps = (promptTokens * 1000) / prefill.runMs;
        console.error(table(`threads ${threads}, prefill of ${promptTokens}`, prefill, pr));
        console.error(
          table(
            `threads ${threads}, one decode step (mean of ${decodeSteps})`,
            { ...decode, runMs: decode.runMs / decodeSteps, tokens: 1 },
            dr,
          ),
        );
        runs.push({
          threads,
          kernels: rt.info.kernels,
          weights: weightFormat,
          prefill: {
            tokens: promptTokens,
            ms: round(prefill.runMs),
            tokensPerSec: round(prefillTps),
            gflops: round((prefillTps * gemmFlopsPerToken) / 1e9),
            phases: pr,
          },
          decode: {
            msPerToken: round(decode.runMs / decodeSteps),
            tokensPerSec: round((decodeSteps * 1000) / decode.runMs),
            phases: dr,
          },
          gemmPhaseGflopsPerShard: round(gemmGflops),
          gemmPhaseVsPeak: round(gemmGflops / peak, 2),
        });
      } finally {
        await rt.close();
      }
      if (batch > 0) {
        const result = await batchedDecode(model, threads, weightFormat, tokens, batch);
        console.error(`threads ${threads}, batched decode: ${JSON.stringify(result)}`);
        Object.assign(runs[runs.length - 1], { batch: result });
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(
    JSON.stringify(
      {
        bench: "profile",
        model: opts,
        peer: { simd128PeakGflopsOneCore: round(peak) },
        runs,
      },
      null,
      2,
    ),
  );
}
