// "cuda": the native host engine with the CUDA kernels, through the N-API addon. Where the addon is
// not built, was built without nvcc, or no GPU is visible, the factory reports why and `create`
// fails with NotAvailableError: the same shape as a working runtime, so nothing else checks.

import type { PagedRuntime, PagedRuntimeOptions } from "../../core/engine/paged-runtime.ts";
import type { RuntimeFactory, RuntimeOptions } from "../../core/engine/registry.ts";
import type { Runtime } from "../../core/engine/runtime.ts";
import { NotAvailableError } from "../../core/errors.ts";
import { Backend, Dtype, type NativeHost } from "./abi.ts";
import { addonUnavailableReason, loadAddonHost } from "./addon-host.ts";
import { createNativePagedRuntime } from "./native-paged-runtime.ts";
import {
  createNativeRuntime,
  type NativeRuntimeSpec,
  type NativeTierOptions,
} from "./native-runtime.ts";

export const CUDA_SPEC: NativeRuntimeSpec = {
  name: "cuda",
  backend: Backend.cuda,
  kernels: "cuda",
  kvDtypes: ["bf16", "fp8-e4m3"],
  weightTransfer: "bf16",
  // bf16 KV of Llama-3.1-8B is 128 KiB per position: 768K positions = 96 GiB, which fits beside
  // 15 GiB of weights on an H200 (1M positions = 128 GiB does not; fp8 KV holds 1M in 64 GiB).
  defaultMaxPositions: 768 * 1024,
  maxChunk: 4096,
  callTokens: 4096,
};

/**
 * Asks the engine itself: a one-layer engine on the CUDA backend is created and destroyed. Returns
 * null when that works, else the typed error (NotAvailableError "no CUDA device: ..." on a machine
 * with no GPU, or "built without CUDA" for an addon linked with the stub).
 */
export function probeCudaError(host: NativeHost): Error | null {
  if (!host.backendCompiled(Backend.cuda)) {
    return new NotAvailableError(
      "the native addon was built without CUDA (nvcc was missing at build time)",
    );
  }
  try {
    host
      .create({
        hiddenSize: 128,
        intermediateSize: 128,
        numLayers: 1,
        numHeads: 1,
        numKvHeads: 1,
        headDim: 128,
        vocabSize: 8,
        tieWordEmbeddings: true,
        rmsNormEps: 1e-5,
        rotaryDim: 128,
        invFreq: new Float64Array(64).fill(1),
        attentionScaling: 1,
        maxPositions: 16,
        kvDtype: Dtype.bf16,
        backend: Backend.cuda,
        maxChunk: 16,
      })
      .destroy();
    return null;
  } catch (err) {
    return err as Error;
  }
}

/** probeCudaError's message, or null. */
export function probeCuda(host: NativeHost): string | null {
  return probeCudaError(host)?.message ?? null;
}

let reason: string | null | undefined;

export async function cudaUnavailableReason(): Promise<string | null> {
  if (reason === undefined) {
    reason = addonUnavailableReason() ?? probeCuda(loadAddonHost());
  }
  return reason;
}

export async function createCudaRuntime(
  options: RuntimeOptions & NativeTierOptions,
): Promise<Runtime> {
  const why = await cudaUnavailableReason();
  if (why !== null) throw new NotAvailableError(`runtime 'cuda' is not available: ${why}`);
  return createNativeRuntime(loadAddonHost(), CUDA_SPEC, options);
}

/** The paged form (continuous batching): the step runs on the addon's worker thread. */
export async function createPagedCudaRuntime(
  options: PagedRuntimeOptions & NativeTierOptions,
): Promise<PagedRuntime> {
  const why = await cudaUnavailableReason();
  if (why !== null) throw new NotAvailableError(`runtime 'cuda' is not available: ${why}`);
  return createNativePagedRuntime(loadAddonHost(), CUDA_SPEC, options);
}

/** Registry entry: highest priority where it is available. */
export const cudaRuntimeFactory: RuntimeFactory = {
  name: "cuda",
  priority: 100,
  unavailableReason: cudaUnavailableReason,
  create: createCudaRuntime,
  createPaged: createPagedCudaRuntime,
};
