// `--runtime auto` never hides a failed GPU build: it says what it picked and why each better
// runtime was skipped, and an addon that exists but cannot load (truncated, wrong ABI, libcudart
// missing) is a reason to fall back, not a crash. Asking for `cuda` by name refuses with one line.
// The model function reports the runtime, kernels and KV dtype on /readyz and /metrics.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { type RuntimeFactory, RuntimeRegistry } from "../core/engine/registry.ts";
import { NotAvailableError } from "../core/errors.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { startLocal } from "../functions/entries/local.ts";
import { elfProblem } from "../native/ts/elf-check.ts";
import { kernelsLine } from "../native/ts/native-runtime.ts";
import { runUltralong, scratchDir, testModelDir } from "./support/models.ts";
import { haveEmcc, tool } from "./support/tools.ts";

const stub = (name: string, priority: number, reason: () => Promise<string | null>) =>
  ({
    name,
    priority,
    unavailableReason: reason,
    create: () => Promise.reject(new Error("not used")),
  }) as RuntimeFactory;

describe("runtime registry: auto", () => {
  it("names every better runtime it skipped, and a probe that throws is skipped, not fatal", async () => {
    const reg = new RuntimeRegistry();
    reg.register(stub("gpu", 100, () => Promise.reject(new Error("dlopen: invalid ELF header"))));
    reg.register(stub("simd", 10, async () => "no SIMD here"));
    reg.register(stub("plain", 0, async () => null));
    const choice = await reg.choose("auto");
    expect(choice.factory.name).toBe("plain");
    expect(choice.skipped).toEqual([
      { name: "gpu", reason: "its availability check failed: dlopen: invalid ELF header" },
      { name: "simd", reason: "no SIMD here" },
    ]);
    await expect(reg.choose("gpu")).rejects.toBeInstanceOf(NotAvailableError);
    await expect(reg.choose("gpu")).rejects.toThrow(/runtime 'gpu' is not available: .*ELF/);
  });
});

describe("elfProblem: a shared object's headers against its size", () => {
  it("whole files pass; every truncation and non-ELF file is named, none reaches the loader", () => {
    const dir = scratchDir("elf");
    const whole = readFileSync(process.execPath);
    expect(elfProblem(process.execPath)).toBeNull();
    for (const n of [10, 100, 1000, 4096, 65536, whole.length >> 1, whole.length - 1]) {
      const f = join(dir, `cut-${n}`);
      writeFileSync(f, whole.subarray(0, n));
      expect(elfProblem(f), `cut at ${n}`).toMatch(/^(truncated|not an ELF)/);
    }
    const odd = Buffer.from(whole.subarray(0, 4096));
    odd.writeUInt16LE(32, 54); // e_phentsize: not the 56 bytes of an ELF64 program header
    writeFileSync(join(dir, "odd.node"), odd);
    expect(elfProblem(join(dir, "odd.node"))).toBe(
      "not a loadable ELF file (program header size 32)",
    );
    const text = join(dir, "text.node");
    writeFileSync(text, "#!/bin/sh\n");
    expect(elfProblem(text)).toBe("not an ELF shared object");
  });
});

describe("kernelsLine: what a native engine reports running", () => {
  it("names the GEMM backend and the cuBLASLt file that loaded, or the fallback", () => {
    expect(kernelsLine(undefined, "cuda")).toBe("cuda");
    expect(kernelsLine({ kernels: "reference", gemm: "reference", kvDtype: "f32" }, "x")).toBe(
      "cpp-reference",
    );
    const lib = "/site-packages/nvidia/cu13/lib/libcublasLt.so.13";
    expect(
      kernelsLine({ kernels: "cuda", gemm: "cublaslt", cublaslt: lib, kvDtype: "bf16" }, "cuda"),
    ).toBe(`cuda gemm=cublaslt ${lib}`);
    expect(
      kernelsLine(
        { kernels: "cuda", gemm: "cublaslt", cublaslt: lib, gemmOwnShapes: 2, kvDtype: "bf16" },
        "cuda",
      ),
    ).toBe(`cuda gemm=cublaslt ${lib} (own-wmma for 2 shapes cuBLASLt refused)`);
    expect(
      kernelsLine(
        { kernels: "cuda", gemm: "own-wmma", cublaslt: null, gemmForced: "own", kvDtype: "bf16" },
        "cuda",
      ),
    ).toBe("cuda gemm=own-wmma (forced: UL_GEMM=own)");
  });

  it.skipIf(!tool("emcc", haveEmcc(), "the native-wasm kernels line"))(
    "native-wasm's runtime info says cpp-reference (from the engine's own report)",
    async () => {
      const rt = await (await import("../functions/runtimes.ts")).runtimes
        .pick("native-wasm")
        .then(async (f) =>
          f.create({ model: await loadModelDir(await testModelDir()), maxPositions: 32 }),
        );
      expect(rt.info.kernels).toBe("cpp-reference");
      await rt.close();
    },
  );
});

describe("a native addon that exists but cannot load", () => {
  const dir = scratchDir("bad-addon");
  const truncated = join(dir, "ul_addon.node");
  // The first 4 KiB of a real shared object (or of any ELF): the loader refuses it.
  const real = ["native/build/ul_addon.node", process.execPath].find((p) => existsSync(p))!;
  writeFileSync(truncated, readFileSync(real).subarray(0, 4096));
  const env = { ...process.env, UL_ADDON_PATH: truncated };

  it("auto falls back past it and says why (generate --progress)", async () => {
    const model = await testModelDir();
    const r = await runUltralong(
      ["generate", "--model", model, "--prompt", "hi", "--max-tokens", "2", "--progress"],
      env,
    );
    expect(r.stderr).toMatch(
      new RegExp(`cuda skipped: the native addon ${truncated} cannot be loaded: `),
    );
    expect(r.status, r.stderr).toBe(0);
  });

  it("--runtime cuda refuses with one line naming the file and the loader's reason", async () => {
    const model = await testModelDir();
    const r = await runUltralong(
      ["generate", "--model", model, "--prompt", "hi", "--runtime", "cuda"],
      env,
    );
    expect(r.status).not.toBe(0);
    expect(r.stdout).toBe("");
    const lines = r.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /runtime 'cuda' is not available: the native addon .* cannot be loaded/,
    );
  });

  it("a missing addon is the 'not built' reason", async () => {
    const model = await testModelDir();
    const missing = await runUltralong(
      ["generate", "--model", model, "--prompt", "hi", "--runtime", "cuda"],
      { ...process.env, UL_ADDON_PATH: join(dir, "absent.node") },
    );
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toMatch(
      /runtime 'cuda' is not available: the native addon is not built/,
    );
  });
});

describe("startLocal's context", () => {
  it("refuses --max-positions beyond the model's max_position_embeddings, in one line", async () => {
    const dir = await testModelDir();
    const max = (await loadModelDir(dir)).config.maxPositionEmbeddings;
    await expect(
      startLocal({ modelDir: dir, runtime: "reference", store: null, maxPositions: max + 1 }),
    ).rejects.toThrow(
      `--max-positions ${max + 1} is beyond the model's context (max_position_embeddings ${max})`,
    );
  });
});

describe("the model function says what serves", () => {
  let close: (() => Promise<void>) | null = null;
  afterAll(() => close?.());

  it("/readyz and /metrics name the runtime, kernels and KV dtype", async () => {
    const server = await startLocal({
      modelDir: await testModelDir(),
      runtime: "wasm",
      threads: 1,
      store: null,
      maxPositions: 64,
      log: () => {},
    });
    close = server.close;
    expect(server.runtimeChoice).toBe("runtime wasm");
    const headers = { authorization: `Bearer ${server.metricsKey}` };
    const ready = await (await fetch(`${server.modelUrl}/readyz`, { headers })).json();
    // Node 20 validates relaxed SIMD once the loader turns V8's flag on (wasm/src/module.ts).
    const kernels = "wasm-simd128+relaxed-madd";
    expect(ready).toMatchObject({ runtime: "wasm", kernels, kv: { dtype: "f32" } });
    const metrics = await fetch(`${server.modelUrl}/metrics`, { headers });
    expect(await metrics.text()).toContain(
      `ul_model_runtime_info{kernels="${kernels}",kv_dtype="f32",runtime="wasm"} 1\n`,
    );
  });
});
