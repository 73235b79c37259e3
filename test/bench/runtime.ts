// `npm run bench -- runtime [--quick] [--threads 1,2]`: the WASM SIMD runtime on a generated
// Llama-shaped model (default ~155M parameters, F32), with its peers measured in the same run:
//   - SIMD128 peak: a tight f32x4 multiply-add loop (wasm/assembly/bench.ts peak_madd, in the test
//     module wasm/build/ultralong-test.wasm; the runtime and the GEMM run the product module)
//   - memory bandwidth: v128 loads over 512 MiB (read_bytes), with 1 and with 2 worker threads
//   - the same peak loop in 2 workers at once: how far this machine itself scales right now
//   - the prefill GEMM alone on the model's FFN shape, against the peak (target >= 70%)
//   - prefill and decode tokens/s with 1 and 2 threads (target 2 threads >= 1.8x one)
//   - decode bytes/s of weights read against the bandwidth (target >= 60%)
// Every figure is the best of several runs (the machine may be shared); V8 first runs WASM in its
// baseline tier, so every kernel is warmed up before it is timed. Prints one JSON object.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import type { GenerateOptions } from "../../core/model/generate.ts";
import { loadModelDir } from "../../core/node/load-model-dir.ts";
import { makeModelDir } from "../../core/node/make-model.ts";
import { ensureBuilt, INITIAL_PAGES, TEST_WASM_FILE, WASM_FILE } from "../../wasm/build.mjs";
import { kernelsName, loadWasmModule } from "../../wasm/src/module.ts";
import { createWasmRuntime } from "../../wasm/src/runtime.ts";

const FULL: GenerateOptions = {
  layers: 8,
  hidden: 1024,
  heads: 16,
  kvHeads: 4,
  ffn: 2816,
  vocab: 32000,
  rope: "yarn",
  dtype: "f32",
  seed: 7,
};
const QUICK: GenerateOptions = { ...FULL, layers: 2, hidden: 512, heads: 8, kvHeads: 2, ffn: 1408 };

type Exports = Record<string, (...a: number[]) => number>;

const now = () => performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function best(runs: number, fn: () => number): number {
  let b = Number.POSITIVE_INFINITY;
  for (let i = 0; i < runs; i++) b = Math.min(b, fn());
  return b;
}

function instance(module: WebAssembly.Module, bytes: number) {
  const memory = new WebAssembly.Memory({ initial: INITIAL_PAGES, maximum: 65536 });
  const e = new WebAssembly.Instance(module, { env: { memory } }).exports as unknown as Exports;
  const base = Math.ceil(e.heap_base() / 64) * 64;
  memory.grow(Math.ceil((base + bytes) / 65536));
  return { e, memory, base };
}

/** f32x4 multiply-add peak of one core, GFLOP/s (80 flops per iteration). */
export async function simdPeak(module: WebAssembly.Module): Promise<number> {
  const { e } = instance(module, 0);
  for (let i = 0; i < 50; i++) e.peak_madd(10_000, 1);
  await sleep(200);
  const ms = best(7, () => {
    const t = now();
    e.peak_madd(PEAK_ITERS, 1);
    return now() - t;
  });
  return (80 * PEAK_ITERS) / ms / 1e6;
}

/** The prefill GEMM alone: (T, K) x (N, K)^T with f32 weights, GFLOP/s. */
async function gemm(module: WebAssembly.Module, T: number, K: number, N: number): Promise<number> {
  const { e, memory, base } = instance(module, (T * K + N * K + T * N) * 4);
  const f = new Float32Array(memory.buffer);
  for (let i = base / 4; i < base / 4 + T * K + N * K; i++) f[i] = (i % 97) / 97 - 0.5;
  const x = base;
  const w = x + T * K * 4;
  const y = w + N * K * 4;
  for (let i = 0; i < 30; i++) e.matmul_f32(x, 4, K, w, 8, y, 0);
  await sleep(200);
  const ms = best(5, () => {
    const t = now();
    e.matmul_f32(x, T, K, w, N, y, 0);
    return now() - t;
  });
  return (2 * T * K * N) / ms / 1e6;
}

const BW_BYTES = 512 * 2 ** 20;
const PEAK_ITERS = 20_000_000;

/**
 * `threads` workers at once, each timing `kind` 5 times in lock-step rounds: "read" streams its own
 * BW_BYTES / threads (read bandwidth), "peak" runs the multiply-add loop (how the machine itself
 * scales across threads right now). Returns the best round's aggregate GB/s or GFLOP/s.
 */
async function inWorkers(
  module: WebAssembly.Module,
  kind: "read" | "peak",
  threads: number,
): Promise<number> {
  const code = `
    const { parentPort, workerData } = require("node:worker_threads");
    const { module, bytes, gate, kind, iters } = workerData;
    const memory = new WebAssembly.Memory({ initial: workerData.pages, maximum: 65536 });
    const e = new WebAssembly.Instance(module, { env: { memory } }).exports;
    const base = Math.ceil(e.heap_base() / 64) * 64;
    if (kind === "read") {
      memory.grow(Math.ceil((base + bytes) / 65536));
      new Uint8Array(memory.buffer, base, bytes).fill(1); // touch every page before timing
    }
    for (let i = 0; i < 50; i++) kind === "read" ? e.read_bytes(base, 65536) : e.peak_madd(10000, 1);
    const ctl = new Int32Array(gate);
    const times = [];
    for (let r = 0; r < 5; r++) {
      Atomics.add(ctl, 0, 1);
      while (Atomics.load(ctl, 0) < (r + 1) * workerData.threads) {}
      const t = performance.now();
      kind === "read" ? e.read_bytes(base, bytes) : e.peak_madd(iters, 1);
      times.push(performance.now() - t);
    }
    parentPort.postMessage(times);`;
  const gate = new SharedArrayBuffer(4);
  const bytes = BW_BYTES / threads;
  const results = await Promise.all(
    Array.from({ length: threads }, () => {
      const w = new Worker(code, {
        eval: true,
        workerData: { module, bytes, gate, threads, kind, iters: PEAK_ITERS, pages: INITIAL_PAGES },
      });
      return new Promise<number[]>((resolve, reject) => {
        w.once("message", (m) => {
          resolve(m);
          void w.terminate();
        });
        w.once("error", reject);
      });
    }),
  );
  // Per round, the slowest worker bounds the aggregate; take the best round.
  let bestMs = Number.POSITIVE_INFINITY;
  for (let r = 0; r < 5; r++) bestMs = Math.min(bestMs, Math.max(...results.map((t) => t[r])));
  return kind === "read" ? BW_BYTES / bestMs / 1e6 : (threads * 80 * PEAK_ITERS) / bestMs / 1e6;
}

interface RunFigures {
  threads: number;
  prefillTokensPerSec: number;
  prefillGflops: number;
  decodeTokensPerSec: number;
  decodeWeightBytesPerSec: number;
}

async function runtimeFigures(
  dir: string,
  threads: number,
  prefillTokens: number,
  decodeTokens: number,
  flopsPerToken: number,
  matrixBytes: number,
  vocab: number,
): Promise<RunFigures> {
  const model = await loadModelDir(dir);
  const rt = await createWasmRuntime({ model, threads, maxPositions: 4096 });
  const tokens = Int32Array.from(
    { length: prefillTokens + decodeTokens },
    (_, i) => (i * 7919 + 13) % vocab,
  );
  try {
    await rt.forward(tokens.subarray(0, 64));
    for (let i = 0; i < 4; i++) await rt.forward(tokens.subarray(64 + i, 65 + i));
    await sleep(300);
    let prefillMs = Number.POSITIVE_INFINITY;
    let decodeMs = Number.POSITIVE_INFINITY;
    for (let r = 0; r < 2; r++) {
      rt.truncate(0);
      let t = now();
      await rt.prefill(tokens.subarray(0, prefillTokens));
      prefillMs = Math.min(prefillMs, now() - t);
      t = now();
      for (let i = 0; i < decodeTokens; i++) {
        await rt.forward(tokens.subarray(prefillTokens + i, prefillTokens + i + 1));
      }
      decodeMs = Math.min(decodeMs, now() - t);
    }
    const prefillTps = (prefillTokens * 1000) / prefillMs;
    const decodeTps = (decodeTokens * 1000) / decodeMs;
    return {
      threads,
      prefillTokensPerSec: round(prefillTps),
      prefillGflops: round((prefillTps * flopsPerToken) / 1e9),
      decodeTokensPerSec: round(decodeTps),
      decodeWeightBytesPerSec: Math.round(decodeTps * matrixBytes),
    };
  } finally {
    await rt.close();
  }
}

const round = (x: number, d = 3) => Number(x.toPrecision(d + 1));

export default async function main(args: string[]): Promise<void> {
  const quick = args.includes("--quick");
  const ti = args.indexOf("--threads");
  const threadList = ti >= 0 ? args[ti + 1].split(",").map(Number) : [1, 2];
  const opts = quick ? QUICK : FULL;
  const root = join(import.meta.dirname, "..", "..");
  await ensureBuilt({ root });
  const module = await loadWasmModule();
  const peers = new WebAssembly.Module(readFileSync(join(root, TEST_WASM_FILE)));

  const H = opts.hidden!;
  const L = opts.layers!;
  const hd = H / opts.heads!;
  const qkvo = H * (opts.heads! + 2 * opts.kvHeads!) * hd + H * opts.heads! * hd;
  const ffn = 3 * H * opts.ffn!;
  const lm = opts.vocab! * H;
  const matrixParams = L * (qkvo + ffn) + lm; // weights every decode step reads
  const params = matrixParams + opts.vocab! * H; // + the embedding table
  // Prefill computes no logits: its matrix products are the layers' only (attention excluded).
  const flopsPerToken = 2 * L * (qkvo + ffn);
  const prefillTokens = quick ? 256 : 512;
  const decodeTokens = quick ? 16 : 32;

  const dir = mkdtempSync(join(tmpdir(), "ultralong-bench-"));
  try {
    const t0 = now();
    await makeModelDir(dir, opts);
    const generateMs = now() - t0;

    const peak = await simdPeak(peers);
    // The loader's pick (the relaxed build where V8 takes it) against the plain build, same shape,
    // interleaved so that both see the same machine.
    const plain = new WebAssembly.Module(readFileSync(join(root, WASM_FILE)));
    let gemmGflops = 0;
    let gemmPlainGflops = 0;
    for (let r = 0; r < 3; r++) {
      gemmGflops = Math.max(gemmGflops, await gemm(module, 128, H, opts.ffn!));
      gemmPlainGflops = Math.max(gemmPlainGflops, await gemm(plain, 128, H, opts.ffn!));
    }
    const bw1 = await inWorkers(peers, "read", 1);
    const bw2 = threadList.includes(2) ? await inWorkers(peers, "read", 2) : null;
    const peak2 = threadList.includes(2) ? await inWorkers(peers, "peak", 2) : null;

    const runs: RunFigures[] = [];
    for (const threads of threadList) {
      runs.push(
        await runtimeFigures(
          dir,
          threads,
          prefillTokens,
          decodeTokens,
          flopsPerToken,
          matrixParams * 4,
          opts.vocab!,
        ),
      );
    }
    const one = runs.find((r) => r.threads === 1);
    const two = runs.find((r) => r.threads === 2);
    const report = {
      bench: "runtime",
      machine: { cpus: availableParallelism(), loadAverage1m: round(loadavg()[0]) },
      model: {
        ...opts,
        params,
        matrixParams,
        weightBytesF32: params * 4,
        generateMs: Math.round(generateMs),
      },
      peers: {
        simd128PeakGflopsPerCore: round(peak),
        ...(peak2 !== null
          ? { simd128PeakGflops2Workers: round(peak2), peakSpeedup2v1: round(peak2 / peak) }
          : {}),
        readBandwidthGBs: {
          threads1: round(bw1),
          ...(bw2 !== null ? { threads2: round(bw2) } : {}),
        },
      },
      prefillGemm: {
        shape: { T: 128, K: H, N: opts.ffn },
        kernels: kernelsName(module),
        gflops: round(gemmGflops),
        ratioToPeak: round(gemmGflops / peak),
        plainSimd128Gflops: round(gemmPlainGflops),
        ratioToPlain: round(gemmGflops / gemmPlainGflops),
        target: 0.7,
      },
      runs,
      ratios: {
        prefillGflopsVsPeak1Thread: one ? round(one.prefillGflops / peak) : null,
        decodeBytesVsBandwidth1Thread: one ? round(one.decodeWeightBytesPerSec / 1e9 / bw1) : null,
        decodeBytesVsBandwidth2Threads:
          two && bw2 !== null ? round(two.decodeWeightBytesPerSec / 1e9 / bw2) : null,
        prefillSpeedup2v1:
          one && two ? round(two.prefillTokensPerSec / one.prefillTokensPerSec) : null,
        decodeSpeedup2v1:
          one && two ? round(two.decodeTokensPerSec / one.decodeTokensPerSec) : null,
        // Our 2-thread speedup against the peak loop's own 2-worker speedup in this run: the
        // machine's scaling right now (a shared or throttled machine scales below 2x by itself).
        prefillSpeedupVsPeakSpeedup:
          one && two && peak2 !== null
            ? round(two.prefillTokensPerSec / one.prefillTokensPerSec / (peak2 / peak))
            : null,
        targets: { prefillGemmVsPeak: 0.7, decodeVsBandwidth: 0.6, speedup2v1: 1.8 },
      },
    };
    console.log(JSON.stringify(report, null, 2));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
