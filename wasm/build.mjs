// Builds the AssemblyScript kernels: wasm/assembly/*.ts -> wasm/build/ultralong.wasm, with SIMD,
// -O3, the stub runtime (the kernels allocate nothing) and an imported memory (one per worker).
// The output is written to a temporary name and renamed, so a reader never sees half a file.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { INITIAL_PAGES } from "./src/shard.mjs";

// Pages (64 KiB) every memory given to the module must start with, defined once in shard.mjs
// (which a worker loads without this Node-only script).
export { INITIAL_PAGES };

export const WASM_FILE = "wasm/build/ultralong.wasm";

export async function build({ root }) {
  const asc = join(root, "node_modules", "assemblyscript", "bin", "asc.js");
  const outDir = join(root, "wasm", "build");
  mkdirSync(outDir, { recursive: true });
  const tmp = join(outDir, `.tmp-${process.pid}-${Date.now()}`);
  const args = [
    asc,
    join(root, "wasm", "assembly", "index.ts"),
    "--outFile",
    join(tmp, "ultralong.wasm"),
    "--textFile",
    join(tmp, "ultralong.wat"),
    "--enable",
    "simd",
    "--optimizeLevel",
    "3",
    "--shrinkLevel",
    "0",
    "--noAssert",
    "--runtime",
    "stub",
    "--importMemory",
    "--initialMemory",
    String(INITIAL_PAGES),
    "--maximumMemory",
    "65536",
  ];
  const r = spawnSync(process.execPath, args, { stdio: "inherit" });
  if (r.status !== 0) {
    rmSync(tmp, { recursive: true, force: true });
    throw new Error(`asc failed (exit ${r.status})`);
  }
  renameSync(join(tmp, "ultralong.wat"), join(outDir, "ultralong.wat"));
  renameSync(join(tmp, "ultralong.wasm"), join(root, WASM_FILE));
  rmSync(tmp, { recursive: true, force: true });
}

/** Build unless wasm/build/ultralong.wasm is newer than every AssemblyScript source (for tests). */
export async function ensureBuilt({ root }) {
  const out = join(root, WASM_FILE);
  const srcDir = join(root, "wasm", "assembly");
  if (existsSync(out)) {
    const built = statSync(out).mtimeMs;
    const newest = Math.max(...readdirSync(srcDir).map((f) => statSync(join(srcDir, f)).mtimeMs));
    if (built >= newest) return;
  }
  await build({ root });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await build({ root: join(import.meta.dirname, "..") });
}
