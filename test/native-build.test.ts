// The native core's builds that need no GPU: every CUDA source compiles with nvcc for sm_90 and
// sm_80; the N-API addon links those objects with cudart and, on a machine without a GPU, the "cuda"
// runtime is a typed stub while the same addon runs the reference kernels through the same Runtime
// code as on a GPU (checked against the TypeScript reference runtime).
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import { RuntimeRegistry } from "../core/engine/registry.ts";
import { NotAvailableError } from "../core/errors.ts";
import { buildAddon, buildCudaObjects, CUDA_ARCHS } from "../native/build.mjs";
import { Backend } from "../native/ts/abi.ts";
import { loadAddonHost } from "../native/ts/addon-host.ts";
import { cudaRuntimeFactory, probeCuda } from "../native/ts/cuda-runtime.ts";
import { createNativeRuntime, engineConfig } from "../native/ts/native-runtime.ts";
import { NATIVE_WASM_SPEC } from "../native/ts/wasm-runtime.ts";
import { loadTestModel, SMALL_VOCAB } from "./support/models.ts";
import { haveNvcc, tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
const hasNvcc = tool("nvcc", haveNvcc(), "the CUDA compile check and the CUDA-linked addon");

describe.skipIf(!hasNvcc)("native CUDA build (nvcc, no GPU needed)", () => {
  const addonPath = join(root, "native/build/test-addon/ul_addon.node");

  beforeAll(async () => {
    await buildCudaObjects({ root });
    await buildAddon({ root, withCuda: true, out: addonPath });
  }, 600_000);

  it("compiles every CUDA source for sm_90 and sm_80", () => {
    const sources = readdirSync(join(root, "native/src/cuda")).filter((f) => f.endsWith(".cu"));
    expect(sources.length).toBeGreaterThanOrEqual(5);
    for (const cu of sources) {
      const obj = join(root, "native/build/cuda", cu.replace(/\.cu$/, ".o"));
      expect(existsSync(obj), obj).toBe(true);
      expect(statSync(obj).mtimeMs).toBeGreaterThanOrEqual(
        statSync(join(root, "native/src/cuda", cu)).mtimeMs,
      );
      // The fat binary names the architectures of its cubins.
      const text = readFileSync(obj).toString("latin1");
      for (const arch of CUDA_ARCHS) expect(text.includes(arch), `${cu}: ${arch}`).toBe(true);
    }
  });

  it("the addon links the CUDA backend and, without a GPU, reports a typed reason", async () => {
    const host = loadAddonHost(addonPath);
    expect(host.backendCompiled(Backend.cuda)).toBe(true);
    const why = probeCuda(host);
    if (why === null) return; // a GPU machine: the cuda runtime is available, nothing to stub
    expect(why).toMatch(/CUDA|device/i);
    // The registry skips the unavailable cuda runtime for "auto" and names it when asked directly.
    const reg = new RuntimeRegistry();
    reg.register(cudaRuntimeFactory);
    await expect(reg.pick("cuda")).rejects.toBeInstanceOf(NotAvailableError);
  });

  it("gpu-check.sh --build-only compiles the kernels and links ul_check with nvcc (cudart + dlopen)", () => {
    const build = join(root, "native/build/test-gpu-check");
    const r = spawnSync(join(root, "native/scripts/gpu-check.sh"), ["--build-only"], {
      cwd: root,
      encoding: "utf8",
      env: { ...process.env, UL_CHECK_BUILD: build },
    });
    expect(r.status, r.stderr.slice(-3000)).toBe(0);
    const bin = join(build, "ul_check");
    // The cuBLASLt search runs in the CUDA build without a GPU.
    const search = spawnSync(bin, ["cublaslt-search"], { encoding: "utf8" });
    expect(search.status, search.stderr).toBe(0);
    expect(JSON.parse(search.stdout).candidates[0]).toBe("libcublasLt.so.13");
    const info = spawnSync(bin, ["info", "--backend", "cuda"], { encoding: "utf8" });
    if (info.status === 0) {
      // A GPU machine: the GEMM that runs is named.
      expect(JSON.parse(info.stdout).gemm).toMatch(/^(cublaslt|own-wmma)$/);
    } else {
      expect(info.stderr).toMatch(/no CUDA device/);
    }
  }, 600_000);

  it("the addon host runs the reference kernels with the logits of the reference runtime", async () => {
    const model = await loadTestModel({ ...SMALL_VOCAB, rope: "yarn" });
    const addonRuntime = await createNativeRuntime(
      loadAddonHost(addonPath),
      { ...NATIVE_WASM_SPEC, name: "native-addon-reference" },
      { model, maxPositions: 64 },
    );
    const ref = await createReferenceRuntime({ model, maxPositions: 64 });
    const tokens = Int32Array.from({ length: 30 }, (_, i) => (i * 131) % 512);
    const a = await addonRuntime.forward(tokens);
    const b = await ref.forward(tokens);
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff = Math.max(diff, Math.abs(a[i] - b[i]));
    expect(diff).toBeLessThan(1e-4); // f32 kernels vs the f64-accumulating reference
    const engine = loadAddonHost(addonPath).create(
      engineConfig(model.config, NATIVE_WASM_SPEC, 16, "bf16"),
    );
    expect(engine.backendInfo?.()).toEqual({
      kernels: "reference",
      gemm: "reference",
      kvDtype: "bf16",
    });
    engine.destroy();
    const kv = await addonRuntime.exportKv(0, 30);
    expect(kv.byteLength).toBe((await ref.exportKv(0, 30)).byteLength);
    await addonRuntime.close();
    await ref.close();
  });

  it("runs forward on a worker thread: the engine refuses other calls meanwhile, close waits", async () => {
    const model = await loadTestModel({ ...SMALL_VOCAB, rope: "yarn" });
    const rt = await createNativeRuntime(
      loadAddonHost(addonPath),
      { ...NATIVE_WASM_SPEC, name: "native-addon-reference" },
      { model, maxPositions: 64 },
    );
    const tokens = Int32Array.from({ length: 40 }, (_, i) => (i * 17) % 512);
    // forward() queues the work before it returns its promise; the completion cannot run until the
    // event loop turns, so the engine is busy right now, deterministically.
    const running = rt.forward(tokens.subarray(0, 20));
    expect(() => rt.position).toThrow(/busy/);
    expect((await running).length).toBe(512);
    expect(rt.position).toBe(20);
    // close() during a forward: the engine is destroyed when the work completes, not under it.
    const second = rt.forward(tokens.subarray(20));
    await rt.close();
    expect((await second).length).toBe(512);
  });
});
