// `ultralong serve`: the edge and the model function on loopback (two Hono apps, signed HTTP
// between them), with a generated demo model when no --model is given.
import { mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { InvalidInputError } from "../../../core/errors.ts";
import { makeModelDir } from "../../../core/node/make-model.ts";
import { type KeyConfig, KeyRing } from "../../edge/keys.ts";
import { startLocal } from "../../entries/local.ts";
import { checkCanListen, checkPort } from "../../node/listen.ts";
import {
  checkSnapshotPlaintext,
  snapshotKeys as snapshotKeysFromEnv,
} from "../../node/snapshot-keys.ts";
import { type Command, intOption, parseCommandArgs } from "../command.ts";
import { KV_DTYPE_HELP, kvDtypeOption } from "../kv-dtype.ts";
import { WEIGHTS_HELP, weightsOption } from "../weights.ts";

const usage = `usage: ultralong serve [options]

Runs the OpenAI-compatible edge and the model function locally: the edge on --port, the model
function on a private loopback port, requests between them signed (docs/http-api.md).

options:
  --model DIR        Hugging Face Llama directory (default: a small generated demo model,
                     made once in the user cache directory)
  --port N           edge port (default 8080; 0 = any free port)
  --host H           listen address (default 127.0.0.1)
  --store S          KV snapshots: DIR or s3://bucket/prefix (default: user cache directory)
  --no-store         no snapshots
  --api-keys FILE    JSON key file (hashed keys -> tenants with limits; docs/http-api.md);
                     default: one demo key, printed at start
  --api-key KEY      the demo key (default: a random one made once and kept, mode 0600, in
                     the user cache directory as demo-api-key, so it is the same every start)
  --threads N        worker threads for CPU runtimes (default: all cores)
  --runtime NAME     auto|reference|wasm|native-wasm|cuda (default auto)
  --max-positions N  KV positions (default: min(model's context, 131072)); with batching,
                     the KV pool all sequences share, and one sequence's limit
  --max-seqs N       generations at once, batched (default: one per 2048 KV positions, at
                     most 32, where the runtime batches; 1: one at a time)
  --max-batch-tokens N  most tokens one batched step runs (default 256)
  --max-prefill-tokens N  most prompt tokens a step runs beside decode tokens (default
                      --max-batch-tokens): lower keeps running generations' inter-token latency
                      down while new prompts arrive, at their time to first token's cost
  --max-swap-bytes N host memory for preempted sequences' KV when there is no store or its
                     writes fail (default 1073741824); past it the preempted request fails
  --kv-dtype D       KV cache element type: ${KV_DTYPE_HELP} (default: the runtime's)
  --device-kv-positions N  native runtimes: KV positions held in GPU memory, whole blocks of 64;
                     the rest of the pool in pinned host memory (default: all in GPU memory)
  --weights W        weights in memory: ${WEIGHTS_HELP}
                     (default: the checkpoint's)
  --role R           both (default) | model: only the model function, on --port, for a
                     deployed container; needs ULTRALONG_SIGNING_SECRET (shared with the edge)

environment: ULTRALONG_SIGNING_SECRET (default: random per process with --role both),
ULTRALONG_SALT_SECRET (per-tenant snapshot salts; default: a random secret kept in the user
cache directory, so snapshots are found again after a restart), ULTRALONG_SNAPSHOT_KEY or
ULTRALONG_SNAPSHOT_KEY_FILE (master keys that encrypt snapshots, comma-separated, the first
seals; --role model with a store refuses to start without one unless
ULTRALONG_SNAPSHOT_PLAINTEXT=1).
`;

/** Demo model: Llama 3.1 vocabulary and tokenizer, 2 tiny layers (random weights, fast on a CPU). */
const DEMO = { layers: 2, hidden: 64, heads: 4, kvHeads: 2, ffn: 192, seed: 0 };
const DEMO_NAME = "demo-model-v1";

function cacheDir(env: NodeJS.ProcessEnv): string {
  return join(env.XDG_CACHE_HOME || join(env.HOME || homedir(), ".cache"), "ultralong");
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** The demo model directory, generated once (into a temporary sibling, then renamed: atomic). */
export async function demoModelDir(
  env: NodeJS.ProcessEnv,
  say: (line: string) => void,
): Promise<string> {
  const dir = join(cacheDir(env), DEMO_NAME);
  if (await exists(join(dir, "config.json"))) {
    say(`using the demo model in ${dir} (random weights: its output is not meaningful text)`);
    return dir;
  }
  await mkdir(cacheDir(env), { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  const t0 = performance.now();
  await makeModelDir(tmp, DEMO);
  await rename(tmp, dir).catch(async (err) => {
    await rm(tmp, { recursive: true, force: true });
    if (!(await exists(join(dir, "config.json")))) throw err; // else another process won the race
  });
  say(
    `no --model given: generated a small demo model (2 layers, Llama 3.1 tokenizer, random weights) in ${dir} in ${Math.round(performance.now() - t0)} ms`,
  );
  return dir;
}

function untilSignal(): Promise<void> {
  return new Promise<void>((done) => {
    const stop = () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      done();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
}

/**
 * A secret made once and kept (mode 0600) in the user cache directory as `name`: what the file
 * holds if it is at least `minLength` characters, else a new one from `make`, written.
 */
async function cachedSecret(
  env: NodeJS.ProcessEnv,
  name: string,
  minLength: number,
  make: (hex: string) => string,
): Promise<string> {
  const file = join(cacheDir(env), name);
  const existing = (await readFile(file, "utf8").catch(() => "")).trim();
  if (existing.length >= minLength) return existing;
  await mkdir(cacheDir(env), { recursive: true });
  const bytes = new Uint8Array(32);
  crypto.getRandomValues(bytes);
  const secret = make(Buffer.from(bytes).toString("hex"));
  await writeFile(file, secret, { mode: 0o600 });
  return secret;
}

/** Per-tenant snapshot salts derive from this, so snapshots are found again after a restart. */
const localSaltSecret = (env: NodeJS.ProcessEnv) =>
  cachedSecret(env, "tenant-salt-secret", 32, (hex) => hex);

/** The demo API key, made once so yesterday's curl line still works today. */
const DEMO_KEY_FILE = "demo-api-key";
const localDemoKey = (env: NodeJS.ProcessEnv) =>
  cachedSecret(env, DEMO_KEY_FILE, 16, (hex) => `ul-demo-${hex.slice(0, 32)}`);

/** --api-key: anything a client can send in `Authorization: Bearer <key>` (visible ASCII). */
function checkApiKey(key: string): string {
  if (!/^[\x21-\x7e]{8,}$/.test(key)) {
    throw new InvalidInputError(
      "--api-key must be at least 8 visible ASCII characters, with no spaces",
    );
  }
  return key;
}

/** The --api-keys file, read and checked as the edge will (KeyRing) before anything starts. */
async function readKeyFile(file: string): Promise<KeyConfig> {
  const text = await readFile(file, "utf8").catch((err: Error) => {
    throw new InvalidInputError(`cannot read --api-keys ${file}: ${err.message}`);
  });
  let keys: KeyConfig;
  try {
    keys = JSON.parse(text) as KeyConfig;
  } catch (err) {
    throw new InvalidInputError(`--api-keys ${file} is not JSON: ${(err as Error).message}`);
  }
  try {
    new KeyRing(keys);
  } catch (err) {
    throw new InvalidInputError(`--api-keys ${file}: ${(err as Error).message}`);
  }
  return keys;
}

export const command: Command = {
  usage,
  async run(argv, io) {
    const { values } = parseCommandArgs(
      argv,
      {
        model: { type: "string" },
        port: { type: "string" },
        host: { type: "string" },
        store: { type: "string" },
        "no-store": { type: "boolean" },
        "api-keys": { type: "string" },
        "api-key": { type: "string" },
        threads: { type: "string" },
        runtime: { type: "string" },
        "max-positions": { type: "string" },
        "max-seqs": { type: "string" },
        "max-batch-tokens": { type: "string" },
        "max-prefill-tokens": { type: "string" },
        "max-swap-bytes": { type: "string" },
        "kv-dtype": { type: "string" },
        "device-kv-positions": { type: "string" },
        weights: { type: "string" },
        role: { type: "string" },
      },
      { allowPositionals: false },
    );
    const say = (line: string) => io.stderr.write(`${line}\n`);
    // Every option is checked before anything is loaded, so a mistake costs a line, not a model load.
    const role = values.role ?? "both";
    if (role !== "both" && role !== "model")
      throw new InvalidInputError(`--role must be both or model, got '${role}'`);
    const secret = io.env.ULTRALONG_SIGNING_SECRET;
    if (role === "model" && !secret)
      throw new InvalidInputError("--role model needs ULTRALONG_SIGNING_SECRET");
    const port = checkPort(intOption("port", values.port) ?? 8080, "--port");
    const threads = intOption("threads", values.threads);
    const maxPositions = intOption("max-positions", values["max-positions"]);
    if (maxPositions === 0) throw new InvalidInputError("--max-positions must be at least 1");
    const maxSeqs = intOption("max-seqs", values["max-seqs"]);
    if (maxSeqs === 0) throw new InvalidInputError("--max-seqs must be at least 1");
    const maxBatchTokens = intOption("max-batch-tokens", values["max-batch-tokens"]);
    if (maxBatchTokens === 0) throw new InvalidInputError("--max-batch-tokens must be at least 1");
    const maxPrefillTokens = intOption("max-prefill-tokens", values["max-prefill-tokens"]);
    if (maxPrefillTokens === 0) {
      throw new InvalidInputError("--max-prefill-tokens must be at least 1");
    }
    const maxSwapBytes = intOption("max-swap-bytes", values["max-swap-bytes"]);
    const kvDtype = kvDtypeOption(values["kv-dtype"]);
    const deviceKvPositions = intOption("device-kv-positions", values["device-kv-positions"]);
    const weightFormat = weightsOption(values.weights);
    if (values["api-key"] !== undefined && (values["api-keys"] || role === "model"))
      throw new InvalidInputError(
        `--api-key sets the demo key; with ${role === "model" ? "--role model" : "--api-keys"} there is none`,
      );
    const apiKey = values["api-key"] === undefined ? undefined : checkApiKey(values["api-key"]);
    const keys = values["api-keys"] ? await readKeyFile(values["api-keys"]) : undefined;
    const snapshotKeys = await snapshotKeysFromEnv(io.env);
    if (!values["no-store"]) checkSnapshotPlaintext(snapshotKeys, role === "model", io.env);
    await checkCanListen(port, values.host);
    const modelDir = values.model ?? (await demoModelDir(io.env, say));
    const t0 = performance.now();
    const server = await startLocal({
      role,
      secret,
      saltSecret: io.env.ULTRALONG_SALT_SECRET || (await localSaltSecret(io.env)),
      modelDir,
      modelId: values.model ? undefined : "ultralong-demo",
      port,
      hostname: values.host,
      store: values["no-store"] ? null : values.store,
      snapshotKeys,
      keys,
      // The model role serves no clients: no demo key to make.
      demoKey: keys || role === "model" ? undefined : (apiKey ?? (await localDemoKey(io.env))),
      runtime: values.runtime,
      threads,
      maxPositions,
      maxSeqs,
      maxBatchTokens,
      maxPrefillTokens,
      maxSwapBytes,
      kvDtype,
      deviceKvPositions,
      weightFormat,
      env: io.env,
    });
    const info = server.engine.info();
    say(
      `${server.runtimeChoice}; kernels ${info.kernels}; KV ${info.kv.dtype}; ${info.batching ? `batching up to ${info.maxSeqs} sequences, ${info.batching.maxBatchTokens} tokens a step (${info.batching.maxPrefillTokens} of prompts beside decode tokens), KV blocks of ${info.batching.blockTokens}` : "one sequence at a time"}`,
    );
    if (info.sizing) say(info.sizing);
    if (role === "model") {
      io.stdout.write(
        `ultralong model function '${server.modelId}' on ${server.url} (runtime ${info.runtime}, snapshots: ${info.store})\n`,
      );
      await untilSignal();
      await server.close();
      return 0;
    }
    const key = server.demoKey ?? "<your key>";
    io.stdout.write(
      [
        `ultralong serving '${server.modelId}' on ${server.url} (runtime ${info.runtime}, context ${info.maxPositions} tokens, snapshots: ${info.store}; ready in ${Math.round(performance.now() - t0)} ms)`,
        server.demoKey
          ? `demo API key: ${server.demoKey}${apiKey ? "" : `   (kept in ${join(cacheDir(io.env), DEMO_KEY_FILE)}; --api-key sets another)`}`
          : "API keys: from --api-keys",
        server.metricsKey ? `metrics key:  ${server.metricsKey}   (GET ${server.url}/metrics)` : "",
        `model function: ${server.modelUrl} (signed requests from the edge only; /healthz, /readyz, /metrics)`,
        "try:",
        `  curl ${server.url}/v1/chat/completions -H 'Authorization: Bearer ${key}' -H 'Content-Type: application/json' \\`,
        `    -d '{"model":"${server.modelId}","messages":[{"role":"user","content":"Hello!"}],"max_tokens":16}'`,
        "",
      ].join("\n"),
    );
    await untilSignal();
    say("shutting down");
    await server.close();
    return 0;
  },
};
