// One eval run: plan the trials, skip those the results directory already holds, build each prompt
// at its exact length from the server's own token ids, run the leaders of each shared prefix first
// and the rest after (core/eval/plan.ts), at most `concurrency` at a time, and append each result as
// it finishes (store.ts), so a run cut off anywhere resumes where it stopped.

import { cycle } from "../../core/eval/file-haystack.ts";
import { fillerStream } from "../../core/eval/filler.ts";
import { HayStream, PieceTokens } from "../../core/eval/haystack.ts";
import { orderTrials, planTrials, seededRng, type TrialPlan } from "../../core/eval/plan.ts";
import { buildPrompt, fixedTokens, type PromptParts } from "../../core/eval/prompt.ts";
import { scoreOutput } from "../../core/eval/score.ts";
import type { Task } from "../../core/eval/tasks.ts";
import type { EvalClient } from "./client.ts";
import type { Progress } from "./progress.ts";
import { type TrialRecord, type TrialStore, trialKey } from "./store.ts";

export interface EvalOptions {
  tasks: Task[];
  lengths: number[];
  /** Percents. */
  depths: number[];
  samples: number;
  seed: number;
  api: "completions" | "chat";
  model: string;
  /** Units of the user's haystack file, or undefined for generated filler. */
  fileUnits?: string[];
  /** Output tokens per trial; default from the answers' token count. */
  maxTokens?: number;
  concurrency: number;
}

/** Runs every trial not yet in `store`; resolves to every record the store holds for this grid. */
export async function runEval(
  o: EvalOptions,
  client: EvalClient,
  store: TrialStore,
  progress: Progress,
): Promise<TrialRecord[]> {
  const pieces = new PieceTokens((text) => client.tokenize(o.model, text));
  const bos = o.api === "completions" ? await bosIds(client, o.model) : [];
  // A chat prompt's template adds tokens around the message; the haystack leaves room for them.
  const reserve = o.api === "chat" ? await chatOverhead(client, o.model) : 0;
  const streams = new Map<string, HayStream>();
  const sampleStream = (sample: number) => {
    let s = streams.get(`hay ${sample}`);
    if (!s) {
      const it: Iterator<string[]> = o.fileUnits
        ? (function* (units) {
            for (const u of cycle(units)) yield [u];
          })(o.fileUnits)
        : fillerStream(seededRng(o.seed, `hay|${sample}`));
      s = new HayStream(() => pieces.unit(it.next().value as string[]));
      streams.set(`hay ${sample}`, s);
    }
    return s;
  };

  const plans = planTrials(o.tasks, o.lengths, o.depths, o.samples, o.seed);
  const todo = plans.filter((p) => !store.done.has(key(p)));
  const { leaders, rest } = orderTrials(todo);
  progress.start(plans.length, plans.length - todo.length);

  const runOne = async (p: TrialPlan) => {
    const t = p.text;
    const parts: PromptParts = {
      bos,
      intro: await pieces.unit(t.intro ? [t.intro] : []),
      needles: await Promise.all(
        t.needles.map(async (n) => ({ unit: await pieces.unit([n.text]), depth: n.depth })),
      ),
      question: await pieces.unit([t.question]),
    };
    const length = p.length - reserve;
    const budget = length - fixedTokens(parts);
    let stream: HayStream;
    if (t.haystack) {
      const it = t.haystack.pieces();
      stream = new HayStream(() => pieces.unit([it.next().value as string]));
    } else stream = sampleStream(p.sample);
    // One unit more than the budget, so an exact cut always has a unit to cut.
    await stream.ensure(Math.max(0, budget) + 1);
    const built = buildPrompt(
      parts,
      stream.units,
      stream.offsets,
      p.length,
      o.api === "completions",
    );
    const answers = t.haystack ? t.haystack.answers(built.used) : t.answers;
    const maxTokens =
      o.maxTokens ?? Math.ceil((await pieces.get(` ${answers.join(", ")}`)).length * 1.25) + 8;
    const res = await client.complete({
      model: o.model,
      prompt: o.api === "completions" ? built.ids : built.text,
      maxTokens,
    });
    const rec: TrialRecord = {
      task: p.task.name,
      length: p.length,
      depth: p.depth,
      sample: p.sample,
      prompt_tokens: res.promptTokens ?? built.ids.length,
      cached_tokens: res.cachedTokens,
      ttft_ms: res.ttftMs === null ? null : Math.round(res.ttftMs),
      total_ms: Math.round(res.totalMs),
      score: scoreOutput(res.text, answers),
      answers,
      output: res.text,
      needle_at: built.needleAt,
      max_tokens: maxTokens,
      finish_reason: res.finishReason,
      retries: res.retries,
    };
    await store.append(rec);
    progress.done(rec);
  };

  await pool(leaders, o.concurrency, runOne);
  await pool(rest, o.concurrency, runOne);
  progress.end();
  const wanted = new Set(plans.map(key));
  return [...store.done.values()].filter((r) => wanted.has(trialKey(r)));
}

const key = (p: TrialPlan) => trialKey({ ...p, task: p.task.name });

/** The ids the server's tokenizer puts before a text (BOS): tokenize with and without specials. */
async function bosIds(client: EvalClient, model: string): Promise<number[]> {
  const plain = await client.tokenize(model, "a", false);
  const special = await client.tokenize(model, "a", true);
  const n = special.length - plain.length;
  const tail = special.slice(n);
  return n > 0 && tail.every((id, i) => id === plain[i]) ? special.slice(0, n) : [];
}

/** Tokens the chat template puts around a one-message chat (0 if the server cannot say). */
async function chatOverhead(client: EvalClient, model: string): Promise<number> {
  const plain = await client.tokenize(model, "a", false);
  const chat = await client.tokenize(model, "a", false, true).catch(() => plain);
  return Math.max(0, chat.length - plain.length);
}

/** Runs `work` over `items`, at most `limit` at once; the first failure stops new starts and rejects. */
async function pool<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown = null;
  const lane = async () => {
    while (failed === null && next < items.length) {
      const item = items[next++];
      try {
        await work(item);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
  if (failed !== null) throw failed;
}
