// The emscripten host: native/build/wasm/ul_engine.cjs (built by native/build.mjs from the host
// engine + reference kernels) wrapped as a NativeHost. Thin: copies arguments into the module's
// heap, calls the C ABI, copies results out, turns statuses into typed errors.

import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { InvalidInputError, NotAvailableError } from "../../core/errors.ts";
import {
  type BackendInfo,
  type DtypeCode,
  type EngineConfig,
  type KvTiers,
  type MemoryReport,
  type NativeEngine,
  type NativeHost,
  type NativePagedEngine,
  type NativeStepItem,
  parseBackendInfo,
  Status,
  statusError,
} from "./abi.ts";

export const WASM_MODULE_PATH = fileURLToPath(
  new URL("../build/wasm/ul_engine.cjs", import.meta.url),
);

// The emscripten Module: exported C functions (i64 arguments split into two i32, low then high)
// and the heap views (replaced when memory grows, so always read them from the module).
interface EmModule {
  HEAPU8: Uint8Array;
  HEAP32: Int32Array;
  HEAPU32: Uint32Array;
  HEAPF32: Float32Array;
  HEAPF64: Float64Array;
  UTF8ToString(ptr: number): string;
  stringToUTF8(s: string, ptr: number, max: number): void;
  lengthBytesUTF8(s: string): number;
  _malloc(n: number): number;
  _free(p: number): void;
  _ul_backend_compiled(kind: number): number;
  _ul_engine_create(cfg: number, out: number): number;
  _ul_engine_destroy(e: number): void;
  _ul_engine_last_error(e: number): number;
  _ul_engine_set_tensor(
    e: number,
    name: number,
    dt: number,
    shape: number,
    nd: number,
    data: number,
  ): number;
  _ul_engine_ready(e: number): number;
  _ul_engine_forward(e: number, tokens: number, n: number, logits: number): number;
  _ul_engine_sample(e: number, t: number, seedLo: number, seedHi: number, out: number): number;
  _ul_engine_position(e: number): number;
  _ul_engine_truncate(e: number, p: number): number;
  _ul_engine_export_kv(
    e: number,
    s: number,
    end: number,
    dt: number,
    out: number,
    bytes: number,
  ): number;
  _ul_engine_import_kv(e: number, b: number, n: number, tokens: number, dt: number): number;
  _ul_engine_create_paged(
    cfg: number,
    blockTokens: number,
    totalBlocks: number,
    out: number,
  ): number;
  _ul_engine_create_tiered(cfg: number, deviceBlocks: number, out: number): number;
  _ul_engine_create_paged_tiered(
    cfg: number,
    blockTokens: number,
    totalBlocks: number,
    deviceBlocks: number,
    out: number,
  ): number;
  _ul_engine_step(e: number, n: number, items: number, logits: number): number;
  _ul_engine_copy_blocks(e: number, n: number, pairs: number): number;
  _ul_engine_export_kv_paged(
    e: number,
    table: number,
    nBlocks: number,
    s: number,
    end: number,
    dt: number,
    out: number,
    bytes: number,
  ): number;
  _ul_engine_import_kv_paged(
    e: number,
    table: number,
    nBlocks: number,
    s: number,
    b: number,
    n: number,
    tokens: number,
    dt: number,
  ): number;
  _ul_engine_memory(e: number, out: number): number;
  _ul_engine_memory_tiers(e: number, out: number): number;
  _ul_engine_backend_info(e: number, buf: number, size: number): number;
  _ul_wasm_config_layout(out: number): void;
  _ul_wasm_step_item_layout(out: number): void;
}

let loading: Promise<NativeHost> | null = null;

/** An int32 argument: anything else would wrap on its way into the module. */
function isInt32(v: number): boolean {
  return Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31;
}

/** Why the module cannot load here, or null. */
export function wasmUnavailableReason(): string | null {
  if (!existsSync(WASM_MODULE_PATH)) {
    return `the emscripten build of the native core is missing (${WASM_MODULE_PATH}); install emscripten and run \`npm run build\``;
  }
  return null;
}

/** Loads the module once per process. */
export function loadWasmHost(): Promise<NativeHost> {
  const reason = wasmUnavailableReason();
  if (reason) return Promise.reject(new NotAvailableError(reason));
  loading ??= (async () => {
    const require = createRequire(import.meta.url);
    const factory = require(WASM_MODULE_PATH) as (o: {
      wasmBinary: Uint8Array;
    }) => Promise<EmModule>;
    // Passing the bytes in: emscripten 3.1.6 would otherwise fetch() a file path, which Node rejects.
    const wasmBinary = readFileSync(WASM_MODULE_PATH.replace(/\.cjs$/, ".wasm"));
    return new WasmHost(await factory({ wasmBinary }));
  })();
  return loading;
}

class WasmHost implements NativeHost {
  readonly name = "native-wasm";
  readonly tiered = true;
  readonly #m: EmModule;
  readonly #layout: Int32Array; // sizeof(ul_config), then field offsets (wasm_layout.cpp)
  readonly #itemLayout: Int32Array; // sizeof(ul_step_item), then field offsets

  constructor(m: EmModule) {
    this.#m = m;
    const p = m._malloc(17 * 4);
    m._ul_wasm_config_layout(p);
    this.#layout = m.HEAP32.slice(p >> 2, (p >> 2) + 17);
    m._ul_wasm_step_item_layout(p);
    this.#itemLayout = m.HEAP32.slice(p >> 2, (p >> 2) + 7);
    m._free(p);
  }

  backendCompiled(backend: number): boolean {
    return this.#m._ul_backend_compiled(backend) === 1;
  }

  create(config: EngineConfig, deviceBlocks?: number): NativeEngine {
    return this.#create(config, null, deviceBlocks);
  }

  createPaged(
    config: EngineConfig,
    blockTokens: number,
    totalBlocks: number,
    deviceBlocks?: number,
  ): NativePagedEngine {
    return this.#create(config, [blockTokens, totalBlocks], deviceBlocks);
  }

  /** ul_engine_create, or ul_engine_create_paged with [blockTokens, totalBlocks]; their _tiered
   *  forms with deviceBlocks. */
  #create(
    config: EngineConfig,
    pool: [number, number] | null,
    deviceBlocks: number | undefined,
  ): WasmEngine {
    if (deviceBlocks !== undefined && !isInt32(deviceBlocks)) {
      throw new InvalidInputError(`deviceBlocks must be an integer, not ${deviceBlocks}`);
    }
    const m = this.#m;
    const L = this.#layout;
    const cfg = m._malloc(L[0]);
    const inv = m._malloc(config.invFreq.length * 8);
    const out = m._malloc(4);
    try {
      m.HEAPF64.set(config.invFreq, inv >> 3);
      const i32 = (field: number, v: number) => {
        m.HEAP32[(cfg + L[field]) >> 2] = v;
      };
      const f32 = (field: number, v: number) => {
        m.HEAPF32[(cfg + L[field]) >> 2] = v;
      };
      i32(1, config.hiddenSize);
      i32(2, config.intermediateSize);
      i32(3, config.numLayers);
      i32(4, config.numHeads);
      i32(5, config.numKvHeads);
      i32(6, config.headDim);
      i32(7, config.vocabSize);
      i32(8, config.tieWordEmbeddings ? 1 : 0);
      f32(9, config.rmsNormEps);
      i32(10, config.rotaryDim);
      i32(11, inv);
      f32(12, config.attentionScaling);
      i32(13, config.maxPositions);
      i32(14, config.kvDtype);
      i32(15, config.backend);
      i32(16, config.maxChunk);
      const tiered = deviceBlocks !== undefined;
      const st = pool
        ? tiered
          ? m._ul_engine_create_paged_tiered(cfg, pool[0], pool[1], deviceBlocks, out)
          : m._ul_engine_create_paged(cfg, pool[0], pool[1], out)
        : tiered
          ? m._ul_engine_create_tiered(cfg, deviceBlocks, out)
          : m._ul_engine_create(cfg, out);
      if (st !== Status.ok) throw statusError(st, m.UTF8ToString(m._ul_engine_last_error(0)));
      return new WasmEngine(m, m.HEAP32[out >> 2], config.vocabSize, this.#itemLayout);
    } finally {
      m._free(cfg);
      m._free(inv);
      m._free(out);
    }
  }
}

/** Either form of engine: the C ABI refuses the calls of the other form (invalid_state). */
class WasmEngine implements NativeEngine, NativePagedEngine {
  readonly #m: EmModule;
  #e: number;
  readonly #vocab: number;
  readonly #itemLayout: Int32Array;

  constructor(m: EmModule, e: number, vocab: number, itemLayout: Int32Array) {
    this.#m = m;
    this.#e = e;
    this.#vocab = vocab;
    this.#itemLayout = itemLayout;
  }

  #check(st: number): void {
    if (st !== Status.ok)
      throw statusError(st, this.#m.UTF8ToString(this.#m._ul_engine_last_error(this.#e)));
  }

  /** Copies `bytes` into a fresh heap block; the caller frees it. */
  #copyIn(bytes: Uint8Array): number {
    const p = this.#m._malloc(Math.max(bytes.byteLength, 1));
    this.#m.HEAPU8.set(bytes, p);
    return p;
  }

  #copyInts(ints: Int32Array): number {
    return this.#copyIn(new Uint8Array(ints.buffer, ints.byteOffset, ints.byteLength));
  }

  async step(items: readonly NativeStepItem[]): Promise<Float32Array | null> {
    const m = this.#m;
    const L = this.#itemLayout;
    const wanted = items.filter((it) => it.logits).length;
    const blocks: number[] = [];
    const arr = m._malloc(Math.max(items.length, 1) * L[0]);
    const lp = wanted ? m._malloc(wanted * this.#vocab * 4) : 0;
    try {
      items.forEach((it, i) => {
        const tp = this.#copyInts(it.tokens);
        blocks.push(tp);
        const bp = this.#copyInts(it.table);
        blocks.push(bp);
        const at = (field: number) => (arr + i * L[0] + L[field]) >> 2;
        m.HEAP32[at(1)] = tp;
        m.HEAP32[at(2)] = it.tokens.length;
        m.HEAP32[at(3)] = it.start;
        m.HEAP32[at(4)] = bp;
        m.HEAP32[at(5)] = it.table.length;
        m.HEAP32[at(6)] = it.logits ? 1 : 0;
      });
      this.#check(m._ul_engine_step(this.#e, items.length, arr, lp));
      return wanted ? m.HEAPF32.slice(lp >> 2, (lp >> 2) + wanted * this.#vocab) : null;
    } finally {
      for (const p of blocks) m._free(p);
      m._free(arr);
      if (lp) m._free(lp);
    }
  }

  copyBlocks(pairs: Int32Array): void {
    const p = this.#copyInts(pairs);
    try {
      this.#check(this.#m._ul_engine_copy_blocks(this.#e, pairs.length / 2, p));
    } finally {
      this.#m._free(p);
    }
  }

  exportKvPaged(
    table: Int32Array,
    start: number,
    end: number,
    dtype: DtypeCode,
    n: number,
  ): Uint8Array {
    const m = this.#m;
    const tp = this.#copyInts(table);
    const p = m._malloc(Math.max(n, 1));
    try {
      this.#check(m._ul_engine_export_kv_paged(this.#e, tp, table.length, start, end, dtype, p, n));
      return m.HEAPU8.slice(p, p + n);
    } finally {
      m._free(p);
      m._free(tp);
    }
  }

  importKvPaged(
    table: Int32Array,
    start: number,
    bytes: Uint8Array,
    tokens: number,
    dtype: DtypeCode,
  ): void {
    const m = this.#m;
    const tp = this.#copyInts(table);
    const p = this.#copyIn(bytes);
    try {
      this.#check(
        m._ul_engine_import_kv_paged(
          this.#e,
          tp,
          table.length,
          start,
          p,
          bytes.byteLength,
          tokens,
          dtype,
        ),
      );
    } finally {
      m._free(p);
      m._free(tp);
    }
  }

  setTensor(
    name: string,
    shape: number[],
    data: Float32Array | Uint16Array,
    dtype: DtypeCode,
  ): void {
    const m = this.#m;
    const nameBytes = m.lengthBytesUTF8(name) + 1;
    const np = m._malloc(nameBytes);
    const sp = m._malloc(shape.length * 8);
    const dp = this.#copyIn(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    try {
      m.stringToUTF8(name, np, nameBytes);
      // int64 shape: low word, high word (shapes are < 2^31).
      for (let i = 0; i < shape.length; i++) {
        m.HEAP32[(sp >> 2) + 2 * i] = shape[i];
        m.HEAP32[(sp >> 2) + 2 * i + 1] = 0;
      }
      this.#check(m._ul_engine_set_tensor(this.#e, np, dtype, sp, shape.length, dp));
    } finally {
      m._free(np);
      m._free(sp);
      m._free(dp);
    }
  }

  ready(): void {
    this.#check(this.#m._ul_engine_ready(this.#e));
  }

  forward(tokens: Int32Array, wantLogits: boolean): Float32Array | null {
    const m = this.#m;
    const tp = this.#copyIn(new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength));
    const lp = wantLogits ? m._malloc(this.#vocab * 4) : 0;
    try {
      this.#check(m._ul_engine_forward(this.#e, tp, tokens.length, lp));
      return wantLogits ? m.HEAPF32.slice(lp >> 2, (lp >> 2) + this.#vocab) : null;
    } finally {
      m._free(tp);
      if (lp) m._free(lp);
    }
  }

  sample(temperature: number, seed: bigint): number {
    const m = this.#m;
    const out = m._malloc(4);
    try {
      const lo = Number(seed & 0xffffffffn) | 0;
      const hi = Number((seed >> 32n) & 0xffffffffn) | 0;
      this.#check(m._ul_engine_sample(this.#e, temperature, lo, hi, out));
      return m.HEAP32[out >> 2];
    } finally {
      m._free(out);
    }
  }

  position(): number {
    return this.#m._ul_engine_position(this.#e);
  }

  truncate(position: number): void {
    this.#check(this.#m._ul_engine_truncate(this.#e, position));
  }

  exportKv(start: number, end: number, dtype: DtypeCode, n: number): Uint8Array {
    const m = this.#m;
    const p = m._malloc(Math.max(n, 1));
    try {
      this.#check(m._ul_engine_export_kv(this.#e, start, end, dtype, p, n));
      return m.HEAPU8.slice(p, p + n);
    } finally {
      m._free(p);
    }
  }

  importKv(bytes: Uint8Array, tokens: number, dtype: DtypeCode): void {
    const p = this.#copyIn(bytes);
    try {
      this.#check(this.#m._ul_engine_import_kv(this.#e, p, bytes.byteLength, tokens, dtype));
    } finally {
      this.#m._free(p);
    }
  }

  /** The `count` u64 fields a C call writes into a struct (ul_memory_report, ul_kv_tiers). */
  #u64s(fill: (e: number, out: number) => number, count: number): number[] {
    const m = this.#m;
    const p = m._malloc(count * 8);
    try {
      this.#check(fill(this.#e, p));
      return Array.from(
        { length: count },
        (_, i) => m.HEAPU32[(p >> 2) + 2 * i] + m.HEAPU32[(p >> 2) + 2 * i + 1] * 2 ** 32,
      );
    } finally {
      m._free(p);
    }
  }

  memory(): MemoryReport {
    const [weightBytes, kvBytes, activationBytes, deviceFree, deviceTotal] = this.#u64s(
      (e, p) => this.#m._ul_engine_memory(e, p),
      5,
    );
    return { weightBytes, kvBytes, activationBytes, deviceFree, deviceTotal };
  }

  memoryTiers(): KvTiers {
    const [blockTokens, deviceBlocks, hostBlocks, deviceKvBytes, hostKvBytes, stagingBytes] =
      this.#u64s((e, p) => this.#m._ul_engine_memory_tiers(e, p), 6);
    return { blockTokens, deviceBlocks, hostBlocks, deviceKvBytes, hostKvBytes, stagingBytes };
  }

  backendInfo(): BackendInfo {
    const m = this.#m;
    const size = m._ul_engine_backend_info(this.#e, 0, 0) + 1;
    const p = m._malloc(size);
    try {
      m._ul_engine_backend_info(this.#e, p, size);
      return parseBackendInfo(m.UTF8ToString(p));
    } finally {
      m._free(p);
    }
  }

  destroy(): void {
    if (this.#e) this.#m._ul_engine_destroy(this.#e);
    this.#e = 0;
  }
}
