// Optional tools for tests. A suite that needs a tool this machine lacks skips and says so, unless
// REQUIRE_ALL=1 (set by .ci/run), where a missing tool is a failure: CI must skip nothing.
import { spawnSync } from "node:child_process";

export const requireAll = process.env.REQUIRE_ALL === "1";

function runs(cmd: string, args: string[]): boolean {
  // Generous: under load, importing torch has taken over a minute on this machine.
  const r = spawnSync(cmd, args, { stdio: "ignore", timeout: 300_000 });
  return r.status === 0;
}

/** Debian's python with PyTorch (the independent reference). */
export const TORCH_PYTHON = process.env.TORCH_PYTHON ?? "/usr/bin/python3";

const cache = new Map<string, boolean>();
function probe(name: string, check: () => boolean): boolean {
  let ok = cache.get(name);
  if (ok === undefined) {
    ok = check();
    cache.set(name, ok);
  }
  return ok;
}

export const haveTorch = () => probe("torch", () => runs(TORCH_PYTHON, ["-c", "import torch"]));
export const haveEmcc = () => probe("emcc", () => runs("emcc", ["--version"]));
export const haveNvcc = () => probe("nvcc", () => runs("nvcc", ["--version"]));

/**
 * Returns true when the tool is present. When absent: throws under REQUIRE_ALL=1, else prints why
 * the suite skips and returns false. Use as `describe.skipIf(!tool("emcc", haveEmcc(), "..."))`.
 */
export function tool(name: string, present: boolean, what: string): boolean {
  if (present) return true;
  if (requireAll) throw new Error(`REQUIRE_ALL=1 but ${name} is missing: ${what} cannot run`);
  console.warn(`SKIP: ${name} is not installed, so ${what} is skipped`);
  return false;
}
