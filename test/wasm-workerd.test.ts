// The WASM runtime in the real workerd binary, single-threaded, on the product module
// (wasm/build/ultralong.wasm) given as a workerd wasm module: shard.mjs's glue loads with no TS
// loader and no node: module, and its logits equal the same runtime's in Node.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { ensureBuilt, WASM_FILE } from "../wasm/build.mjs";
import { createWasmRuntime } from "../wasm/src/runtime.ts";
import { startWorkerd, type WorkerdServer } from "./harness/workerd.ts";
import { SMALL_VOCAB, testModelDir } from "./support/models.ts";
import { relativeError, suiteTokens } from "./support/runtime-suite.ts";

const root = join(import.meta.dirname, "..");
const MODEL_FILES = ["config.json", "generation_config.json", "model.safetensors"];

/** The glue, bundled: the model from bindings (one per file), then the runtime's logits. */
const GLUE = `
import { loadModel } from "../core/model/load.ts";
import { createWasmRuntime } from "../wasm/src/runtime.ts";

export async function logits(request, env, wasmModule) {
  const names = ${JSON.stringify(MODEL_FILES)};
  const get = (f) => new Uint8Array(env[f.replaceAll(".", "_")]);
  const model = await loadModel({
    name: "bindings",
    list: async () => names,
    readBytes: async (f) => get(f),
    readText: async (f) => new TextDecoder().decode(get(f)),
    stat: async (f) => ({ size: get(f).byteLength, mtimeMs: 0 }),
    open: async (f) => ({ name: f, size: async () => get(f).byteLength, read: async (o, n) => get(f).slice(o, o + n) }),
  });
  const runtime = await createWasmRuntime({ model, threads: 1, maxPositions: 64, wasmModule });
  const { tokens } = await request.json();
  const out = await runtime.forward(Int32Array.from(tokens));
  return Response.json({ runtime: runtime.info.name, logits: Array.from(out) });
}
`;

// workerd compiles a wasm module only from a module of type wasm, never from bytes at run time.
const MAIN = `
import kernels from "ultralong.wasm";
import { logits } from "glue.js";
export default { fetch: (request, env) => logits(request, env, kernels) };
`;

let server: WorkerdServer;
let dir: string;

beforeAll(async () => {
  await ensureBuilt({ root });
  dir = await testModelDir(SMALL_VOCAB);
  const { build } = await import("esbuild");
  const bundle = await build({
    stdin: { contents: GLUE, resolveDir: import.meta.dirname, sourcefile: "glue.ts", loader: "ts" },
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    // Only reached on Node (module.ts, runtime.ts test onNode() first); workerd never loads them.
    external: ["node:*"],
    write: false,
    logLevel: "silent",
  });
  const file = (f: string) => new Uint8Array(readFileSync(join(dir, f)));
  const kernels = new Uint8Array(readFileSync(join(root, WASM_FILE)));
  server = await startWorkerd({
    modules: [
      { name: "main.js", type: "esModule", content: MAIN },
      { name: "glue.js", type: "esModule", content: bundle.outputFiles[0].text },
      { name: "ultralong.wasm", type: "wasm", content: kernels },
    ],
    bindings: Object.fromEntries(MODEL_FILES.map((f) => [f.replaceAll(".", "_"), file(f)])),
  });
}, 120_000);

afterAll(async () => {
  await server?.stop();
});

describe("wasm runtime in workerd", () => {
  it("runs on the product module and gives Node's logits", async () => {
    const model = await loadModelDir(dir);
    const tokens = suiteTokens(20, model.config.vocabSize);
    const res = await fetch(server.url, {
      method: "POST",
      body: JSON.stringify({ tokens: Array.from(tokens) }),
    });
    expect(res.status, server.logs()).toBe(200);
    const got = (await res.json()) as { runtime: string; logits: number[] };
    expect(got.runtime).toBe("wasm");
    const rt = await createWasmRuntime({ model, threads: 1, maxPositions: 64 });
    try {
      // The same kernels in another V8: only the rope table's f64 Math.cos/sin may differ in
      // the last bit, far below 1e-6 after rounding to f32.
      const want = await rt.forward(tokens);
      expect(relativeError(Float32Array.from(got.logits), want)).toBeLessThan(1e-6);
    } finally {
      await rt.close();
    }
  });
});
