// `npm run bench -- prefill-chunk [--runtime wasm|reference|...] [--tokens N] [--threads N]`: how
// fast chunked prefill is for each chunk size, through the sequence driver, against the peer: one
// prefill of the whole prompt in a single call, measured in the same run. This is how the driver's
// DEFAULT_CHUNK_TOKENS was chosen (docs/driver.md): the smallest chunk within 5% of the best
// throughput, since a smaller chunk means finer progress, quicker cancellation, snapshot
// alignment and less activation memory.
//
// Model: Llama-shaped, 4 layers, hidden 512, 8 heads / 2 KV heads, FFN 1536, 512-token vocab (the
// vocab only affects the last chunk's lm_head). Each figure is the best of --runs (default 3): the
// machine may be shared.
import { loadavg } from "node:os";
import { DEFAULT_CHUNK_TOKENS, SequenceDriver } from "../../core/engine/driver.ts";
import type { GenerateOptions } from "../../core/model/generate.ts";
import { loadModelDir } from "../../core/node/load-model-dir.ts";
import { runtimes } from "../../functions/runtimes.ts";
import { scratchDir, testModelDir } from "../support/models.ts";
import { suiteTokens } from "../support/runtime-suite.ts";

const MODEL: GenerateOptions = {
  layers: 4,
  hidden: 512,
  heads: 8,
  kvHeads: 2,
  ffn: 1536,
  vocab: 512,
  rope: "yarn",
  seed: 5,
};

function arg(args: string[], name: string, fallback: string): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
}

export default async function main(args: string[]): Promise<void> {
  const runtimeName = arg(args, "runtime", "auto");
  const tokens = Number(arg(args, "tokens", "2048"));
  const runs = Number(arg(args, "runs", "3"));
  const threadsArg = arg(args, "threads", "");
  const chunks = arg(args, "chunks", "16,32,64,128,256,512,1024,2048")
    .split(",")
    .map(Number)
    .filter((c) => c <= tokens);
  scratchDir(); // the temporary root, removed at exit
  const model = await loadModelDir(await testModelDir(MODEL));
  const factory = await runtimes.pick(runtimeName);
  const runtime = await factory.create({
    model,
    maxPositions: tokens + 1,
    threads: threadsArg ? Number(threadsArg) : undefined,
  });
  const prompt = suiteTokens(tokens, MODEL.vocab!);

  /** Prefill seconds of one generation of 1 token over the prompt with this chunk. */
  const time = async (chunk: number, run: number): Promise<number> => {
    // A fresh driver and isolation key each time: no prefix is reused.
    runtime.truncate(0);
    const driver = new SequenceDriver(runtime, { eosTokenIds: [] });
    let seconds = Number.POSITIVE_INFINITY;
    for await (const e of driver.generate({
      prompt,
      maxTokens: 1,
      chunkTokens: chunk,
      sampling: { temperature: 0 },
      isolationKey: `run-${run}-${chunk}`,
    })) {
      if (e.type === "done") seconds = e.timings.prefillMs / 1000;
    }
    return seconds;
  };

  await time(Math.min(256, tokens), -1); // warm-up (JIT / WASM tier-up)
  // Rounds over every size in turn, best of the rounds per size: load that drifts during the run
  // then hits every size alike instead of whichever ran at the worst moment.
  const sizes = [tokens, ...chunks];
  const best = new Map(sizes.map((c) => [c, Number.POSITIVE_INFINITY]));
  for (let r = 0; r < runs; r++) {
    for (const c of sizes) best.set(c, Math.min(best.get(c)!, await time(c, r)));
  }
  const wholeSeconds = best.get(tokens)!;
  const results = chunks.map((chunk) => ({
    chunk,
    tokensPerSecond: Math.round((tokens / best.get(chunk)!) * 10) / 10,
    ratioToWhole: Math.round((wholeSeconds / best.get(chunk)!) * 1000) / 1000,
  }));
  const bestRate = Math.max(...results.map((r) => r.tokensPerSecond));
  const chosen = results.find((r) => r.tokensPerSecond >= 0.95 * bestRate)?.chunk;
  console.log(
    JSON.stringify(
      {
        bench: "prefill-chunk",
        runtime: runtime.info.name,
        threads: runtime.info.threads,
        promptTokens: tokens,
        model: MODEL,
        peer: {
          what: "one prefill call over the whole prompt",
          tokensPerSecond: Math.round((tokens / wholeSeconds) * 10) / 10,
        },
        results,
        smallestChunkWithin5PercentOfBest: chosen,
        driverDefault: DEFAULT_CHUNK_TOKENS,
        runtimePreferred: runtime.info.preferredChunkTokens ?? null,
        loadAverage: loadavg()[0],
      },
      null,
      2,
    ),
  );
  await runtime.close();
}
