// `ultralong generate --model DIR (--prompt TEXT | --file F) [...]`: runs the sequence driver on a
// runtime from the registry and streams the generated text to stdout, with a prefill progress bar
// on stderr (a TTY, or --progress).
//
// Options live in one table (OPTIONS) and are turned into a GenerateRequest in one function, so a
// new option (say --store for KV snapshots) is one entry plus the line that uses it.

import { readFile } from "node:fs/promises";
import { renderChat } from "../../../core/chat/index.ts";
import {
  DEFAULT_CHUNK_TOKENS,
  type DriverEvent,
  eosTokenIds,
  type GenerateRequest,
  type ProgressEvent,
  SequenceDriver,
  tokenTextDecoder,
} from "../../../core/engine/driver.ts";
import { describeChoice } from "../../../core/engine/registry.ts";
import { type SamplingOptions, validateSamplingOptions } from "../../../core/engine/sampling.ts";
import { InvalidInputError } from "../../../core/errors.ts";
import { createSnapshotCache } from "../../../core/kv/snapshot-cache.ts";
import type { LoadedModel } from "../../../core/model/weights.ts";
import { nodeSha256 } from "../../../core/node/hasher.ts";
import { loadModelDir } from "../../../core/node/load-model-dir.ts";
import { openStore } from "../../../core/node/snapshot-dir.ts";
import type { Tokenizer } from "../../../core/tokenizer/index.ts";
import { loadTokenizer } from "../../../core/tokenizer/load.ts";
import { snapshotKeys } from "../../node/snapshot-keys.ts";
import { runtimes } from "../../runtimes.ts";
import { type Command, type CommandIO, intOption, parseCommandArgs } from "../command.ts";
import { KV_DTYPE_HELP, kvDtypeOption } from "../kv-dtype.ts";
import { WEIGHTS_HELP, weightsOption } from "../weights.ts";

const DEFAULT_MAX_TOKENS = 256;

const usage = `usage: ultralong generate --model DIR (--prompt TEXT | --file F) [options]

Generates a continuation of the prompt and streams it to stdout. Without --chat the prompt is
plain text after the BOS token; with --chat it is one user message in the model's chat template.
During a long prefill a progress bar (tokens done, tokens/s, time left) goes to stderr when stderr
is a terminal, or always with --progress.

options:
  --model DIR              Hugging Face Llama model directory (required)
  --prompt TEXT            the prompt
  --file F                 read the prompt from a file ("-" for stdin)
  --chat                   apply the chat template (user message, generation prompt)
  --system TEXT            system message (with --chat)
  --max-tokens N           most tokens to generate (default ${DEFAULT_MAX_TOKENS})
  --temperature T          0 = greedy (default: generation_config.json's, else 1)
  --top-p P                nucleus sampling (default: generation_config.json's, else off)
  --top-k K                keep the K most likely tokens (default: generation_config.json's)
  --min-p P                keep tokens with p >= P * p_max
  --repetition-penalty R   HF/vLLM repetition penalty (1 = off)
  --presence-penalty X     OpenAI presence penalty
  --frequency-penalty X    OpenAI frequency penalty
  --seed S                 same seed, same output
  --stop TEXT              stop string (repeatable); not printed
  --ignore-eos             keep generating past end-of-sequence tokens
  --runtime NAME           auto|${runtimes.names().join("|")} (default auto: the fastest available)
  --threads N              worker threads for CPU runtimes (default: all cores)
  --chunk N                prefill chunk in tokens (default: the runtime's, see docs/driver.md)
  --kv-dtype D             KV cache element type: ${KV_DTYPE_HELP} (default: the runtime's)
  --weights W              weights in memory: ${WEIGHTS_HELP}
                           (default: the checkpoint's)
  --progress               progress bar and a summary on stderr even when it is not a terminal
  --store S                KV snapshots in a directory or s3://bucket/prefix ("default": the user
                           cache dir): restore the longest stored prefix, save each chunk, so a
                           killed prefill resumes (docs/snapshot-format.md; master keys for
                           encryption at rest in ULTRALONG_SNAPSHOT_KEY or _KEY_FILE)
`;

const OPTIONS = {
  model: { type: "string" },
  prompt: { type: "string" },
  file: { type: "string" },
  chat: { type: "boolean" },
  system: { type: "string" },
  "max-tokens": { type: "string" },
  temperature: { type: "string" },
  "top-p": { type: "string" },
  "top-k": { type: "string" },
  "min-p": { type: "string" },
  "repetition-penalty": { type: "string" },
  "presence-penalty": { type: "string" },
  "frequency-penalty": { type: "string" },
  seed: { type: "string" },
  stop: { type: "string", multiple: true },
  "ignore-eos": { type: "boolean" },
  runtime: { type: "string" },
  threads: { type: "string" },
  chunk: { type: "string" },
  "kv-dtype": { type: "string" },
  weights: { type: "string" },
  progress: { type: "boolean" },
  store: { type: "string" },
} as const;

type Values = ReturnType<typeof parseOptions>["values"];

function parseOptions(argv: string[]) {
  return parseCommandArgs(argv, OPTIONS, { allowPositionals: false });
}

function num(values: Values, name: keyof Values): number | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== "string" || v.trim() === "" || !Number.isFinite(n)) {
    throw new InvalidInputError(`--${name} must be a number, got '${v}'`);
  }
  return n;
}

/** The sampling flags given, checked (before anything is loaded). */
function samplingFlags(values: Values): SamplingOptions {
  const flags: SamplingOptions = {
    temperature: num(values, "temperature"),
    topP: num(values, "top-p"),
    topK: intOption("top-k", values["top-k"]),
    minP: num(values, "min-p"),
    repetitionPenalty: num(values, "repetition-penalty"),
    presencePenalty: num(values, "presence-penalty"),
    frequencyPenalty: num(values, "frequency-penalty"),
    seed: intOption("seed", values.seed),
  };
  validateSamplingOptions(flags);
  return flags;
}

/** Flags, else generation_config.json's defaults (as transformers does), else 1 / off. */
function samplingOptions(flags: SamplingOptions, model: LoadedModel): SamplingOptions {
  const g = model.generation;
  return {
    ...flags,
    temperature: flags.temperature ?? g.temperature ?? 1,
    topP: flags.topP ?? g.topP,
    topK: flags.topK ?? g.topK,
  };
}

async function readPrompt(values: Values, io: CommandIO): Promise<string> {
  if ((values.prompt === undefined) === (values.file === undefined)) {
    throw new InvalidInputError("give exactly one of --prompt TEXT and --file F");
  }
  if (values.prompt !== undefined) return values.prompt;
  if (values.file === "-") {
    const chunks: Buffer[] = [];
    for await (const c of io.stdin) chunks.push(Buffer.from(c as Uint8Array));
    return Buffer.concat(chunks).toString("utf8");
  }
  try {
    return await readFile(values.file!, "utf8");
  } catch (err) {
    throw new InvalidInputError(`cannot read --file ${values.file}: ${(err as Error).message}`);
  }
}

/** Prompt token IDs: BOS + plain text, or the chat template's rendering of one user message. */
async function promptTokens(
  text: string,
  values: Values,
  tokenizer: Tokenizer,
  model: LoadedModel,
): Promise<Int32Array> {
  if (values.chat) {
    if (!tokenizer.chatTemplate) {
      throw new InvalidInputError(`${model.files.name} has no chat_template, so --chat cannot run`);
    }
    const messages = [
      ...(values.system !== undefined ? [{ role: "system", content: values.system }] : []),
      { role: "user", content: text },
    ];
    return renderChat(tokenizer, tokenizer.chatTemplate, messages, { addGenerationPrompt: true });
  }
  if (values.system !== undefined) throw new InvalidInputError("--system needs --chat");
  const bos = model.config.bosTokenId ?? tokenizer.bosTokenId;
  const ids = tokenizer.encode(text);
  return bos === undefined || bos === null ? ids : Int32Array.from([bos, ...ids]);
}

/** Progress bar: redrawn in place on a terminal, one line per update otherwise. */
class ProgressBar {
  #lastDraw = 0;
  #drawn = false;
  constructor(
    readonly out: NodeJS.WritableStream,
    readonly tty: boolean,
    readonly clock: () => number = () => performance.now(),
  ) {}

  update(p: ProgressEvent): void {
    const now = this.clock();
    const last = p.doneTokens === p.totalTokens;
    if (!last && now - this.#lastDraw < (this.tty ? 100 : 1000)) return;
    this.#lastDraw = now;
    const frac = p.totalTokens > 0 ? p.doneTokens / p.totalTokens : 1;
    const width = 24;
    const filled = Math.round(frac * width);
    const left = p.tokensPerSecond > 0 ? (p.totalTokens - p.doneTokens) / p.tokensPerSecond : NaN;
    const line =
      `prefill [${"#".repeat(filled)}${".".repeat(width - filled)}] ` +
      `${p.doneTokens}/${p.totalTokens} tokens (${(frac * 100).toFixed(1)}%)` +
      (p.cachedTokens > 0 ? `, ${p.cachedTokens} cached` : "") +
      `, ${p.tokensPerSecond.toFixed(1)} tok/s, ${formatSeconds(left)} left`;
    this.out.write(this.tty ? `\r\x1b[K${line}` : `${line}\n`);
    this.#drawn = true;
  }

  /** Clears the bar before text goes to stdout (same terminal). */
  clear(): void {
    if (this.#drawn && this.tty) this.out.write("\r\x1b[K");
    this.#drawn = false;
  }
}

function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 60) return `${s.toFixed(0)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

export const command: Command = {
  usage,
  async run(argv, io) {
    const { values } = parseOptions(argv);
    if (values.model === undefined) throw new InvalidInputError("--model DIR is required");
    const text = await readPrompt(values, io);
    const kvDtype = kvDtypeOption(values["kv-dtype"]);
    const weightFormat = weightsOption(values.weights);
    const maxTokens = intOption("max-tokens", values["max-tokens"]) ?? DEFAULT_MAX_TOKENS;
    const chunkFlag = intOption("chunk", values.chunk);
    const threads = intOption("threads", values.threads);
    const flags = samplingFlags(values);
    const choice = await runtimes.choose(values.runtime ?? "auto");
    const factory = choice.factory;

    const model = await loadModelDir(values.model);
    const tokenizer = await loadTokenizer(model.files);
    const prompt = await promptTokens(text, values, tokenizer, model);
    const sampling = samplingOptions(flags, model);
    const runtime = await factory.create({
      model,
      kvDtype,
      weightFormat,
      threads,
      // Reserve what this run can use: the prompt plus the tokens asked for, within the model's
      // context (the driver refuses a prompt that leaves no room).
      maxPositions: Math.min(prompt.length + maxTokens, model.config.maxPositionEmbeddings),
    });

    const chunkTokens = chunkFlag ?? runtime.info.preferredChunkTokens ?? DEFAULT_CHUNK_TOKENS;
    const masterKeys = await snapshotKeys(io.env);
    const prefixCache =
      values.store === undefined
        ? undefined
        : createSnapshotCache({
            store: openStore(values.store === "default" ? undefined : values.store, {
              env: io.env,
            }),
            modelFingerprint: await model.fingerprint(),
            kvLayout: runtime.info.kv,
            // One local user: a fixed tenant unless the environment names one.
            tenantSalt: io.env.ULTRALONG_SNAPSHOT_TENANT || "local",
            chunkTokens,
            encryption: masterKeys.length ? { masterKeys } : undefined,
            sha256: nodeSha256,
            logger: {
              debug() {},
              warn: (m, d) =>
                io.stderr.write(`snapshots: ${m}${d ? ` ${JSON.stringify(d)}` : ""}\n`),
            },
          });

    const controller = new AbortController();
    const onSigint = () => controller.abort();
    process.once("SIGINT", onSigint);
    const stderrTty = Boolean((io.stderr as { isTTY?: boolean }).isTTY);
    const showProgress = values.progress === true || stderrTty;
    const bar = showProgress ? new ProgressBar(io.stderr, stderrTty) : null;
    // With "auto", say what was picked and why each better runtime was passed over.
    if (showProgress && choice.skipped.length) io.stderr.write(`${describeChoice(choice)}\n`);
    if (showProgress && runtime.info.sizing) io.stderr.write(`${runtime.info.sizing}\n`);
    try {
      const driver = new SequenceDriver(runtime, { eosTokenIds: eosTokenIds(model) });
      const request: GenerateRequest = {
        prompt,
        maxTokens,
        sampling,
        stop: values.stop,
        ignoreEos: values["ignore-eos"],
        chunkTokens: chunkFlag,
        prefixCache,
        decoder: tokenTextDecoder(tokenizer.createDecoder({ skipSpecialTokens: true })),
        signal: controller.signal,
      };
      let last: DriverEvent | undefined;
      for await (const event of driver.generate(request)) {
        last = event;
        if (event.type === "progress") {
          bar?.update(event);
        } else if (event.type === "token") {
          bar?.clear();
          if (event.text) io.stdout.write(event.text);
        }
      }
      io.stdout.write("\n");
      if (showProgress && last?.type === "done") {
        const { usage, timings, finishReason } = last;
        const rate = (n: number, ms: number) => (ms > 0 ? ((n * 1000) / ms).toFixed(1) : "?");
        io.stderr.write(
          `[${runtime.info.name}] prompt ${usage.promptTokens} tokens (${usage.cachedTokens} cached), ` +
            `prefill ${rate(timings.prefillTokens, timings.prefillMs)} tok/s, ` +
            `${usage.completionTokens} generated at ${rate(timings.decodeTokens, timings.decodeMs)} tok/s, ` +
            `finish: ${finishReason}\n`,
        );
      }
      return 0;
    } finally {
      process.removeListener("SIGINT", onSigint);
      await prefixCache?.flush();
      await runtime.close();
    }
  },
};
