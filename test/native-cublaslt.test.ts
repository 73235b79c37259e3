// Finding cuBLASLt (native/src/library_search.cpp) without a GPU: `ul_check cublaslt-search` from
// the dry-run build lists the candidates this environment gives and what dlopen said about each. A
// fake pip-wheel site-packages holds libcublasLt files: a junk one (dlopen must fail and say so,
// with its path) and a real shared object built here that exports cublasLtMatmul (it must load).
// Also: ul_engine_backend_info through the emscripten host (backendInfo()).
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { Backend } from "../native/ts/abi.ts";
import { engineConfig } from "../native/ts/native-runtime.ts";
import { loadWasmHost, wasmUnavailableReason } from "../native/ts/wasm-host.ts";
import { NATIVE_WASM_SPEC } from "../native/ts/wasm-runtime.ts";
import { loadTestModel } from "./support/models.ts";
import { tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
const haveGxx = tool(
  "g++",
  spawnSync("g++", ["--version"], { stdio: "ignore" }).status === 0,
  "the cuBLASLt search checks (ul_check)",
);

interface Search {
  candidates: string[];
  cublaslt: string | null;
  cublaslt_tried: { path: string; error: string }[];
}

describe.skipIf(!haveGxx)("cuBLASLt search (ul_check cublaslt-search)", () => {
  const bin = join(root, "native/build/gpu-check-dry/ul_check");
  const site = join(mkdtempSync(join(tmpdir(), "ul-site-")), "site-packages");
  const junk = join(site, "nvidia/cublas/lib/libcublasLt.so.12");
  const real = join(site, "nvidia/cu13/lib/libcublasLt.so.13");

  beforeAll(() => {
    const b = spawnSync(join(root, "native/scripts/gpu-check.sh"), ["--build-only", "--dry-run"], {
      cwd: root,
      encoding: "utf8",
    });
    expect(b.status, b.stderr).toBe(0);
    mkdirSync(join(site, "nvidia/cublas/lib"), { recursive: true });
    mkdirSync(join(site, "nvidia/cu13/lib"), { recursive: true });
    writeFileSync(junk, "not a shared object\n");
    const src = join(site, "fake.cpp");
    writeFileSync(src, 'extern "C" int cublasLtMatmul() { return 0; }\n');
    const cc = spawnSync("g++", ["-shared", "-fPIC", src, "-o", real], { encoding: "utf8" });
    expect(cc.status, cc.stderr).toBe(0);
  }, 300_000);

  function search(env: Record<string, string>): Search {
    const r = spawnSync(bin, ["cublaslt-search"], {
      encoding: "utf8",
      env: { PATH: process.env.PATH ?? "", HOME: "/nonexistent", ...env },
    });
    expect(r.status, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as Search;
  }

  it("lists the pip wheel folders of UL_PYTHON_SITE after the loader path, .so.13 before .so.12", () => {
    const s = search({ UL_PYTHON_SITE: site });
    expect(s.candidates.slice(0, 3)).toEqual([
      "libcublasLt.so.13",
      "libcublasLt.so.12",
      "libcublasLt.so",
    ]);
    const at13 = s.candidates.indexOf(real);
    const at12 = s.candidates.indexOf(junk);
    expect(at13).toBeGreaterThan(2);
    expect(at12).toBeGreaterThan(at13);
    // The fake loads, unless a real cuBLASLt earlier in the order (an installed toolkit) did.
    expect(s.candidates.slice(0, at13 + 1)).toContain(s.cublaslt);
    expect(s.cublaslt_tried.map((t) => t.path)).not.toContain(junk);
  });

  it("looks in CUDA_HOME before the site-packages, and finds a virtualenv's wheel without Python", () => {
    const base = mkdtempSync(join(tmpdir(), "ul-search-"));
    const cudaLib = join(base, "cuda/targets/x86_64-linux/lib/libcublasLt.so.13");
    const venvLib = join(
      base,
      "venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcublasLt.so.13",
    );
    for (const f of [cudaLib, venvLib]) {
      mkdirSync(join(f, ".."), { recursive: true });
      writeFileSync(f, "junk\n");
    }
    const s = search({
      CUDA_HOME: join(base, "cuda"),
      VIRTUAL_ENV: join(base, "venv"),
      UL_PYTHON_SITE: site,
    });
    const order = [cudaLib, real, venvLib].map((f) => s.candidates.indexOf(f));
    expect(order.every((i) => i > 2)).toBe(true);
    // CUDA_HOME, then UL_PYTHON_SITE (what gpu-check.sh passes), then the virtualenv.
    expect([...order].sort((a, b) => a - b)).toEqual(order);
  });

  it("tries UL_CUBLASLT_PATH first and reports a dlopen failure with its path and reason", () => {
    const s = search({ UL_CUBLASLT_PATH: junk, UL_PYTHON_SITE: site });
    expect(s.candidates[0]).toBe(junk);
    expect(s.cublaslt_tried[0].path).toBe(junk);
    expect(s.cublaslt_tried[0].error).toMatch(/too short|invalid ELF|not an ELF/);
    expect(s.cublaslt_tried[0].error).toContain(junk);
  });

  it("loads a library that exports cublasLtMatmul, and refuses one that does not", () => {
    expect(search({ UL_CUBLASLT_PATH: real })).toMatchObject({
      cublaslt: real,
      cublaslt_tried: [],
    });
    // libm is an ELF shared object without cuBLASLt's entry point: loaded, then refused.
    const libm = spawnSync("g++", ["-print-file-name=libm.so.6"], {
      encoding: "utf8",
    }).stdout.trim();
    const s = search({ UL_CUBLASLT_PATH: libm });
    expect(s.cublaslt_tried[0]).toEqual({ path: libm, error: "loaded but has no cublasLtMatmul" });
  });

  it("with no candidate but the missing explicit file, nothing loads and every try is listed", () => {
    const missing = join(site, "nope/libcublasLt.so.13");
    const s = search({ UL_CUBLASLT_PATH: missing });
    expect(s.cublaslt_tried[0].path).toBe(missing);
    expect(s.cublaslt_tried[0].error).toMatch(/No such file/);
    // Where no cuBLASLt is installed (this project's CI), every candidate failed and is listed.
    if (s.cublaslt === null) expect(s.cublaslt_tried.map((t) => t.path)).toEqual(s.candidates);
    else expect(s.candidates).toContain(s.cublaslt);
  });
});

const haveNativeWasm = tool(
  "native/build/wasm (emcc)",
  wasmUnavailableReason() === null,
  "backendInfo() through the emscripten host",
);

describe.skipIf(!haveNativeWasm)("ul_engine_backend_info through the emscripten host", () => {
  it("names the reference kernels, the reference GEMM and the KV dtype", async () => {
    const model = await loadTestModel();
    const host = await loadWasmHost();
    for (const [kv, name] of [
      ["f32", "f32"],
      ["bf16", "bf16"],
    ] as const) {
      const cfg = engineConfig(model.config, NATIVE_WASM_SPEC, 16, kv);
      expect(cfg.backend).toBe(Backend.reference);
      const engine = host.create(cfg);
      try {
        expect(engine.backendInfo?.()).toEqual({
          kernels: "reference",
          gemm: "reference",
          kvDtype: name,
        });
      } finally {
        engine.destroy();
      }
    }
  });
});
