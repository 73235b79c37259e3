// Builds the native core (ARCHITECTURE.md, native/). Steps, each skipped with a message when its tool
// is missing (under REQUIRE_ALL=1 a missing emcc or nvcc is an error):
//   1. emcc: the host engine + reference kernels -> native/build/wasm/ul_engine.{cjs,wasm}
//            (the "native-wasm" runtime; tests on machines with no GPU)
//   2. nvcc: every CUDA source compiled for sm_90 and sm_80 -> native/build/cuda/*.o (a compile
//            check here; linked into the addon where a GPU is present)
//   3. addon: the N-API addon native/build/ul_addon.node, only where nvcc and a GPU are present or
//            when UL_BUILD_ADDON=1 (reference kernels only when there is no nvcc)
// Environment (the only two names the build reads for the addon):
//   UL_BUILD_ADDON=1    build the addon even where no GPU is visible (a docker build has none)
//   UL_REQUIRE_ADDON=1  fail unless the addon is built WITH the CUDA kernels (the model image)
// Outputs are rebuilt only when a source is newer, so `npm test` pays for a build once.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";

const HOST_SOURCES = ["src/engine.cpp", "src/safetensors.cpp", "src/ref/ref_backend.cpp"];
export const CUDA_ARCHS = ["sm_90", "sm_80"];
const WASM_EXPORTS = [
  "malloc",
  "free",
  "ul_status_name",
  "ul_backend_compiled",
  "ul_engine_create",
  "ul_engine_create_paged",
  "ul_engine_create_tiered",
  "ul_engine_create_paged_tiered",
  "ul_engine_destroy",
  "ul_engine_last_error",
  "ul_engine_set_tensor",
  "ul_engine_ready",
  "ul_engine_forward",
  "ul_engine_sample",
  "ul_engine_position",
  "ul_engine_truncate",
  "ul_engine_export_kv",
  "ul_engine_import_kv",
  "ul_engine_step",
  "ul_engine_copy_blocks",
  "ul_engine_export_kv_paged",
  "ul_engine_import_kv_paged",
  "ul_engine_memory",
  "ul_engine_memory_tiers",
  "ul_engine_backend_info",
  "ul_wasm_config_layout",
  "ul_wasm_step_item_layout",
];

function have(cmd, args = ["--version"]) {
  return spawnSync(cmd, args, { stdio: "ignore" }).status === 0;
}

function newest(paths) {
  let t = 0;
  for (const p of paths) {
    const s = statSync(p);
    if (s.isDirectory()) t = Math.max(t, newest(readdirSync(p).map((f) => join(p, f))));
    else t = Math.max(t, s.mtimeMs);
  }
  return t;
}

function stale(outputs, inputs) {
  if (!outputs.every((o) => existsSync(o))) return true;
  const oldest = Math.min(...outputs.map((o) => statSync(o).mtimeMs));
  return newest(inputs) > oldest;
}

function run(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "inherit", "inherit"], ...opts });
    child.on("error", reject);
    child.on("exit", (code) =>
      code === 0
        ? resolve()
        : reject(new Error(`${cmd} ${args.slice(0, 3).join(" ")} ... exited with ${code}`)),
    );
  });
}

function skip(tool, what) {
  const msg = `native: ${tool} not found, skipped: ${what}`;
  if (process.env.REQUIRE_ALL === "1") throw new Error(`REQUIRE_ALL=1 but ${msg}`);
  console.warn(`SKIP ${msg}`);
}

async function buildWasm(dir) {
  const out = join(dir, "build/wasm");
  const outputs = [join(out, "ul_engine.cjs"), join(out, "ul_engine.wasm")];
  const inputs = [join(dir, "src"), join(dir, "include"), join(dir, "build.mjs")];
  if (!stale(outputs, inputs)) return;
  mkdirSync(out, { recursive: true });
  const args = [
    "-std=c++17",
    "-O2",
    "-msimd128",
    "-Iinclude",
    ...HOST_SOURCES,
    "src/cuda_stub.cpp",
    "src/wasm_layout.cpp",
    "-o",
    "build/wasm/ul_engine.cjs",
    "-sMODULARIZE=1",
    "-sEXPORT_NAME=createUlEngine",
    "-sENVIRONMENT=node",
    "-sALLOW_MEMORY_GROWTH=1",
    "-sMAXIMUM_MEMORY=4GB",
    // The module must not install process-wide handlers inside test runners and servers.
    "-sNODEJS_CATCH_EXIT=0",
    "-sNODEJS_CATCH_REJECTION=0",
    `-sEXPORTED_FUNCTIONS=${WASM_EXPORTS.map((f) => `_${f}`).join(",")}`,
    "-sEXPORTED_RUNTIME_METHODS=UTF8ToString,stringToUTF8,lengthBytesUTF8",
  ];
  // Debian's emcc runs its JS optimizer with /usr/bin/node, which finds acorn only here.
  const env = {
    ...process.env,
    NODE_PATH: ["/usr/share/nodejs", process.env.NODE_PATH].filter(Boolean).join(":"),
  };
  await run("emcc", args, { cwd: dir, env });
}

function cudaSources(dir) {
  return readdirSync(join(dir, "src/cuda"))
    .filter((f) => f.endsWith(".cu"))
    .sort();
}

async function buildCuda(dir) {
  const out = join(dir, "build/cuda");
  mkdirSync(out, { recursive: true });
  const gencode = CUDA_ARCHS.flatMap((a) => ["-gencode", `arch=compute_${a.slice(3)},code=${a}`]);
  const jobs = cudaSources(dir).map((f) => async () => {
    const obj = join(out, f.replace(/\.cu$/, ".o"));
    // This source, the shared CUDA header and the headers every kernel file includes.
    const inputs = [
      join(dir, "src/cuda", f),
      join(dir, "src/cuda/common.cuh"),
      join(dir, "src/cuda/attention_fa2.cuh"),
      join(dir, "src/cuda/mma_layout.h"),
      join(dir, "src/backend.h"),
      join(dir, "src/dtype.h"),
      join(dir, "src/library_search.h"),
      join(dir, "include"),
    ];
    if (!stale([obj], inputs)) return;
    await run(
      "nvcc",
      [
        "-std=c++17",
        "-O3",
        ...gencode,
        "-Iinclude",
        "-Isrc",
        "-Xcompiler",
        "-fPIC",
        "-c",
        `src/cuda/${f}`,
        "-o",
        obj,
      ],
      { cwd: dir },
    );
  });
  // Two at a time: the reference machine has two cores.
  const queue = [...jobs];
  await Promise.all(
    [0, 1].map(async () => {
      while (queue.length) await queue.shift()();
    }),
  );
}

function gpuPresent() {
  return have("nvidia-smi", ["-L"]);
}

/**
 * Links the N-API addon. withCuda: with the CUDA objects of buildCuda and cudart (else the CUDA
 * backend is the typed stub). `out` defaults to native/build/ul_addon.node.
 */
export async function buildAddon({ root, withCuda, out }) {
  const dir = join(root, "native");
  const nodeInclude = [
    join(process.execPath, "../../include/node"),
    "/usr/local/include/node",
    "/usr/include/node",
  ].find((p) => existsSync(join(p, "node_api.h")));
  if (!nodeInclude)
    throw new Error("native: node_api.h not found (Node headers), cannot build the addon");
  out ??= join(dir, "build/ul_addon.node");
  mkdirSync(dirname(out), { recursive: true });
  // library_search.cpp: cuBLASLt's dlopen search, which only the CUDA backend calls.
  const sources = [
    ...HOST_SOURCES,
    "addon/addon.cpp",
    ...(withCuda ? ["src/library_search.cpp"] : ["src/cuda_stub.cpp"]),
  ];
  const objs = withCuda
    ? cudaSources(dir).map((f) => join("build/cuda", f.replace(/\.cu$/, ".o")))
    : [];
  const cudaLib = "/usr/local/cuda/lib64";
  await run(
    "g++",
    [
      "-std=c++17",
      "-O2",
      "-shared",
      "-fPIC",
      "-Iinclude",
      `-I${nodeInclude}`,
      ...sources,
      ...objs,
      ...(withCuda ? [`-L${cudaLib}`, "-lcudart", "-ldl", `-Wl,-rpath,${cudaLib}`] : []),
      "-o",
      out,
    ],
    { cwd: dir },
  );
}

/** The CUDA compile check alone (native/build/cuda/*.o for sm_90 and sm_80). */
export async function buildCudaObjects({ root }) {
  await buildCuda(join(root, "native"));
}

export async function build({ root }) {
  const dir = join(root, "native");
  if (have("emcc")) await buildWasm(dir);
  else skip("emcc", "the emscripten build of the native core (native-wasm runtime and its tests)");
  const nvcc = have("nvcc");
  if (nvcc) await buildCuda(dir);
  else skip("nvcc", `the CUDA compile check (${CUDA_ARCHS.join(", ")})`);
  const env = process.env;
  for (const stray of ["ULTRALONG_BUILD_ADDON", "ULTRALONG_REQUIRE_ADDON", "REQUIRE_ADDON"]) {
    if (env[stray] !== undefined)
      throw new Error(
        `native: ${stray} is not read by the build; use UL_BUILD_ADDON / UL_REQUIRE_ADDON`,
      );
  }
  const required = env.UL_REQUIRE_ADDON === "1";
  if (required && !nvcc)
    throw new Error(
      "native: UL_REQUIRE_ADDON=1 but nvcc is not on PATH: the addon would have no CUDA kernels",
    );
  if (required || env.UL_BUILD_ADDON === "1" || (nvcc && gpuPresent())) {
    await buildAddon({ root, withCuda: nvcc });
    if (required && !existsSync(join(dir, "build/ul_addon.node")))
      throw new Error("native: UL_REQUIRE_ADDON=1 but native/build/ul_addon.node was not produced");
  } else
    console.log("native: addon not built (no GPU here; set UL_BUILD_ADDON=1 to build it anyway)");
}
