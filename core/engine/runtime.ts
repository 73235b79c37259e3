// The Runtime seam (ARCHITECTURE.md): what a model executes on. A runtime owns the weights and ONE
// sequence's KV cache. Everything above it (chunking, snapshots, sampling, stop conditions,
// cancellation) is the sequence driver in core/engine, written once.
//
// Runtimes: WASM SIMD (wasm/src), native via emscripten or N-API (native/ts). A runtime that cannot
// run here is a stub of this shape whose `create` fails with NotAvailableError.

import { InvalidInputError } from "../errors.ts";
import type { KvLayout } from "../kv/layout.ts";
import type { ModelConfig } from "../model/config-types.ts";

export interface RuntimeInfo {
  /** Registry name: "wasm", "native-wasm", "cuda", ... */
  name: string;
  /** KV cache layout, including the dtype the cache is stored in. */
  kv: KvLayout;
  /** Most positions the KV cache can hold (allocated or allowed). */
  maxPositions: number;
  /** Worker threads (1 when single-threaded). */
  threads: number;
  /**
   * What computes, GEMM backend included, as reported on /readyz, /metrics and in benchmarks:
   * "typescript", "wasm-simd128", "cpp-reference", "cuda gemm=cublaslt(/path/libcublasLt.so.13)".
   */
  kernels: string;
  /** Bytes held for weights and for the KV cache at `maxPositions`. */
  weightBytes: number;
  /** Element type the weights are held in (f32, bf16, int8), when the runtime says. */
  weightFormat?: string;
  kvCapacityBytes: number;
  /**
   * Optional: the prefill chunk (tokens) this runtime is fastest with, measured by its author
   * (docs/driver.md). The sequence driver uses it when a request names no chunk size.
   */
  preferredChunkTokens?: number;
  /**
   * Optional: why the runtime sized itself as it did when the caller left it the choice (the wasm
   * runtime's worker count for a model that needs more memories than cores), one line for the log.
   */
  sizing?: string;
}

/** Options of one forward call. */
export interface ForwardOptions {
  /**
   * The caller reads the logits at once, before it awaits anything: the runtime may return a view
   * of a buffer that its next forward or step (of any sequence) reuses, instead of a copy. A
   * runtime may ignore it (and copy).
   */
  transientLogits?: boolean;
}

export interface Runtime {
  readonly config: ModelConfig;
  readonly info: RuntimeInfo;
  /** Number of positions currently in the KV cache (the next token goes at this position). */
  readonly position: number;

  /**
   * Run the model over `tokens` at positions [position, position + tokens.length), appending their
   * K and V to the cache. Returns the logits (vocab_size floats) of the LAST token: decode is
   * `forward([token])`. Rejects with CancelledError if `signal` fires between layers.
   */
  forward(
    tokens: Int32Array,
    signal?: AbortSignal,
    options?: ForwardOptions,
  ): Promise<Float32Array>;

  /** Like forward but computes no logits (saves the lm_head for every chunk but the last). */
  prefill(tokens: Int32Array, signal?: AbortSignal): Promise<void>;

  /** Drop every position >= `position` (keep a prefix). */
  truncate(position: number): void;

  /** The KV of positions [start, end) in the layout of core/kv/layout.ts, in `info.kv.dtype`. */
  exportKv(start: number, end: number): Promise<Uint8Array>;

  /**
   * Append KV for positions [position, position + tokens) from bytes in the layout of
   * core/kv/layout.ts with the given dtype (converted if it differs from the cache's).
   */
  importKv(bytes: Uint8Array, tokens: number, dtype: KvLayout["dtype"]): Promise<void>;

  /** Free workers and memory. The runtime is unusable afterwards. */
  close(): Promise<void>;
}

/** The argument check every runtime's `truncate` makes: an integer in [0, held]. */
export function checkTruncate(position: number, held: number): void {
  if (!Number.isInteger(position) || position < 0 || position > held) {
    throw new InvalidInputError(`truncate(${position}): must be an integer in [0, ${held}]`);
  }
}

/** The argument check every runtime's `exportKv` makes: [start, end) within the held positions. */
export function checkKvRange(start: number, end: number, held: number): void {
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || start > end) {
    throw new InvalidInputError(`exportKv(${start}, ${end}): not a position range`);
  }
  if (end > held) {
    throw new InvalidInputError(
      `exportKv(${start}, ${end}): only ${held} positions are in the cache`,
    );
  }
}
