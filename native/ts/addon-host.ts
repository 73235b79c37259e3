// The N-API host: native/build/ul_addon.node (built by native/build.mjs where nvcc and a GPU are
// present, or with UL_BUILD_ADDON=1) wrapped as a NativeHost. The addon throws Errors carrying the
// ul_status in `status`; this file turns them into core's typed errors.

import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { NotAvailableError } from "../../core/errors.ts";
import type {
  BackendInfo,
  DtypeCode,
  EngineConfig,
  KvTiers,
  MemoryReport,
  NativeEngine,
  NativeHost,
  NativePagedEngine,
  NativeStepItem,
} from "./abi.ts";
import { parseBackendInfo, statusError } from "./abi.ts";
import { elfProblem } from "./elf-check.ts";

/** Where `npm run build` puts the addon. */
export const BUILT_ADDON_PATH = fileURLToPath(new URL("../build/ul_addon.node", import.meta.url));

/** The addon this process loads: UL_ADDON_PATH when set (an image or a test), else the built one. */
export function addonPath(env: Record<string, string | undefined> = process.env): string {
  return env.UL_ADDON_PATH ? resolve(env.UL_ADDON_PATH) : BUILT_ADDON_PATH;
}

type Handle = object;
interface Addon {
  backendCompiled(kind: number): boolean;
  /** With deviceBlocks (ABI 4): the _tiered create; blockTokens = totalBlocks = 0 for the single form. */
  create(
    config: EngineConfig,
    blockTokens?: number,
    totalBlocks?: number,
    deviceBlocks?: number,
  ): Handle;
  stepAsync(h: Handle, items: readonly NativeStepItem[]): Promise<Float32Array | null>;
  copyBlocks(h: Handle, pairs: Int32Array): void;
  exportKvPaged(
    h: Handle,
    table: Int32Array,
    start: number,
    end: number,
    dtype: number,
    bytes: number,
  ): Uint8Array;
  importKvPaged(
    h: Handle,
    table: Int32Array,
    start: number,
    bytes: Uint8Array,
    tokens: number,
    dtype: number,
  ): void;
  setTensor(
    h: Handle,
    name: string,
    shape: number[],
    data: Float32Array | Uint16Array,
    dtype: number,
  ): void;
  ready(h: Handle): void;
  forward(h: Handle, tokens: Int32Array, wantLogits: boolean): Float32Array | null;
  forwardAsync(h: Handle, tokens: Int32Array, wantLogits: boolean): Promise<Float32Array | null>;
  sample(h: Handle, temperature: number, seed: bigint): number;
  position(h: Handle): number;
  truncate(h: Handle, position: number): void;
  exportKv(h: Handle, start: number, end: number, dtype: number, bytes: number): Uint8Array;
  importKv(h: Handle, bytes: Uint8Array, tokens: number, dtype: number): void;
  memory(h: Handle): MemoryReport;
  /** Absent in an addon built before ABI 4. */
  memoryTiers?(h: Handle): KvTiers;
  backendInfo(h: Handle): string;
  destroy(h: Handle): void;
}

/** An addon error carrying a ul_status as core's typed error; anything else unchanged. */
function typed(err: unknown): unknown {
  const status = (err as { status?: unknown }).status;
  return typeof status === "number" ? statusError(status, (err as Error).message) : err;
}

/** Calls into the addon, rethrowing its status errors as typed errors. */
function call<T>(f: () => T): T {
  try {
    return f();
  } catch (err) {
    throw typed(err);
  }
}

const cached = new Map<string, NativeHost>();

/** null when the addon at `path` exists and loads, else a sentence naming what is wrong. */
export function addonUnavailableReason(path = addonPath()): string | null {
  if (!existsSync(path)) {
    return `the native addon is not built (${path}); it is built where nvcc and a GPU are present, or with UL_BUILD_ADDON=1 npm run build`;
  }
  try {
    loadAddonHost(path);
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * Loads the addon at `path` once per process. A file that is there but cannot be loaded (truncated,
 * built for another Node ABI, libcudart missing) is a NotAvailableError naming the loader's reason,
 * so `--runtime auto` falls back past it instead of failing.
 */
export function loadAddonHost(path = addonPath()): NativeHost {
  let host = cached.get(path);
  if (!host) {
    if (!existsSync(path)) throw new NotAvailableError(`the native addon is not built (${path})`);
    const broken = elfProblem(path);
    if (broken) throw new NotAvailableError(`the native addon ${path} cannot be loaded: ${broken}`);
    let addon: Addon;
    try {
      addon = createRequire(import.meta.url)(path) as Addon;
    } catch (err) {
      const why = ((err as Error).message ?? String(err)).split("\n")[0];
      throw new NotAvailableError(`the native addon ${path} cannot be loaded: ${why}`);
    }
    host = {
      name: "addon",
      backendCompiled: (kind) => addon.backendCompiled(kind),
      tiered: typeof addon.memoryTiers === "function",
      create: (config, deviceBlocks) =>
        new AddonEngine(
          addon,
          call(() =>
            deviceBlocks === undefined
              ? addon.create(config)
              : addon.create(config, 0, 0, deviceBlocks),
          ),
        ),
      createPaged: (config, blockTokens, totalBlocks, deviceBlocks) =>
        new AddonEngine(
          addon,
          call(() =>
            deviceBlocks === undefined
              ? addon.create(config, blockTokens, totalBlocks)
              : addon.create(config, blockTokens, totalBlocks, deviceBlocks),
          ),
        ),
    };
    cached.set(path, host);
  }
  return host;
}

/** Either form of engine: the C ABI refuses the calls of the other form (invalid_state). */
class AddonEngine implements NativeEngine, NativePagedEngine {
  readonly #a: Addon;
  readonly #h: Handle;

  constructor(addon: Addon, handle: Handle) {
    this.#a = addon;
    this.#h = handle;
  }

  setTensor(
    name: string,
    shape: number[],
    data: Float32Array | Uint16Array,
    dtype: DtypeCode,
  ): void {
    call(() => this.#a.setTensor(this.#h, name, shape, data, dtype));
  }
  ready(): void {
    call(() => this.#a.ready(this.#h));
  }
  forward(tokens: Int32Array, wantLogits: boolean): Float32Array | null {
    return call(() => this.#a.forward(this.#h, tokens, wantLogits));
  }
  async forwardAsync(tokens: Int32Array, wantLogits: boolean): Promise<Float32Array | null> {
    try {
      return await call(() => this.#a.forwardAsync(this.#h, tokens, wantLogits));
    } catch (err) {
      throw typed(err);
    }
  }
  sample(temperature: number, seed: bigint): number {
    return call(() => this.#a.sample(this.#h, temperature, seed));
  }
  position(): number {
    return call(() => this.#a.position(this.#h));
  }
  truncate(position: number): void {
    call(() => this.#a.truncate(this.#h, position));
  }
  exportKv(start: number, end: number, dtype: DtypeCode, bytes: number): Uint8Array {
    return call(() => this.#a.exportKv(this.#h, start, end, dtype, bytes));
  }
  importKv(bytes: Uint8Array, tokens: number, dtype: DtypeCode): void {
    call(() => this.#a.importKv(this.#h, bytes, tokens, dtype));
  }
  async step(items: readonly NativeStepItem[]): Promise<Float32Array | null> {
    try {
      return await call(() => this.#a.stepAsync(this.#h, items));
    } catch (err) {
      throw typed(err);
    }
  }
  copyBlocks(pairs: Int32Array): void {
    call(() => this.#a.copyBlocks(this.#h, pairs));
  }
  exportKvPaged(
    table: Int32Array,
    start: number,
    end: number,
    dtype: DtypeCode,
    bytes: number,
  ): Uint8Array {
    return call(() => this.#a.exportKvPaged(this.#h, table, start, end, dtype, bytes));
  }
  importKvPaged(
    table: Int32Array,
    start: number,
    bytes: Uint8Array,
    tokens: number,
    dtype: DtypeCode,
  ): void {
    call(() => this.#a.importKvPaged(this.#h, table, start, bytes, tokens, dtype));
  }
  memory(): MemoryReport {
    return call(() => this.#a.memory(this.#h));
  }
  memoryTiers(): KvTiers {
    const tiers = this.#a.memoryTiers;
    if (!tiers)
      throw new NotAvailableError(
        "this build of the native addon has no KV tiers (ABI 4); rebuild it",
      );
    return call(() => tiers(this.#h));
  }
  backendInfo(): BackendInfo {
    return parseBackendInfo(call(() => this.#a.backendInfo(this.#h)));
  }
  destroy(): void {
    this.#a.destroy(this.#h);
  }
}
