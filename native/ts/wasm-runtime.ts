// "native-wasm": the native host engine with the C++ reference kernels, compiled to WebAssembly by
// emscripten. It exists so the host code (layer loop, chunking, KV export/import) is tested on every
// machine; it is slow (scalar loops, one thread) and meant for small models.

import type { PagedRuntime, PagedRuntimeOptions } from "../../core/engine/paged-runtime.ts";
import type { RuntimeFactory, RuntimeOptions } from "../../core/engine/registry.ts";
import type { Runtime } from "../../core/engine/runtime.ts";
import { Backend } from "./abi.ts";
import { createNativePagedRuntime } from "./native-paged-runtime.ts";
import {
  createNativeRuntime,
  type NativeRuntimeSpec,
  type NativeTierOptions,
} from "./native-runtime.ts";
import { loadWasmHost, wasmUnavailableReason } from "./wasm-host.ts";

export const NATIVE_WASM_SPEC: NativeRuntimeSpec = {
  name: "native-wasm",
  backend: Backend.reference,
  kernels: "cpp-reference",
  kvDtypes: ["f32", "bf16", "f16", "fp8-e4m3"],
  weightTransfer: "f32",
  // wasm32 memory is at most 4 GiB; a small default leaves room for the weights.
  defaultMaxPositions: 16384,
  maxChunk: 0,
  callTokens: 256,
};

export async function createNativeWasmRuntime(
  options: RuntimeOptions & NativeTierOptions,
): Promise<Runtime> {
  return createNativeRuntime(await loadWasmHost(), NATIVE_WASM_SPEC, options);
}

/** The paged form: a KV pool of blocks (64 positions by default), reference kernels. */
export async function createPagedNativeWasmRuntime(
  options: PagedRuntimeOptions & NativeTierOptions,
): Promise<PagedRuntime> {
  return createNativePagedRuntime(await loadWasmHost(), NATIVE_WASM_SPEC, options);
}

/** Registry entry: available once native/build.mjs has built the module (needs emcc). */
export const nativeWasmRuntimeFactory: RuntimeFactory = {
  name: "native-wasm",
  priority: 5,
  unavailableReason: async () => wasmUnavailableReason(),
  create: createNativeWasmRuntime,
  createPaged: createPagedNativeWasmRuntime,
};
