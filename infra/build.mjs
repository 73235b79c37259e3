#!/usr/bin/env node
// One build for the whole repository: each part that needs compiling owns a `build.mjs` exporting
// `build()`; this runs them in dependency order: the AssemblyScript kernels, the native core, and
// the CLI's JavaScript (esbuild bundles the TypeScript, so `ultralong` starts with no loader; `npm
// run lint` type-checks). Each step is incremental: it rebuilds only what changed.
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const steps = ["wasm/build.mjs", "native/build.mjs", "functions/cli/build.mjs"];

for (const step of steps) {
  const file = join(root, step);
  if (!existsSync(file)) continue;
  const started = Date.now();
  const mod = await import(pathToFileURL(file).href);
  await mod.build({ root });
  console.log(`build: ${step} ${Date.now() - started} ms`);
}
