// How much GPU memory one engine needs for a context, and the longest context a GPU holds. One
// calculation for `ultralong inspect --gpu-memory`, the deploy's GPU choice and docs/deploy.md's
// table (a test checks the table against this file).
//
// One engine on one GPU holds, all allocated at start (native/src/engine.cpp ul_engine_create):
//   weights      every checkpoint tensor in the runtime's weight dtype (CUDA: bf16)
//   KV cache     (layer, K|V, kv_head, max_positions, head_dim) in the KV dtype, one allocation
//                for the whole context; fp8 adds f32 scales per (layer, K|V, kv_head, block)
//   activations  scratch for one prefill chunk of `chunkRows` rows (the engine's own list, below)
//   fixed        CUDA context and what the libraries hold (FIXED_RESERVE_BYTES, why below)
// test/capacity-engine.test.ts checks the first three against the engine's own ul_engine_memory.
// The engine refuses a start that does not fit (cudaMalloc failure is a typed out-of-memory
// error), so this plan errs on the side of a context that fits.

import { kvLayoutOf, kvPayloadBytes } from "../kv/layout.ts";
import { type LlamaShape, llamaTensors } from "./llama-tensors.ts";

/** KV dtypes a capacity plan can be made for: what the CUDA runtime offers. */
export type CapacityKvDtype = "bf16" | "fp8-e4m3";

/** The CUDA runtime's KV dtypes by the names the CLI and the deploy take (`--kv-dtype fp8`). */
export const CUDA_KV_DTYPES = { bf16: "bf16", fp8: "fp8-e4m3" } as const satisfies Record<
  string,
  CapacityKvDtype
>;
export type CudaKvDtypeName = keyof typeof CUDA_KV_DTYPES;

/**
 * Memory every engine needs whatever the model and context, 1.5 GiB:
 * - the CUDA context with the loaded kernel modules (ours, cudart's, cuBLASLt's): about 0.5 GiB on
 *   Hopper with lazy module loading (CUDA 12.2+ default), up to ~1 GiB once cuBLASLt has loaded
 *   many GEMM kernels (public nvidia-smi reports; not measured on a GPU in this repository yet);
 * - the cuBLASLt workspace: 32 MiB (native/src/cuda/cublaslt.cu kWorkspaceBytes);
 * - decode split-KV partials (native/src/cuda/attention.cu decode_workspace_floats): at most
 *   15 rows x 32 heads x 256 splits x (128 + 2) f32 = 64 MiB for UltraLong-8B;
 * - the rest is slack for allocator rounding.
 * Rejected: a percentage of GPU memory (vLLM's gpu_memory_utilization 0.9): on a 141 GB H200 it
 * would keep 14 GiB back, 110K tokens of bf16 KV, for a context that does not grow with the GPU.
 */
export const FIXED_RESERVE_BYTES = 1.5 * 2 ** 30;

/** Rows lm_head runs together (engine.cpp logit_rows = min(32, max_chunk)). */
export const LOGIT_ROWS = 32;

/** Rows of one prefill chunk on CUDA: native/ts/cuda-runtime.ts's maxChunk (engine.cpp's default). */
export const CUDA_PREFILL_CHUNK_ROWS = 4096;

export interface CapacityOptions {
  /** Bytes per weight element as the runtime holds them (CUDA: bf16, 2). */
  weightBytesPerElement?: number;
  /** Bytes per activation element (CUDA: bf16, 2; the residual stream is f32 regardless). */
  activationBytesPerElement?: number;
  /** Rows of one prefill chunk (engine max_chunk). */
  chunkRows?: number;
  /** Memory held whatever the context (CUDA context, libraries). */
  fixedReserveBytes?: number;
}

/** What one engine holds for one context, in bytes. */
export interface MemoryPlan {
  weights: number;
  kv: number;
  activations: number;
  fixed: number;
  /** weights + kv + activations + fixed. */
  total: number;
}

const DEFAULTS: Required<CapacityOptions> = {
  weightBytesPerElement: 2,
  activationBytesPerElement: 2,
  chunkRows: CUDA_PREFILL_CHUNK_ROWS,
  fixedReserveBytes: FIXED_RESERVE_BYTES,
};

/** Elements of every tensor of the checkpoint (embedding, lm_head unless tied, layers, norms). */
export function parameterCount(shape: LlamaShape): number {
  let n = 0;
  for (const t of llamaTensors(shape)) n += t.shape.reduce((a, d) => a * d, 1);
  return n;
}

/**
 * Bytes of one prefill chunk's scratch, the list ul_engine_create allocates:
 * inv_freq (head_dim/2 f64), x (rows, hidden) f32, xn (rows, max(hidden, heads*head_dim)),
 * q (rows, heads*head_dim), k and v (rows, kv_heads*head_dim), gate and up (rows, ffn) in the
 * activation dtype, logits (min(32, rows), vocab) f32: lm_head runs up to 32 rows together (the
 * batched step's logits; engine.cpp logit_rows).
 */
export function chunkActivationBytes(shape: LlamaShape, opts: CapacityOptions = {}): number {
  const { chunkRows: rows, activationBytesPerElement: act } = { ...DEFAULTS, ...opts };
  const qd = shape.numAttentionHeads * shape.headDim;
  const kvd = shape.numKeyValueHeads * shape.headDim;
  return (
    (shape.headDim / 2) * 8 +
    rows * shape.hiddenSize * 4 +
    rows * Math.max(shape.hiddenSize, qd) * act +
    rows * qd * act +
    2 * rows * kvd * act +
    2 * rows * shape.intermediateSize * act +
    Math.min(LOGIT_ROWS, rows) * shape.vocabSize * 4
  );
}

/**
 * Bytes of a KV cache of `positions` positions: the engine's cache is the snapshot payload's size
 * (core/kv/layout.ts), fp8 scales included: one f32 per (layer, K|V, kv_head, block of
 * FP8_BLOCK_POSITIONS = 64 positions), 2 x 32 x 8 x 4 / 64 = 32 B per position for UltraLong-8B.
 */
export function kvCacheBytes(shape: LlamaShape, dtype: CapacityKvDtype, positions: number): number {
  return kvPayloadBytes(kvLayoutOf(shape, dtype), positions);
}

/** The memory one engine needs to serve `positions` positions of context. */
export function memoryFor(
  shape: LlamaShape,
  kvDtype: CapacityKvDtype,
  positions: number,
  opts: CapacityOptions = {},
): MemoryPlan {
  const o = { ...DEFAULTS, ...opts };
  const weights = parameterCount(shape) * o.weightBytesPerElement;
  // The engine's pool is whole 64-position blocks (engine.cpp: one sequence is one table of them),
  // so a context that is not a multiple of 64 takes up to 63 positions more than counted here:
  // under 8 MiB for UltraLong-8B in bf16, inside the fixed reserve's slack.
  const kv = kvCacheBytes(shape, kvDtype, positions);
  const activations = chunkActivationBytes(shape, o);
  const fixed = o.fixedReserveBytes;
  return { weights, kv, activations, fixed, total: weights + kv + activations + fixed };
}

/**
 * The most positions whose memoryFor fits in `gpuMemoryBytes` (what CUDA reports as the device's
 * total, e.g. nvidia-smi's 143771 MiB for an H200); 0 when not even the weights fit.
 */
export function longestContext(
  shape: LlamaShape,
  kvDtype: CapacityKvDtype,
  gpuMemoryBytes: number,
  opts: CapacityOptions = {},
): number {
  const base = memoryFor(shape, kvDtype, 0, opts).total;
  if (base >= gpuMemoryBytes) return 0;
  // Linear apart from the fp8 scale blocks' rounding: estimate, then step to the exact edge.
  const perToken = memoryFor(shape, kvDtype, 1 << 20, opts).kv / (1 << 20);
  let n = Math.floor((gpuMemoryBytes - base) / perToken);
  while (n > 0 && memoryFor(shape, kvDtype, n, opts).total > gpuMemoryBytes) n--;
  while (memoryFor(shape, kvDtype, n + 1, opts).total <= gpuMemoryBytes) n++;
  return n;
}

const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(2)} GiB`;

/**
 * The plan against a GPU as one line of arithmetic, e.g.
 * "weights 14.96 GiB + KV 128.00 GiB + reserve 1.87 GiB = 144.83 GiB > GPU 140.40 GiB"
 * (reserve = one chunk's activations + the fixed reserve).
 */
export function planArithmetic(plan: MemoryPlan, gpuMemoryBytes: number): string {
  const sign = plan.total > gpuMemoryBytes ? ">" : "<=";
  return (
    `weights ${gib(plan.weights)} + KV ${gib(plan.kv)} + reserve ${gib(plan.activations + plan.fixed)}` +
    ` = ${gib(plan.total)} ${sign} GPU ${gib(gpuMemoryBytes)}`
  );
}
