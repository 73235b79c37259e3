#!/usr/bin/env node
// The `ultralong` command. It runs the JavaScript that functions/cli/build.mjs bundled from the
// TypeScript (npm install, npm run build and npm test make it), and only while that bundle was made
// from the sources as they are now: an edited checkout rebuilds it first (about 0.3 s), so a stale
// build never runs. Where that rebuild fails (esbuild missing, dist/ not writable) the sources run
// through tsx's loader instead: slow, still right.
// The bundle has source maps beside it: NODE_OPTIONS=--enable-source-maps makes stack traces name
// the TypeScript files (Node's default is off).
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build, currentBuild } from "./build.mjs";

// The AWS SDK's supported switch for its "will require Node 22" notice (8 lines on stderr at the
// first S3 client on Node 20): the SDK version is pinned, so the notice says nothing to act on.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");

async function loadMain() {
  let entry = currentBuild(root);
  if (!entry) {
    const rebuilt = await build({ root }).catch(() => null);
    entry = rebuilt && currentBuild(root);
  }
  if (entry) return (await import(entry)).main;
  const { register } = await import("tsx/esm/api");
  register();
  return (await import("./main.ts")).main;
}

const main = await loadMain();
process.exitCode = await main(process.argv.slice(2), {
  stdin: process.stdin,
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
});
