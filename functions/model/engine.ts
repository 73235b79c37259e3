// What the model function app needs from the model: generate events for a (streamed) prompt, and
// describe itself for readiness. `createDriverEngine` (driver-engine.ts) implements it over the
// runtime registry, the sequence driver and the snapshot cache; the app knows none of those.
import type { SchedulerStats } from "../../core/engine/scheduler.ts";
import type { ModelEvent } from "../../core/protocol/events.ts";
import type { GenerateHeader } from "../../core/protocol/header.ts";

export interface EngineInfo {
  /** Model id served (directory name or configured). */
  model: string;
  /** Model fingerprint (SHA-256 hex), names snapshots. */
  fingerprint: string;
  runtime: string;
  /** What computes, GEMM backend included (RuntimeInfo.kernels). */
  kernels: string;
  vocabSize: number;
  /** Context length the runtime can hold. */
  maxPositions: number;
  kv: { dtype: string; bytesPerToken: number; capacityBytes: number };
  /** Snapshot store in use ("none", "dir:/path", "s3://bucket/prefix"). */
  store: string;
  /** Weights' element type in memory, when the runtime says (RuntimeInfo.weightFormat). */
  weights?: string;
  /** Why the runtime sized itself so, when it chose (RuntimeInfo.sizing). */
  sizing?: string;
  /** Generations that run at once: 1, or with continuous batching `--max-seqs`. */
  maxSeqs: number;
  /** With continuous batching: the step budget and the KV block pool (docs/batching.md). */
  batching?: {
    maxBatchTokens: number;
    /** Most prompt tokens a step runs beside decode tokens. */
    maxPrefillTokens: number;
    blockTokens: number;
    totalBlocks: number;
    /** Where preempted sequences' KV goes: the snapshot store, else host memory up to maxSwapBytes. */
    swapTo: "store" | "host";
    maxSwapBytes: number;
  };
}

export interface GenerationRequest {
  header: GenerateHeader;
  /** Verified prompt tokens as they arrive; ends when the edge's END frame is verified. */
  prompt: AsyncIterable<Int32Array>;
  signal: AbortSignal;
}

export interface ModelEngine {
  info(): EngineInfo;
  /** Events in order: progress*, token*, then exactly one usage. Throws typed errors. */
  generate(request: GenerationRequest): AsyncIterable<ModelEvent>;
  /** Snapshot bytes written and read so far (metrics). */
  snapshotBytes?(): { written: number; read: number };
  /** With continuous batching: the scheduler's counters (metrics). */
  batchStats?(): SchedulerStats;
  close(): Promise<void>;
}
