// Where a context's KV goes, and what that costs: the arithmetic behind `ultralong plan` (issue 18's
// planner). From the model's shape, the context, the KV dtype and the machine (GPUs, each GPU's
// memory, the node's host memory, whether a snapshot store backs it):
//
//   per GPU      the weights (bf16, replicated: context parallelism splits the sequence, not the
//                model), one prefill chunk's scratch and the fixed reserve (capacity.ts memoryFor),
//                and the GPU's share of the KV: context / gpus positions (ring attention and the
//                split decode each hold an even slice of the sequence)
//   tiers        what of that share the GPU cannot hold goes to pinned host memory (the node's,
//                shared by its GPUs), and what the host cannot hold to the snapshot store when one
//                is named; otherwise the plan is refused with the arithmetic
//   staging      a GPU with a host part also holds the engine's two staging buffers, each one
//                layer's host part (native/src/engine.cpp create), so its device tier is what
//                fits beside weights + reserve + staging (deviceTier below)
//   prefill      FLOPs: the projections (2 x non-embedding parameters per token) and causal
//                attention (2 x layers x heads x head_dim x N^2: QK^T and PV over the lower
//                triangle), split over the GPUs; bytes the host tier sends to the GPUs (each chunk
//                attends to every earlier position, so the host-held part crosses PCIe once per
//                chunk); seconds only from rates
//   decode       bytes one token reads per GPU: the weights and the GPU-held KV from HBM, the
//                host-held KV over the host link; seconds only from rates
//
// Rates are measured figures (the GPU check's, or a file in the same shape) or, when asked for by
// name, a GPU's datasheet peaks; a plan never invents a time without saying where its rates came
// from.

import { InvalidInputError } from "../errors.ts";
import { FP8_BLOCK_POSITIONS } from "../kv/layout.ts";
import {
  type CapacityKvDtype,
  type CapacityOptions,
  CUDA_PREFILL_CHUNK_ROWS,
  kvCacheBytes,
  longestContext,
  type MemoryPlan,
  memoryFor,
  parameterCount,
} from "./capacity.ts";
import type { LlamaShape } from "./llama-tensors.ts";

export interface Rates {
  /** Where the figures come from (a GPU check run, a datasheet). */
  source: string;
  /** Dense bf16 GEMM throughput of one GPU, TFLOP/s. */
  gemmTflops: number;
  /** Causal attention throughput of one GPU, TFLOP/s. */
  attentionTflops: number;
  /** HBM bandwidth of one GPU, GB/s (10^9 bytes). */
  hbmGBps: number;
  /** Host-to-GPU copy bandwidth of one GPU, GB/s. */
  hostLinkGBps: number;
}

/**
 * Datasheet peaks, for a plan before anything is measured; the plan labels them as such. H200 SXM:
 * 989 TFLOP/s dense bf16, 4.8 TB/s HBM3e; PCIe Gen5 x16 at 64 GB/s per direction, of which ~55
 * is what pinned copies reach in practice (NVIDIA's bandwidthTest figures, not measured here).
 */
export const DATASHEET_RATES: Record<string, Rates> = {
  h200: {
    source: "H200 SXM datasheet peaks (not measured)",
    gemmTflops: 989,
    attentionTflops: 989,
    hbmGBps: 4800,
    hostLinkGBps: 55,
  },
};

export interface PlacementInput {
  shape: LlamaShape;
  /** Positions of context to hold. */
  context: number;
  kvDtype: CapacityKvDtype;
  gpus: number;
  /** Each GPU's memory, bytes (what CUDA reports as its total). */
  gpuMemoryBytes: number;
  /** Host memory the node can pin for KV, bytes (0: none). */
  hostMemoryBytes: number;
  /** A snapshot store backs the host tier (the third tier). */
  store: boolean;
  rates?: Rates;
  capacity?: CapacityOptions;
}

export interface Tier {
  /** Positions held in this tier, node-wide. */
  tokens: number;
  bytes: number;
}

export interface Placement {
  perGpu: {
    weights: number;
    scratch: number;
    kvBytes: number;
    kvTokens: number;
    /** Both staging buffers (each stagingBytes / 2: one layer's host part); 0 with no host part. */
    stagingBytes: number;
    /** weights + scratch + kvBytes + stagingBytes. */
    total: number;
  };
  tiers: { gpu: Tier; host: Tier; store: Tier };
  kvBytesPerToken: number;
  prefill: {
    gemmFlops: number;
    attentionFlops: number;
    /** Bytes the host tier sends to each GPU over the whole prefill. */
    hostToGpuBytesPerGpu: number;
    /** With rates: compute and copy seconds (copies overlap compute when below it). */
    seconds?: { compute: number; copies: number; total: number };
  };
  decode: {
    /**
     * Bytes one decode token reads on each GPU: from HBM, and over the host link (everything the
     * GPU does not hold crosses it, the store tier's part included); of those, what the snapshot
     * store delivers (its rate is the store's, which no rate here models).
     */
    hbmBytesPerGpu: number;
    hostBytesPerGpu: number;
    storeBytesPerGpu: number;
    secondsPerToken?: number;
  };
  rates?: Rates;
}

/** The placement of `context` positions, or InvalidInputError whose message is the arithmetic. */
export function placeContext(input: PlacementInput): Placement {
  const { shape, context, kvDtype, gpus } = input;
  if (!Number.isSafeInteger(context) || context < 1) {
    throw new InvalidInputError(`context must be a positive number of tokens, not ${context}`);
  }
  if (!Number.isSafeInteger(gpus) || gpus < 1) {
    throw new InvalidInputError(`--gpus must be a positive integer, not ${gpus}`);
  }
  const base = memoryFor(shape, kvDtype, 0, input.capacity);
  const perTokenKv = kvCacheBytes(shape, kvDtype, 1 << 20) / (1 << 20);
  const free = input.gpuMemoryBytes - base.total;
  if (free <= 0) {
    throw new InvalidInputError(
      `the model does not fit one GPU: ${besides(base)} = ${gib(base.total)} > GPU ${gib(input.gpuMemoryBytes)}`,
    );
  }
  const share = Math.ceil(context / gpus);
  // What one engine holds beside the weights, as `ultralong inspect --gpu-memory` counts it.
  const resident = longestContext(shape, kvDtype, input.gpuMemoryBytes, input.capacity);
  // A host part only where there is somewhere to put it; with none the refusal below counts the
  // all-resident GPU, which holds no staging.
  const tiered = share > resident && (input.hostMemoryBytes > 0 || input.store);
  const gpu = tiered
    ? deviceTier(input, share, base, perTokenKv)
    : { tokens: Math.min(share, resident), stagingBytes: 0 };
  const gpuTokens = gpu.tokens;
  const kvOnGpu = gpuTokens * perTokenKv;
  const overflowPerGpu = share - gpuTokens;
  const hostCap = Math.floor(input.hostMemoryBytes / perTokenKv);
  const hostTokens = Math.min(overflowPerGpu * gpus, hostCap);
  const storeTokens = overflowPerGpu * gpus - hostTokens;
  if (storeTokens > 0 && !input.store) {
    const each = tiered
      ? `KV ${gib(kvOnGpu)} + staging 2 x ${gib(gpu.stagingBytes / 2)} in the ${gib(free)} each has beside`
      : `${gib(free)} each beside`;
    throw new InvalidInputError(
      `${fmtTokens(context)} tokens of ${kvDtype} KV (${gib(context * perTokenKv)}) do not fit: ` +
        `${gpus} GPU x ${fmtTokens(gpuTokens)} tokens (${each} ${besides(base)}) ` +
        `+ host ${fmtTokens(hostCap)} tokens (${gib(input.hostMemoryBytes)}) = ${fmtTokens(gpus * gpuTokens + hostCap)} < ${fmtTokens(context)}; ` +
        `add GPUs or host memory${kvDtype === "bf16" ? ", use fp8 KV" : ""}, or back the host tier with a snapshot store`,
    );
  }
  const placement: Placement = {
    perGpu: {
      weights: base.weights,
      scratch: base.activations + base.fixed,
      kvBytes: kvOnGpu,
      kvTokens: gpuTokens,
      stagingBytes: gpu.stagingBytes,
      total: base.total + kvOnGpu + gpu.stagingBytes,
    },
    tiers: {
      gpu: { tokens: gpuTokens * gpus, bytes: kvOnGpu * gpus },
      host: { tokens: hostTokens, bytes: hostTokens * perTokenKv },
      store: { tokens: storeTokens, bytes: storeTokens * perTokenKv },
    },
    kvBytesPerToken: perTokenKv,
    prefill: prefillCost(input, overflowPerGpu, perTokenKv),
    decode: {
      hbmBytesPerGpu: base.weights + kvOnGpu,
      hostBytesPerGpu: overflowPerGpu * perTokenKv,
      storeBytesPerGpu: (storeTokens / gpus) * perTokenKv,
    },
    ...(input.rates ? { rates: input.rates } : {}),
  };
  const r = input.rates;
  if (r) {
    const hbm = placement.decode.hbmBytesPerGpu / (r.hbmGBps * 1e9);
    const link = placement.decode.hostBytesPerGpu / (r.hostLinkGBps * 1e9);
    placement.decode.secondsPerToken = Math.max(hbm, link); // copies overlap the HBM reads
  }
  return placement;
}

/**
 * The device tier of a GPU whose share of `share` positions does not fit resident: the most
 * positions D, whole 64-position blocks (the single engine's pool blocks; `--device-kv-positions`
 * takes whole blocks), with kv(D) + staging(H) <= free, where the pool P is the share in whole
 * blocks, H = P - D the host part and staging(H) = 2 buffers x one layer's host part = 2 kv(H) / L
 * (engine.cpp create: 2 x (K|V, kv_head, host slots, head_dim) plus the fp8 scales). The host part
 * counts what the store would hold too: full attention reads every block each step, so all that
 * is not on the device passes through staging.
 * At whole blocks kv is exactly linear (p bytes a position, fp8's scales being one per block), so
 * D p + 2 (P - D) p / L <= free gives D = (free - 2 P p / L) / (p (1 - 2 / L)): each position moved
 * to the host frees p and costs 2p / L of staging. The closed form is rounded down to a block and
 * the loops then step to the exact edge, guarding the floats. Refused when even D = 0 does not fit.
 */
function deviceTier(input: PlacementInput, share: number, base: MemoryPlan, perTokenKv: number) {
  const { shape, kvDtype, context, gpus } = input;
  const free = input.gpuMemoryBytes - base.total;
  const B = FP8_BLOCK_POSITIONS;
  const L = shape.numHiddenLayers;
  const P = Math.ceil(share / B) * B;
  const kv = (positions: number) => kvCacheBytes(shape, kvDtype, positions);
  const staging = (device: number) => (2 * kv(P - device)) / L;
  const fits = (device: number) => kv(device) + staging(device) <= free;
  if (!fits(0)) {
    throw new InvalidInputError(
      `${fmtTokens(context)} tokens of ${kvDtype} KV do not fit ${gpus} GPU${gpus > 1 ? "s" : ""} even with every block on the host: ` +
        `each GPU's two staging buffers, one layer's host part (${fmtTokens(P)} tokens) each, take 2 x ${gib(staging(0) / 2)} = ${gib(staging(0))} ` +
        `> ${gib(free)} beside ${besides(base)}; add GPUs${kvDtype === "bf16" ? " or use fp8 KV" : ""}`,
    );
  }
  // L > 2 here: with L <= 2 the staging alone is at least the whole pool, which does not fit.
  const estimate = (free - (2 * P * perTokenKv) / L) / (perTokenKv * (1 - 2 / L));
  let device = Math.min(P, Math.max(0, Math.floor(estimate / B) * B));
  while (device > 0 && !fits(device)) device -= B;
  while (device + B < P && fits(device + B)) device += B;
  return { tokens: device, stagingBytes: staging(device) };
}

function prefillCost(input: PlacementInput, overflowPerGpu: number, perTokenKv: number) {
  const { shape, context: N, gpus, rates } = input;
  const embed = shape.vocabSize * shape.hiddenSize * (shape.tieWordEmbeddings ? 1 : 2);
  const gemmFlops = 2 * (parameterCount(shape) - embed) * N;
  const attentionFlops =
    2 * shape.numHiddenLayers * shape.numAttentionHeads * shape.headDim * N * N;
  // Chunk c (of `chunks`) attends to every earlier position; the host tier holds the oldest
  // positions, so the host-held part grows to overflowPerGpu and then stays: chunks that start
  // past the GPU tier each stream what the host holds at that point.
  const chunk = input.capacity?.chunkRows ?? CUDA_PREFILL_CHUNK_ROWS;
  const chunks = Math.ceil(N / chunk);
  const gpuTokensPerGpu = Math.ceil(N / gpus) - overflowPerGpu;
  let hostTokenChunks = 0;
  for (let c = 0; c < chunks; c++) {
    const before = Math.ceil((c * chunk) / gpus); // this GPU's share of earlier positions
    hostTokenChunks += Math.max(0, Math.min(overflowPerGpu, before - gpuTokensPerGpu));
  }
  const hostToGpuBytesPerGpu = hostTokenChunks * perTokenKv;
  const out: Placement["prefill"] = { gemmFlops, attentionFlops, hostToGpuBytesPerGpu };
  if (rates) {
    const compute =
      gemmFlops / gpus / (rates.gemmTflops * 1e12) +
      attentionFlops / gpus / (rates.attentionTflops * 1e12);
    const copies = hostToGpuBytesPerGpu / (rates.hostLinkGBps * 1e9);
    out.seconds = { compute, copies, total: Math.max(compute, copies) };
  }
  return out;
}

/** Rates from a JSON object (a GPU check's `rates` line, or a file of the same fields). */
export function parseRates(value: unknown, source: string): Rates {
  const o = (value ?? {}) as Record<string, unknown>;
  const need = ["gemmTflops", "attentionTflops", "hbmGBps", "hostLinkGBps"] as const;
  for (const k of need) {
    if (typeof o[k] !== "number" || !(o[k] > 0)) {
      throw new InvalidInputError(`rates from ${source}: '${k}' must be a positive number`);
    }
  }
  return {
    source: typeof o.source === "string" ? o.source : source,
    gemmTflops: o.gemmTflops as number,
    attentionTflops: o.attentionTflops as number,
    hbmGBps: o.hbmGBps as number,
    hostLinkGBps: o.hostLinkGBps as number,
  };
}

const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(2)} GiB`;
const besides = (base: MemoryPlan) =>
  `weights ${gib(base.weights)} + reserve ${gib(base.activations + base.fixed)}`;

/** 4194304 -> "4M", 1536 -> "1.5K", 2023569 -> "2,023,569". */
export function fmtTokens(n: number): string {
  if (n >= 2 ** 20 && n % 2 ** 14 === 0) return `${n / 2 ** 20}M`;
  if (n >= 2 ** 10 && n % 2 ** 9 === 0) return `${n / 2 ** 10}K`;
  return n.toLocaleString("en-US");
}
