// The CUDA kernel emulations (native/programs/*_emulate.cpp): the real kernel source compiled with
// g++ against the CUDA headers and run on CPU threads. Shared by their tests: the tool check and
// the one g++ command line.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tool } from "./tools.ts";

const root = join(import.meta.dirname, "..", "..");
const cudaInclude = join(process.env.CUDA_HOME ?? "/usr/local/cuda", "include");

/** g++ and the CUDA headers are present (else SKIP, or a failure under REQUIRE_ALL=1). */
export function emulationReady(what: string): boolean {
  return (
    tool("g++", spawnSync("g++", ["--version"], { stdio: "ignore" }).status === 0, what) &&
    tool(
      `CUDA headers (${cudaInclude}/cuda_bf16.h, cuda_fp8.h)`,
      existsSync(join(cudaInclude, "cuda_bf16.h")) && existsSync(join(cudaInclude, "cuda_fp8.h")),
      what,
    )
  );
}

/** Compiles native/programs/<name>.cpp into a fresh temporary folder: the binary, g++'s status and stderr. */
export function buildEmulation(name: string) {
  const bin = join(mkdtempSync(join(tmpdir(), `ul-${name}-`)), name);
  const cc = spawnSync(
    "g++",
    [
      "-std=c++20",
      "-O2",
      "-Wall",
      "-Wextra",
      "-Werror",
      "-Wno-attributes", // __shared__ / __global__ are attributes g++ does not know
      "-Wno-unknown-pragmas", // and #pragma unroll is nvcc's
      "-x",
      "c++",
      `-I${cudaInclude}`,
      "-Inative/include",
      "-Inative/src",
      "-Inative/programs",
      `native/programs/${name}.cpp`,
      "-o",
      bin,
      "-pthread",
    ],
    { cwd: root, encoding: "utf8" },
  );
  return { bin, status: cc.status, stderr: cc.stderr };
}
