// Builds the AssemblyScript kernels: wasm/assembly/index.ts -> wasm/build/ultralong.wasm, with SIMD,
// -O3, the stub runtime (the kernels allocate nothing) and an imported memory (one per worker).
import { spawnSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

export const WASM_FILE = "wasm/build/ultralong.wasm";

export async function build({ root }) {
  const asc = join(root, "node_modules", "assemblyscript", "bin", "asc.js");
  mkdirSync(join(root, "wasm", "build"), { recursive: true });
  const args = [
    asc,
    join(root, "wasm", "assembly", "index.ts"),
    "--outFile",
    join(root, WASM_FILE),
    "--textFile",
    join(root, "wasm", "build", "ultralong.wat"),
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
    "1",
    "--maximumMemory",
    "65536",
  ];
  const r = spawnSync(process.execPath, args, { stdio: "inherit" });
  if (r.status !== 0) throw new Error(`asc failed (exit ${r.status})`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await build({ root: join(import.meta.dirname, "..") });
}
