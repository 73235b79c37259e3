// The C ABI of native/include/ul_engine.h as the TypeScript hosts see it: status and dtype codes,
// the typed errors statuses map to, and the engine interface both hosts (emscripten module,
// N-API addon) implement so one Runtime class serves both.

import {
  FormatError,
  InvalidInputError,
  LimitError,
  NotAvailableError,
  UltralongError,
} from "../../core/errors.ts";
import type { KvDtype } from "../../core/kv/layout.ts";

/** ul_status. */
export const Status = {
  ok: 0,
  invalidArgument: 1,
  format: 2,
  notAvailable: 3,
  outOfMemory: 4,
  limit: 5,
  device: 6,
  io: 7,
  state: 8,
} as const;

/** ul_dtype. */
export const Dtype = { f32: 0, bf16: 1, f16: 2, fp8e4m3: 3 } as const;
export type DtypeCode = (typeof Dtype)[keyof typeof Dtype];

/** ul_backend_kind. */
export const Backend = { reference: 0, cuda: 1 } as const;

export function kvDtypeCode(dtype: KvDtype): DtypeCode {
  switch (dtype) {
    case "f32":
      return Dtype.f32;
    case "bf16":
      return Dtype.bf16;
    case "f16":
      return Dtype.f16;
    case "fp8-e4m3":
      return Dtype.fp8e4m3;
  }
}

/** A native failure that none of core's typed errors describes (device error, I/O, call order). */
export class NativeEngineError extends UltralongError {}

/** Maps a failed ul_status and its message to core's typed errors (one place). */
export function statusError(code: number, message: string): Error {
  const text = `native engine: ${message}`;
  switch (code) {
    case Status.invalidArgument:
      return new InvalidInputError(text);
    case Status.format:
      return new FormatError(text);
    case Status.notAvailable:
      return new NotAvailableError(text);
    case Status.outOfMemory:
    case Status.limit:
      return new LimitError(text);
    case Status.device:
      return new NativeEngineError("device_error", text);
    case Status.io:
      return new NativeEngineError("io_error", text);
    default:
      return new NativeEngineError("native_state", text);
  }
}

/** ul_config, with inv_freq as an array (the host copies it into its memory). */
export interface EngineConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  tieWordEmbeddings: boolean;
  rmsNormEps: number;
  rotaryDim: number;
  invFreq: Float64Array;
  attentionScaling: number;
  maxPositions: number;
  kvDtype: DtypeCode;
  backend: number;
  /** Rows per internal chunk; 0 = the engine's default. */
  maxChunk: number;
}

export interface MemoryReport {
  weightBytes: number;
  kvBytes: number;
  activationBytes: number;
  deviceFree: number;
  deviceTotal: number;
}

/**
 * ul_kv_tiers (ABI 4): pool blocks [0, deviceBlocks) in device memory, the next hostBlocks in host
 * memory (pinned on CUDA), staged per layer into two device buffers of stagingBytes in all.
 * deviceKvBytes + hostKvBytes == MemoryReport.kvBytes.
 */
export interface KvTiers {
  blockTokens: number;
  deviceBlocks: number;
  hostBlocks: number;
  deviceKvBytes: number;
  hostKvBytes: number;
  stagingBytes: number;
}

/** What runs an engine (ul_engine_backend_info): for /readyz, /metrics and the GPU check. */
export interface BackendInfo {
  /** Kernel set: "reference" or "cuda". */
  kernels: string;
  /** The GEMM that runs the projections: "cublaslt", "own-wmma" (our tensor-core kernel) or "reference". */
  gemm: string;
  /** CUDA: the cuBLASLt file that loaded, or null (then gemm is "own-wmma"). Absent on the reference. */
  cublaslt?: string | null;
  /** CUDA: the cuBLASLt candidates that failed before it (all of them when none loaded), with why. */
  cublasltTried?: { path: string; error: string }[];
  /** CUDA with cuBLASLt: GEMM plans built so far (one per distinct shape; they are cached). */
  gemmPlans?: number;
  /** CUDA with cuBLASLt: shapes it failed on, which our own GEMM runs instead. */
  gemmOwnShapes?: number;
  /** "own" when UL_GEMM=own forced our kernel although cuBLASLt may be present. */
  gemmForced?: string;
  /** The KV cache dtype: "f32", "bf16", "f16" or "fp8-e4m3". */
  kvDtype: string;
}

/** The ul_engine_backend_info JSON line as a BackendInfo (snake_case keys to camelCase). */
export function parseBackendInfo(line: string): BackendInfo {
  const raw = JSON.parse(line) as Record<string, unknown>;
  const info: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(raw)) {
    info[key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase())] = value;
  }
  return info as unknown as BackendInfo;
}

/** What every engine takes (weights, memory, identity), whichever form it has. */
export interface NativeEngineBase {
  setTensor(
    name: string,
    shape: number[],
    data: Float32Array | Uint16Array,
    dtype: DtypeCode,
  ): void;
  ready(): void;
  memory(): MemoryReport;
  /** Which tier holds what (ul_engine_memory_tiers); absent in a host built before ABI 4. */
  memoryTiers?(): KvTiers;
  /** What runs this engine; optional so a host built before ul_engine_backend_info still loads. */
  backendInfo?(): BackendInfo;
  destroy(): void;
}

/** One single-sequence ul_engine, synchronous calls; errors are thrown as typed errors (statusError). */
export interface NativeEngine extends NativeEngineBase {
  /** Logits of the last token when `wantLogits`, else null. */
  forward(tokens: Int32Array, wantLogits: boolean): Float32Array | null;
  /** The same off the event loop (the addon runs it on a worker thread); absent in the wasm host. */
  forwardAsync?(tokens: Int32Array, wantLogits: boolean): Promise<Float32Array | null>;
  sample(temperature: number, seed: bigint): number;
  position(): number;
  truncate(position: number): void;
  /** `bytes` is the payload size (core/kv/layout.ts kvPayloadBytes); the engine checks it. */
  exportKv(start: number, end: number, dtype: DtypeCode, bytes: number): Uint8Array;
  importKv(bytes: Uint8Array, tokens: number, dtype: DtypeCode): void;
}

/** ul_step_item: one sequence's share of a step. */
export interface NativeStepItem {
  tokens: Int32Array;
  start: number;
  table: Int32Array;
  logits: boolean;
}

/** A paged ul_engine (ul_engine_create_paged): a block pool, every call names its block table. */
export interface NativePagedEngine extends NativeEngineBase {
  /**
   * One vocab row per item with `logits`, in item order, in one array (null when none wants).
   * The addon runs it on a worker thread; the wasm host synchronously.
   */
  step(items: readonly NativeStepItem[]): Promise<Float32Array | null>;
  /** pairs: (from, to) ids, flattened. */
  copyBlocks(pairs: Int32Array): void;
  exportKvPaged(
    table: Int32Array,
    start: number,
    end: number,
    dtype: DtypeCode,
    bytes: number,
  ): Uint8Array;
  importKvPaged(
    table: Int32Array,
    start: number,
    bytes: Uint8Array,
    tokens: number,
    dtype: DtypeCode,
  ): void;
}

/** A loaded host (module or addon) that makes engines. */
export interface NativeHost {
  readonly name: string;
  backendCompiled(backend: number): boolean;
  /** deviceBlocks (ABI 4, ul_engine_create_tiered): blocks of 64 positions in device memory, the
   *  rest of the pool in the host tier; undefined: all resident (ul_engine_create). */
  create(config: EngineConfig, deviceBlocks?: number): NativeEngine;
  /** ul_engine_create_paged (or _paged_tiered with deviceBlocks); absent before ABI 3. */
  createPaged?(
    config: EngineConfig,
    blockTokens: number,
    totalBlocks: number,
    deviceBlocks?: number,
  ): NativePagedEngine;
  /** The host supports deviceBlocks (ABI 4). */
  readonly tiered?: boolean;
}
