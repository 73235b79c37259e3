// The compiled kernels. On Node they are read from wasm/build/ (built by wasm/build.mjs); elsewhere
// (workerd, a browser) the host passes a WebAssembly.Module in WasmRuntimeOptions.wasmModule, so
// this path imports no node: module.
//
// Two builds of the same sources: ultralong-relaxed.wasm (relaxed SIMD: the GEMM's and attention's
// multiply-adds fused, wasm/assembly/simd.ts madd) and ultralong.wasm (plain SIMD128). Node picks
// the relaxed one where V8 validates it: Node 22 and later out of the box; Node 20 once V8's
// --experimental-wasm-relaxed-simd flag is on, which loading turns on (v8.setFlagsFromString, for
// this process only). ULTRALONG_WASM_SIMD=plain keeps the plain build (for A/B runs and tests).
import { NotAvailableError } from "../../core/errors.ts";
import { INITIAL_PAGES } from "./shard.mjs";

export type KernelBuild = "plain" | "relaxed";

/**
 * Where the build puts the product kernels, relative to this file. A function, not a constant:
 * workerd gives a bundled module no URL to resolve against, and `new URL` would throw as it loads.
 */
export function wasmUrl(build: KernelBuild = "plain"): URL {
  return new URL(
    build === "relaxed" ? "../build/ultralong-relaxed.wasm" : "../build/ultralong.wasm",
    import.meta.url,
  );
}

/** Whether this is Node (a file system, worker_threads). */
export function onNode(): boolean {
  return typeof process !== "undefined" && typeof process.versions?.node === "string";
}

/** Null when the kernels can be loaded here, else why not. */
export async function wasmUnavailableReason(): Promise<string | null> {
  if (typeof WebAssembly === "undefined") return "this JavaScript engine has no WebAssembly";
  if (!onNode()) return null;
  const { existsSync } = await import("node:fs");
  const { fileURLToPath } = await import("node:url");
  const path = fileURLToPath(wasmUrl());
  return existsSync(path) ? null : `${path} is not built (run npm run build)`;
}

/** Whether V8 here takes relaxed SIMD, turning its flag on where Node 20 has it off. */
async function relaxedSimdValidates(bytes: Uint8Array<ArrayBuffer>): Promise<boolean> {
  if (WebAssembly.validate(bytes)) return true;
  const v8 = await import("node:v8");
  v8.setFlagsFromString("--experimental-wasm-relaxed-simd");
  return WebAssembly.validate(bytes);
}

/** What a kernels module computes with, for RuntimeInfo.kernels. */
export function kernelsName(module: WebAssembly.Module): string {
  const memory = new WebAssembly.Memory({ initial: INITIAL_PAGES, maximum: 65536 });
  const e = new WebAssembly.Instance(module, { env: { memory } }).exports as {
    relaxed_simd?: () => number;
  };
  return e.relaxed_simd?.() === 1 ? "wasm-simd128+relaxed-madd" : "wasm-simd128";
}

let cached: Promise<WebAssembly.Module> | null = null;

/** The kernels module, compiled once per process (Node only; elsewhere pass it in). */
export function loadWasmModule(): Promise<WebAssembly.Module> {
  cached ??= (async () => {
    if (!onNode()) {
      throw new NotAvailableError(
        "the WASM kernels must be passed as options.wasmModule outside Node (no file system here)",
      );
    }
    const reason = await wasmUnavailableReason();
    if (reason !== null) throw new NotAvailableError(reason);
    const { readFile } = await import("node:fs/promises");
    const { existsSync } = await import("node:fs");
    const { fileURLToPath } = await import("node:url");
    const relaxed = wasmUrl("relaxed");
    if (process.env.ULTRALONG_WASM_SIMD !== "plain" && existsSync(fileURLToPath(relaxed))) {
      const bytes = await readFile(relaxed);
      if (await relaxedSimdValidates(bytes)) return WebAssembly.compile(bytes);
    }
    return WebAssembly.compile(await readFile(wasmUrl()));
  })();
  cached.catch(() => {
    cached = null;
  });
  return cached;
}
