// The compiled kernels. On Node they are read from wasm/build/ultralong.wasm (built by
// wasm/build.mjs); elsewhere (workerd, a browser) the host passes a WebAssembly.Module in
// WasmRuntimeOptions.wasmModule, so this path imports no node: module.
import { NotAvailableError } from "../../core/errors.ts";

/**
 * Where the build puts the product kernels, relative to this file. A function, not a constant:
 * workerd gives a bundled module no URL to resolve against, and `new URL` would throw as it loads.
 */
export function wasmUrl(): URL {
  return new URL("../build/ultralong.wasm", import.meta.url);
}

let cached: Promise<WebAssembly.Module> | null = null;

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
    return WebAssembly.compile(await readFile(wasmUrl()));
  })();
  cached.catch(() => {
    cached = null;
  });
  return cached;
}
