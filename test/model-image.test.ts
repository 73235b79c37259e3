// The model image's contents, built as the Dockerfile builds them: infra/docker/build-model-image.sh
// in a FRESH CLONE of this repository's HEAD (what is committed, nothing built or installed), with
// nvcc and emcc present and no GPU. Then this process loads the addon that came out and gets the
// typed "no CUDA device" error (the whole path up to the driver works), and the command the
// container entry runs refuses to serve with one line instead of falling back to a CPU runtime.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { NotAvailableError } from "../core/errors.ts";
import { currentBuild } from "../functions/cli/build.mjs";
import { Backend } from "../native/ts/abi.ts";
import { loadAddonHost } from "../native/ts/addon-host.ts";
import { probeCudaError } from "../native/ts/cuda-runtime.ts";
import { runProcess, scratchDir, testModelDir } from "./support/models.ts";
import { haveEmcc, haveNvcc, tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
const tools =
  tool("nvcc", haveNvcc(), "the model image build (CUDA addon)") &&
  tool("emcc", haveEmcc(), "the model image build (emscripten module)");

const run = (cmd: string, args: string[], cwd: string, env = process.env) =>
  runProcess(cmd, args, { cwd, env });

describe.skipIf(!tools)("model image build (fresh clone, nvcc, no GPU)", () => {
  const clone = join(scratchDir("image"), "ultralong");
  let build: { status: number | null; stdout: string; stderr: string };

  beforeAll(async () => {
    const cloned = spawnSync("git", ["clone", "--quiet", "--no-local", root, clone], {
      encoding: "utf8",
    });
    expect(cloned.status, cloned.stderr).toBe(0);
    // REQUIRE_ALL and the build variables come from the script itself, not from this runner.
    const env: NodeJS.ProcessEnv = { ...process.env, npm_config_prefer_offline: "true" };
    delete env.REQUIRE_ALL;
    build = await run("bash", ["infra/docker/build-model-image.sh"], clone, env);
  }, 900_000);

  it("the script builds every part, prunes dev dependencies and checks the addon", () => {
    expect(build.status, build.stderr.slice(-3000)).toBe(0);
    for (const built of [
      "wasm/build/ultralong.wasm",
      "wasm/build/ultralong-relaxed.wasm",
      "native/build/wasm/ul_engine.wasm",
      "native/build/ul_addon.node",
    ]) {
      expect(existsSync(join(clone, built)), built).toBe(true);
    }
    expect(existsSync(join(clone, "node_modules/hono"))).toBe(true);
    // The CLI's bundle, current for the clone's sources (bin.js runs it, no TypeScript loader).
    expect(currentBuild(clone)).not.toBeNull();
    expect(existsSync(join(clone, "node_modules/tsx"))).toBe(true); // for a source changed after it
    expect(existsSync(join(clone, "node_modules/assemblyscript"))).toBe(false);
    expect(existsSync(join(clone, "node_modules/vitest"))).toBe(false);
    expect(existsSync(join(clone, "wasm/build/ultralong-test.wasm"))).toBe(false);
    expect(existsSync(join(clone, "wasm/build/ultralong-test-relaxed.wasm"))).toBe(false);
    const report = JSON.parse(build.stdout.trim().split("\n").at(-1)!);
    expect(report).toMatchObject({ ok: true, cudaCompiled: true });
  });

  it("the built addon loads in Node and reaches the CUDA runtime: typed 'no CUDA device'", () => {
    const host = loadAddonHost(join(clone, "native/build/ul_addon.node"));
    expect(host.backendCompiled(Backend.cuda)).toBe(true);
    const err = probeCudaError(host);
    if (err === null) return; // a GPU machine: the probe engine was created
    expect(err).toBeInstanceOf(NotAvailableError);
    expect(err.message).toMatch(/no CUDA device: /);
  });

  it("the container's serve command refuses to start without a GPU, in one line", async () => {
    if (probeCudaError(loadAddonHost(join(clone, "native/build/ul_addon.node"))) === null) return; // a GPU: it would serve
    const model = await testModelDir();
    const r = await run(
      process.execPath,
      ["functions/cli/bin.js", "serve", "--role", "model", "--model", model, "--port", "0"].concat([
        "--no-store",
        "--runtime",
        "cuda",
      ]),
      clone,
      { ...process.env, ULTRALONG_SIGNING_SECRET: "s".repeat(64) },
    );
    expect(r.status).not.toBe(0);
    const lines = r.stderr.trim().split("\n");
    expect(lines.at(-1)).toMatch(/runtime 'cuda' is not available: .*no CUDA device/);
    expect(r.stdout).toBe("");
  });

  it("the Dockerfile runs this script and ships the cuDNN runtime base; the entry serves cuda", () => {
    const dockerfile = readFileSync(join(clone, "infra/docker/model.Dockerfile"), "utf8");
    expect(dockerfile).toMatch(/^RUN infra\/docker\/build-model-image\.sh$/m);
    expect(dockerfile).toMatch(/^FROM nvidia\/cuda:\$\{CUDA\}-cudnn-runtime-ubuntu24\.04$/m);
    const entry = readFileSync(join(clone, "infra/docker/model-entry.sh"), "utf8");
    expect(entry).toMatch(/--runtime "\$\{ULTRALONG_RUNTIME:-cuda\}"/);
    // The deploy's sizing (infra/deploy/gpu.ts) reaches serve.
    expect(entry).toMatch(/--kv-dtype "\$\{ULTRALONG_KV_DTYPE:-bf16\}"/);
    expect(entry).toMatch(/--max-positions "\$\{ULTRALONG_MAX_CONTEXT:-131072\}"/);
  });
});
