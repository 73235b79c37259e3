// Builds the AssemblyScript kernels, with SIMD, -O3, the stub runtime (the kernels allocate
// nothing) and an imported memory (one per worker), into two modules, each also with relaxed SIMD:
//   product  wasm/assembly/index.ts -> wasm/build/ultralong.wasm: only what the runtime calls; the
//            one the runtime (wasm/src/module.ts) and the model image load
//   test     wasm/assembly/test.ts -> wasm/build/ultralong-test.wasm: the product's exports plus
//            the scalar references and the bench loops (kernel tests, npm run bench -- runtime)
// Each output is written to a temporary name and renamed, so a reader never sees half a file.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { INITIAL_PAGES } from "./src/shard.mjs";

// Pages (64 KiB) every memory given to the module must start with, defined once in shard.mjs
// (which a worker loads without this Node-only script).
export { INITIAL_PAGES };

export const WASM_FILE = "wasm/build/ultralong.wasm";
export const TEST_WASM_FILE = "wasm/build/ultralong-test.wasm";
// The same sources with relaxed SIMD on (wasm/assembly/simd.ts madd: fused multiply-add), for
// engines that validate it (wasm/src/module.ts picks); the plain modules stay for those that do not.
export const RELAXED_WASM_FILE = "wasm/build/ultralong-relaxed.wasm";
export const RELAXED_TEST_WASM_FILE = "wasm/build/ultralong-test-relaxed.wasm";

/** Entry point -> output of each module (outputs relative to the root, .wat beside the .wasm). */
const TARGETS = [
  { entry: "index.ts", out: WASM_FILE, relaxed: false },
  { entry: "test.ts", out: TEST_WASM_FILE, relaxed: false },
  { entry: "index.ts", out: RELAXED_WASM_FILE, relaxed: true },
  { entry: "test.ts", out: RELAXED_TEST_WASM_FILE, relaxed: true },
];

function compile(root, { entry, out, relaxed }) {
  const asc = join(root, "node_modules", "assemblyscript", "bin", "asc.js");
  const outDir = join(root, "wasm", "build");
  mkdirSync(outDir, { recursive: true });
  const tmp = join(outDir, `.tmp-${process.pid}-${Date.now()}`);
  const wasm = join(root, out);
  const wat = wasm.replace(/\.wasm$/, ".wat");
  const args = [
    asc,
    join(root, "wasm", "assembly", entry),
    "--outFile",
    join(tmp, "out.wasm"),
    "--textFile",
    join(tmp, "out.wat"),
    "--enable",
    relaxed ? "simd,relaxed-simd" : "simd",
    "--optimizeLevel",
    "3",
    "--shrinkLevel",
    "0",
    "--noAssert",
    "--runtime",
    "stub",
    "--importMemory",
    // Every memory the module gets is a fresh WebAssembly.Memory, which is zeroed: the static
    // buffers (GEMM packing, dequantization) then need no zero bytes in the binary.
    "--zeroFilledMemory",
    "--initialMemory",
    String(INITIAL_PAGES),
    "--maximumMemory",
    "65536",
  ];
  const r = spawnSync(process.execPath, args, { stdio: "inherit" });
  if (r.status !== 0) {
    rmSync(tmp, { recursive: true, force: true });
    throw new Error(`asc failed on wasm/assembly/${entry} (exit ${r.status})`);
  }
  renameSync(join(tmp, "out.wat"), wat);
  renameSync(join(tmp, "out.wasm"), wasm);
  rmSync(tmp, { recursive: true, force: true });
}

/**
 * Whether `out` is newer than every input: each AssemblyScript source (any may reach either
 * entry), this script (the flags) and shard.mjs (INITIAL_PAGES).
 */
function upToDate(root, out) {
  const path = join(root, out);
  if (!existsSync(path)) return false;
  const srcDir = join(root, "wasm", "assembly");
  const inputs = [
    ...readdirSync(srcDir).map((f) => join(srcDir, f)),
    join(root, "wasm", "build.mjs"),
    join(root, "wasm", "src", "shard.mjs"),
  ];
  return statSync(path).mtimeMs >= Math.max(...inputs.map((f) => statSync(f).mtimeMs));
}

/** Build each module that is older than one of its inputs (npm run build, the tests). */
export async function build({ root }) {
  for (const t of TARGETS) if (!upToDate(root, t.out)) compile(root, t);
}

/** The tests' name for build(). */
export const ensureBuilt = build;

if (import.meta.url === `file://${process.argv[1]}`) {
  await build({ root: join(import.meta.dirname, "..") });
}
