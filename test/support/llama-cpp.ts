// llama.cpp through node-llama-cpp (a devDependency), and the same greedy run on one of our
// runtimes, for the GGUF test and `npm run bench -- cpu-peer`. Each run prefills a prompt in one
// batch and decodes greedily, timing both phases the same way on both sides:
//   prefill: from the prompt's submission to the first generated token (the prompt's forward,
//            its last-position logits and the argmax);
//   decode:  each further token (one one-token forward and the argmax).
// node-llama-cpp uses only its prebuilt CPU binary here: `gpu: false` and `build: "never"`, so it
// never downloads or compiles anything at run time.

import type { Llama, Token } from "node-llama-cpp";
import { argmax } from "../../core/engine/sampling.ts";

export interface GreedyRun {
  /** The generated tokens: the first comes from the prefill, each other from one decode step. */
  tokens: number[];
  prefillMs: number;
  /** Time of the decode steps after the first token (tokens.length - 1 of them). */
  decodeMs: number;
}

/** The llama.cpp binding, or null when node-llama-cpp is not installed. */
export async function loadLlamaCpp(): Promise<Llama | null> {
  let mod: typeof import("node-llama-cpp");
  try {
    mod = await import("node-llama-cpp");
  } catch (err) {
    if ((err as { code?: string }).code === "ERR_MODULE_NOT_FOUND") return null;
    throw err;
  }
  return mod.getLlama({
    gpu: false,
    build: "never",
    skipDownload: true,
    progressLogs: false,
    logLevel: mod.LlamaLogLevel.error,
    // 0: a context's `threads` is the number it uses, never capped by a global budget.
    maxThreads: 0,
  });
}

const now = () => performance.now();

/** Greedy tokens from llama.cpp: `n` of them after `prompt`, which is evaluated in one batch. */
export async function llamaCppGreedy(
  llama: Llama,
  ggufPath: string,
  prompt: number[],
  n: number,
  threads: number,
): Promise<GreedyRun> {
  const model = await llama.loadModel({ modelPath: ggufPath, gpuLayers: 0 });
  try {
    const context = await model.createContext({
      contextSize: prompt.length + n,
      batchSize: prompt.length,
      threads,
      sequences: 1,
    });
    try {
      const tokens: number[] = [];
      const t0 = now();
      let t1 = t0;
      for await (const t of context.getSequence().evaluate(prompt as Token[], { temperature: 0 })) {
        if (tokens.length === 0) t1 = now();
        tokens.push(t);
        if (tokens.length >= n) break;
      }
      return { tokens, prefillMs: t1 - t0, decodeMs: now() - t1 };
    } finally {
      await context.dispose();
    }
  } finally {
    await model.dispose();
  }
}

/** The forward calls of our Runtime seam that a greedy run needs (a fresh sequence). */
export interface ForwardRuntime {
  forward(tokens: Int32Array): Promise<Float32Array>;
}

/** Greedy tokens from one of our runtimes, timed as llamaCppGreedy times llama.cpp. */
export async function runtimeGreedy(
  rt: ForwardRuntime,
  prompt: number[],
  n: number,
): Promise<GreedyRun> {
  const tokens: number[] = [];
  const t0 = now();
  let logits = await rt.forward(Int32Array.from(prompt));
  tokens.push(argmax(logits));
  const t1 = now();
  while (tokens.length < n) {
    logits = await rt.forward(Int32Array.of(tokens[tokens.length - 1]));
    tokens.push(argmax(logits));
  }
  return { tokens, prefillMs: t1 - t0, decodeMs: now() - t1 };
}

/** The first index where two token lists differ, or null when one is a prefix of the other. */
export function firstDivergence(a: number[], b: number[]): number | null {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return null;
}
