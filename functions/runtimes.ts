// The composition root for runtimes: every runtime this build has, registered once. core never
// imports a runtime; callers (CLI, model function) pick one here by name or "auto" (highest
// priority that is available on this machine).
//
// Priorities: reference 0 (plain TypeScript, slowest, always available). Each runtime's engineer
// adds its line with its own priority.
import { referenceRuntimeFactory } from "../core/engine/reference-runtime.ts";
import { RuntimeRegistry } from "../core/engine/registry.ts";
import { cudaRuntimeFactory } from "../native/ts/cuda-runtime.ts";
import { nativeWasmRuntimeFactory } from "../native/ts/wasm-runtime.ts";
import { wasmRuntimeFactory } from "../wasm/src/runtime.ts";

export const runtimes = new RuntimeRegistry();
runtimes.register(referenceRuntimeFactory);
runtimes.register(wasmRuntimeFactory); // priority 10: AssemblyScript SIMD, CPU
runtimes.register(nativeWasmRuntimeFactory); // priority 5: native host engine, C++ reference kernels in WebAssembly
runtimes.register(cudaRuntimeFactory); // priority 100: native host engine + CUDA kernels (N-API addon, GPU)
