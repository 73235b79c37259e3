// How a model is cut into shards (one per thread), Megatron-style: each shard gets a contiguous
// range of KV heads with their query heads, a contiguous range of FFN columns and of vocab rows.
import { InvalidInputError, LimitError, NotAvailableError } from "../../core/errors.ts";
import type { ModelConfig } from "../../core/model/config-types.ts";
import { type ShardSpec, shardBytes, type WeightFormat } from "./shard.mjs";

export interface Range {
  start: number;
  end: number;
}

export interface ShardPlan {
  /** KV heads [start, end); the query heads are these times (heads / kvHeads). */
  kvHeads: Range;
  /** FFN (intermediate) columns. */
  ffn: Range;
  /** lm_head rows. */
  vocab: Range;
  spec: ShardSpec;
}

/** Tokens per micro-batch inside one forward: activation buffers are sized for it. */
export const MAX_BATCH = 128;

/** `total` split into `parts` contiguous ranges, multiples of `unit` except possibly the last. */
export function split(total: number, parts: number, unit = 1): Range[] {
  const units = Math.ceil(total / unit);
  const out: Range[] = [];
  for (let i = 0; i < parts; i++) {
    const a = Math.floor((i * units) / parts) * unit;
    const b = Math.min(total, Math.floor(((i + 1) * units) / parts) * unit);
    out.push({ start: Math.min(a, total), end: b });
  }
  return out;
}

/** The shapes the kernels need; throws a typed error naming the first one that does not fit. */
export function checkShapes(config: ModelConfig, format: WeightFormat): void {
  if (config.attentionBias || config.mlpBias) {
    throw new NotAvailableError("the WASM runtime has no bias terms (attention_bias / mlp_bias)");
  }
  if (Math.floor(config.headDim * config.partialRotaryFactor) !== config.headDim) {
    throw new NotAvailableError("the WASM runtime rotates whole heads (partial_rotary_factor 1)");
  }
  const unit = format === "int8" ? 32 : 4;
  const need: [string, number, number][] = [
    ["hidden_size", config.hiddenSize, unit],
    ["intermediate_size", config.intermediateSize, unit],
    ["head_dim", config.headDim, format === "int8" ? 32 : 8],
  ];
  for (const [name, value, m] of need) {
    if (value % m !== 0) {
      throw new InvalidInputError(
        `the WASM runtime needs ${name} to be a multiple of ${m} for ${format} weights (got ${value})`,
      );
    }
  }
}

/** What every shard shares: all but its slice's counts and the pool (fitMemory sets that). */
export type ShardBase = Omit<ShardSpec, "heads" | "kvHeads" | "ffn" | "vocab" | "poolBlocks">;

export function planShards(config: ModelConfig, threads: number, base: ShardBase): ShardPlan[] {
  const g = config.numAttentionHeads / config.numKeyValueHeads;
  const kv = split(config.numKeyValueHeads, threads);
  const ffn = split(config.intermediateSize, threads, base.weightFormat === "int8" ? 32 : 4);
  const vocab = split(config.vocabSize, threads);
  return kv.map((kvHeads, i) => ({
    kvHeads,
    ffn: ffn[i],
    vocab: vocab[i],
    spec: {
      ...base,
      kvHeads: kvHeads.end - kvHeads.start,
      heads: (kvHeads.end - kvHeads.start) * g,
      ffn: ffn[i].end - ffn[i].start,
      vocab: vocab[i].end - vocab[i].start,
      poolBlocks: Math.ceil(base.maxPositions / base.blockTokens),
    },
  }));
}

/** One WebAssembly memory holds at most 4 GiB; keep 1 MiB for the module's own static data. */
export const MEMORY_LIMIT = 2 ** 32 - 2 ** 20;

/**
 * What the shards' memories hold: null when some shard's weights and activations do not fit one
 * memory, else the most positions (whole blocks) the fullest shard's KV pool can hold, with the
 * block tables of a sequence that long, and the total weight bytes.
 */
function memoryRoom(plans: ShardPlan[]): { positions: number; weightBytes: number } | null {
  let positions = Number.POSITIVE_INFINITY;
  let weightBytes = 0;
  for (const p of plans) {
    const b = shardBytes(p.spec);
    weightBytes += b.weights;
    const room = MEMORY_LIMIT - b.weights - b.activations;
    if (room <= 0) return null;
    const perPosition = b.kvPerPosition + b.tablePerPosition;
    const bs = p.spec.blockTokens;
    positions = Math.min(positions, Math.floor(room / perPosition / bs) * bs);
  }
  return { positions, weightBytes };
}

/**
 * Checks every shard's weights and activations fit one memory (LimitError naming the way out if
 * not), sizes the KV pool to `pool` positions (default `requested`) or what the fullest shard can
 * hold, in whole blocks, and a sequence's limit, maxPositions, to at most `requested` and the
 * pool; sets both in every spec and returns them with the shards' total weight bytes.
 */
export function fitMemory(
  plans: ShardPlan[],
  requested: number,
  pool = requested,
): { maxPositions: number; poolPositions: number; weightBytes: number } {
  const room = memoryRoom(plans);
  if (!room) {
    const b = shardBytes(plans[0].spec);
    throw new LimitError(
      `a shard's weights (${b.weights} bytes) do not fit one 4 GiB WebAssembly memory with ` +
        `${plans.length} thread(s): use more threads or bf16/int8 weights`,
    );
  }
  const bs = plans[0].spec.blockTokens;
  const poolPositions = Math.min(Math.ceil(pool / bs) * bs, room.positions);
  const maxPositions = Math.min(requested, poolPositions);
  for (const p of plans) {
    p.spec.maxPositions = maxPositions;
    p.spec.poolBlocks = poolPositions / bs;
  }
  return { maxPositions, poolPositions, weightBytes: room.weightBytes };
}

export interface ThreadChoice {
  threads: number;
  /**
   * Why, when it is not simply the core count: one line naming the weights or context that needed
   * more workers, and the context each worker count allows. Empty when threads = cores.
   */
  reason: string;
}

/**
 * The worker count when the caller names none. Each worker's shard lives in one WebAssembly
 * memory (4 GiB), so a model bigger than cores x 4 GiB needs more workers than cores (they then
 * share the cores; a barrier per layer keeps them in step). Takes the fewest workers, from the
 * core count up, whose memories hold the weights and `requested` positions; when none holds that
 * many, the count that holds the most (up to the model's KV heads, beyond which a shard's KV does
 * not shrink). Throws LimitError when no count holds the weights.
 */
export function chooseThreads(
  config: ModelConfig,
  base: ShardBase,
  cores: number,
  requested: number,
): ThreadChoice {
  const most = Math.max(cores, config.numKeyValueHeads);
  const allowed: Array<{ threads: number; positions: number }> = [];
  for (let n = cores; n <= most; n++) {
    const room = memoryRoom(planShards(config, n, base));
    if (!room) continue;
    const positions = Math.min(room.positions, config.maxPositionEmbeddings);
    allowed.push({ threads: n, positions });
    if (positions >= requested) break;
  }
  if (allowed.length === 0) {
    throw new LimitError(
      `the weights do not fit ${most} WebAssembly memories of 4 GiB (one per worker): use bf16 or int8 weights`,
    );
  }
  const fits = allowed.find((a) => a.positions >= requested);
  const pick = fits ?? allowed.reduce((a, b) => (b.positions > a.positions ? b : a));
  if (pick.threads === cores && fits) return { threads: cores, reason: "" };
  const table = allowed.map((a) => `${a.threads}: ${a.positions}`).join(", ");
  const why = fits
    ? `${pick.threads} workers on ${cores} core(s): fewer do not hold the weights and ${requested} positions`
    : `${pick.threads} workers on ${cores} core(s) hold the most context (${pick.positions} of the ${requested} positions asked)`;
  return { threads: pick.threads, reason: `${why}; positions by workers: ${table}` };
}
