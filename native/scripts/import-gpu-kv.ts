// The CPU half of the GPU check's KV test. gpu-check.sh's kv-export stage (on the GPU machine, which
// has no Node) writes OUT/kv-export/: the test model, the prompt, the KV of its first `prefix`
// tokens exported by the engine (f32, core/kv/layout.ts), and that engine's next-token logits after
// importing the KV and running the rest. This imports the same KV into a CPU runtime here, runs the
// same remaining tokens and compares the logits: a KV written on the GPU continues here.
//
//   npx tsx native/scripts/import-gpu-kv.ts OUT [--runtime wasm|native-wasm]
//
// Prints one JSON line; exits 0 when the logits match within the export's stated tolerance
// (meta.json: 3e-2 normalised for a CUDA export, bf16 kernels against f32 ones; 1e-4 for the dry
// run's reference kernels), 1 when they do not, 2 on bad input.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { Runtime } from "../../core/engine/runtime.ts";
import { FormatError, InvalidInputError } from "../../core/errors.ts";
import { kvLayoutOf, kvPayloadBytes } from "../../core/kv/layout.ts";
import { loadModel } from "../../core/model/load.ts";
import { createNodeSha256 } from "../../core/node/hasher.ts";
import { DirectoryModelFiles } from "../../core/node/model-files.ts";
import { createWasmRuntime } from "../../wasm/src/runtime.ts";
import { createNativeWasmRuntime } from "../ts/wasm-runtime.ts";

/** OUT/kv-export/meta.json, written by gpu_check.py's kv-export stage. */
interface ExportMeta {
  model: string;
  kv: string;
  tokens: string;
  logits: string;
  reference?: string;
  prefix: number;
  n_tokens: number;
  export_dtype: "f32";
  backend: string;
  info: unknown;
  tolerance: number;
}

const RUNTIMES = {
  wasm: createWasmRuntime,
  "native-wasm": createNativeWasmRuntime,
} as const;
type RuntimeName = keyof typeof RUNTIMES;

function readMeta(dir: string): ExportMeta {
  let meta: ExportMeta;
  try {
    meta = JSON.parse(readFileSync(join(dir, "meta.json"), "utf8")) as ExportMeta;
  } catch (err) {
    throw new InvalidInputError(
      `${dir}/meta.json: not a gpu-check KV export (${(err as Error).message})`,
    );
  }
  const ints = [meta.prefix, meta.n_tokens];
  if (!ints.every(Number.isInteger) || meta.prefix < 1 || meta.prefix >= meta.n_tokens) {
    throw new FormatError(
      `${dir}/meta.json: prefix ${meta.prefix} must be in [1, n_tokens ${meta.n_tokens})`,
    );
  }
  if (meta.export_dtype !== "f32" || !(meta.tolerance > 0)) {
    throw new FormatError(`${dir}/meta.json: needs export_dtype "f32" and a positive tolerance`);
  }
  return meta;
}

/** Little-endian file contents as a typed array (copied: the file buffer may be unaligned). */
function readArray<T>(path: string, make: (b: ArrayBuffer) => T): T {
  const bytes = readFileSync(path);
  return make(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

/** max |got - want| / max |want| (NaN counts as infinitely far). */
function normalizedErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let err = 0;
  let ref = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    err = Number.isNaN(d) ? Number.POSITIVE_INFINITY : Math.max(err, d);
    ref = Math.max(ref, Math.abs(want[i]));
  }
  return err / ref;
}

function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

async function importGpuKv(out: string, runtimeName: RuntimeName) {
  const dir = join(out, "kv-export");
  const meta = readMeta(dir);
  const model = await loadModel(new DirectoryModelFiles(join(dir, meta.model)), {
    hasher: createNodeSha256,
  });
  const tokens = readArray(join(dir, meta.tokens), (b) => new Int32Array(b));
  const kv = new Uint8Array(readFileSync(join(dir, meta.kv)));
  const engineLogits = readArray(join(dir, meta.logits), (b) => new Float32Array(b));
  const want = kvPayloadBytes(kvLayoutOf(model.config, "f32"), meta.prefix);
  if (tokens.length !== meta.n_tokens || kv.byteLength !== want) {
    throw new FormatError(
      `${dir}: ${tokens.length} tokens and ${kv.byteLength} KV bytes; meta.json says ${meta.n_tokens} tokens, and ${meta.prefix} positions of f32 KV are ${want} bytes`,
    );
  }
  if (engineLogits.length !== model.config.vocabSize) {
    throw new FormatError(
      `${dir}/${meta.logits}: ${engineLogits.length} logits, vocab is ${model.config.vocabSize}`,
    );
  }
  const runtime: Runtime = await RUNTIMES[runtimeName]({
    model,
    kvDtype: "f32",
    maxPositions: meta.n_tokens + 16,
    threads: 1,
  });
  try {
    await runtime.importKv(kv, meta.prefix, "f32");
    const logits = await runtime.forward(tokens.subarray(meta.prefix));
    const err = normalizedErr(logits, engineLogits);
    const reference = meta.reference
      ? readArray(join(dir, meta.reference), (b) => new Float64Array(b))
      : null;
    return {
      runtime: runtimeName,
      export_backend: meta.backend,
      export_info: meta.info,
      prefix: meta.prefix,
      tokens: meta.n_tokens,
      normalized_err: err,
      tolerance: meta.tolerance,
      same_argmax: argmax(logits) === argmax(engineLogits),
      vs_float64_reference: reference ? normalizedErr(logits, reference) : null,
      ok: err <= meta.tolerance,
    };
  } finally {
    await runtime.close();
  }
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { runtime: { type: "string", default: "wasm" } },
  });
  const name = values.runtime as RuntimeName;
  if (positionals.length !== 1 || !(name in RUNTIMES)) {
    console.error(
      "usage: npx tsx native/scripts/import-gpu-kv.ts OUT [--runtime wasm|native-wasm]",
    );
    process.exit(2);
  }
  try {
    const result = await importGpuKv(positionals[0], name);
    console.log(JSON.stringify(result));
    process.exit(result.ok ? 0 : 1);
  } catch (err) {
    console.error(`import-gpu-kv: ${(err as Error).message}`);
    process.exit(2);
  }
}

await main();
