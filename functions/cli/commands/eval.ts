// `ultralong eval niah|ruler --url URL`: long-context retrieval against any OpenAI-compatible server
// (docs/evaluation.md). Prompts are made here from a seed, cut to exact token counts with the
// server's own tokenizer; results go to OUT/trials.jsonl (resumable), OUT/*.svg and *.png, and a
// table on stdout.

import { readFile } from "node:fs/promises";
import { InvalidInputError } from "../../../core/errors.ts";
import { fileUnits } from "../../../core/eval/file-haystack.ts";
import { parseDepths, parseLengths } from "../../../core/eval/grid.ts";
import { suiteTasks, TASKS, type Task } from "../../../core/eval/tasks.ts";
import { EvalClient } from "../../eval/client.ts";
import { Progress } from "../../eval/progress.ts";
import { writeReport } from "../../eval/report.ts";
import { runEval } from "../../eval/run.ts";
import { TrialStore } from "../../eval/store.ts";
import { type Command, intOption, onePositional, parseCommandArgs } from "../command.ts";

const usage = `usage: ultralong eval niah|ruler --url URL [options]

Needle-in-a-haystack (niah: passkey, number, uuid) or RULER-style tasks (ruler: those and
multikey, multivalue, multiquery, vt, cwe, fwe) against an OpenAI-compatible server. Prompts are
generated from --seed and cut to exact token counts with the server's tokenizer (/v1/tokenize, or
vLLM's /tokenize). Each finished trial is a line of OUT/trials.jsonl; a rerun skips those.

options:
  --url URL          base URL, with or without /v1 (ultralong serve's, a deployed edge's, vLLM's)
  --api-key KEY      bearer key (default: $ULTRALONG_API_KEY, then $OPENAI_API_KEY)
  --model ID         model id (default: the first one /v1/models lists)
  --lengths L        prompt lengths in tokens, e.g. 1k,4k,16k,128k,1M (k = 1024; default 1k,4k,16k)
  --depths D         needle depths in percent: start:stop:step or a list
                     (default 0:100:10 for niah, 0:100:25 for ruler)
  --tasks T          comma-separated subset of the suite's tasks
  --samples N        trials per length, depth and task (default 1)
  --seed N           seed of every needle, key and haystack (default 0)
  --haystack FILE    haystack from a UTF-8 text file (repeated as needed) instead of generated filler
  --api A            completions (default: token-id prompts, exact lengths) | chat (one user
                     message of text; lengths within one sentence of the target)
  --max-tokens N     output tokens per trial (default: from the answer's length)
  --concurrency N    requests at once (default 2)
  --retries N        retries of a busy (429, 502-504) or dropped request (default 5)
  --out DIR          results directory (default eval-niah or eval-ruler)
  --no-png           SVG only
`;

function pickTasks(suite: "niah" | "ruler", spec: string | undefined): Task[] {
  const allowed = suiteTasks(suite);
  if (spec === undefined) return allowed;
  const names = spec.split(",").map((s) => s.trim());
  return names.map((n) => {
    const t = allowed.find((x) => x.name === n);
    if (!t) {
      const where = TASKS.some((x) => x.name === n) ? ` (it is a ruler task)` : "";
      throw new InvalidInputError(
        `--tasks: '${n}' is not a ${suite} task${where}; ${suite} has ${allowed.map((x) => x.name).join(", ")}`,
      );
    }
    return t;
  });
}

export const command: Command = {
  usage,
  async run(argv, io) {
    const { values, positionals } = parseCommandArgs(argv, {
      url: { type: "string" },
      "api-key": { type: "string" },
      model: { type: "string" },
      lengths: { type: "string" },
      depths: { type: "string" },
      tasks: { type: "string" },
      samples: { type: "string" },
      seed: { type: "string" },
      haystack: { type: "string" },
      api: { type: "string" },
      "max-tokens": { type: "string" },
      concurrency: { type: "string" },
      retries: { type: "string" },
      out: { type: "string" },
      "no-png": { type: "boolean" },
    });
    const suite = onePositional(positionals, "suite (niah or ruler)");
    if (suite !== "niah" && suite !== "ruler") {
      throw new InvalidInputError(`unknown suite '${suite}': niah or ruler`);
    }
    if (!values.url) throw new InvalidInputError("--url URL is required (see --help)");
    const api = values.api ?? "completions";
    if (api !== "completions" && api !== "chat") {
      throw new InvalidInputError(`--api must be completions or chat, got '${api}'`);
    }
    const tasks = pickTasks(suite, values.tasks);
    const lengths = parseLengths(values.lengths ?? "1k,4k,16k");
    const depths = parseDepths(values.depths ?? (suite === "niah" ? "0:100:10" : "0:100:25"));
    const positive = (name: string, v: string | undefined, dflt: number) => {
      const n = intOption(name, v) ?? dflt;
      if (n < 1) throw new InvalidInputError(`--${name} must be at least 1`);
      return n;
    };
    const samples = positive("samples", values.samples, 1);
    const concurrency = positive("concurrency", values.concurrency, 2);
    const maxTokens =
      values["max-tokens"] === undefined
        ? undefined
        : positive("max-tokens", values["max-tokens"], 1);
    const seed = intOption("seed", values.seed) ?? 0;
    const retries = intOption("retries", values.retries) ?? 5;
    const units = values.haystack
      ? fileUnits(
          await readFile(values.haystack, "utf8").catch((err: Error) => {
            throw new InvalidInputError(`--haystack ${values.haystack}: ${err.message}`);
          }),
          values.haystack,
        )
      : undefined;
    const out = values.out ?? `eval-${suite}`;

    const progress = new Progress(io.stderr);
    const client = new EvalClient({
      url: values.url,
      apiKey: values["api-key"] ?? io.env.ULTRALONG_API_KEY ?? io.env.OPENAI_API_KEY,
      retries,
      onRetry: (why, ms) => progress.retry(why, ms),
    });
    const models = await client.models();
    const model = values.model ?? models[0]?.id;
    if (!model) throw new InvalidInputError(`${client.v1}/models lists no model: pass --model`);
    const limit = models.find((m) => m.id === model)?.maxModelLen ?? null;
    const longest = lengths[lengths.length - 1];
    // The answer's room: --max-tokens, else 64 (a UUID through a byte-level tokenizer needs 55).
    const room = maxTokens ?? 64;
    if (limit !== null && longest + room > limit) {
      throw new InvalidInputError(
        `--lengths ${longest} does not fit: ${model} takes ${limit} tokens on this server, prompt and ${room} output tokens`,
      );
    }
    const store = await TrialStore.open(out, {
      seed,
      api,
      haystack: values.haystack ?? "generated",
      model,
    });
    const records = await runEval(
      {
        tasks,
        lengths,
        depths,
        samples,
        seed,
        api,
        model,
        fileUnits: units,
        maxTokens,
        concurrency,
      },
      client,
      store,
      progress,
    );
    const report = await writeReport(records, { suite, out, model, png: !values["no-png"] });
    io.stdout.write(report.text);
    io.stdout.write(
      `results: ${store.file}\n${report.files.map((f) => `picture: ${f}`).join("\n")}\n`,
    );
    return 0;
  },
};
