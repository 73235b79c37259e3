// The results of a run as JSON lines, one per finished trial, in OUT/trials.jsonl; OUT/meta.json
// holds what every line depends on (seed, API, haystack, model), so a rerun with the same settings
// skips the trials already there and a rerun with other settings is refused instead of mixed in.
// A line cut short by a crash is ignored (that trial runs again).

import { appendFile, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { InvalidInputError } from "../../core/errors.ts";

export interface TrialRecord {
  task: string;
  /** Target prompt length in tokens. */
  length: number;
  /** Needle depth in percent; null for tasks without one (vt, cwe, fwe). */
  depth: number | null;
  sample: number;
  /** Prompt tokens as the server counted them (usage), else as sent. */
  prompt_tokens: number;
  /** Prompt tokens the server served from cache (usage.prompt_tokens_details.cached_tokens). */
  cached_tokens: number | null;
  ttft_ms: number | null;
  total_ms: number;
  /** Share of the answers found in the output, 0..1. */
  score: number;
  answers: string[];
  output: string;
  /** Prompt token offset of each needle. */
  needle_at: number[];
  max_tokens: number;
  finish_reason: string | null;
  retries: number;
}

/** What the lines of one results directory share; a rerun must match it. */
export interface RunMeta {
  seed: number;
  api: "completions" | "chat";
  haystack: string;
  model: string;
}

export function trialKey(r: Pick<TrialRecord, "task" | "length" | "depth" | "sample">): string {
  return `${r.task}|${r.length}|${r.depth ?? "-"}|${r.sample}`;
}

export class TrialStore {
  private writing: Promise<void> = Promise.resolve();

  private constructor(
    readonly file: string,
    /** Finished trials by trialKey. */
    readonly done: Map<string, TrialRecord>,
  ) {}

  /** Opens (or starts) the results in `dir`; refuses a directory written with other settings. */
  static async open(dir: string, meta: RunMeta): Promise<TrialStore> {
    await mkdir(dir, { recursive: true });
    const metaFile = join(dir, "meta.json");
    const old = await readFile(metaFile, "utf8").catch(() => null);
    if (old !== null) {
      let prev: RunMeta;
      try {
        prev = JSON.parse(old) as RunMeta;
      } catch {
        throw new InvalidInputError(`${metaFile} is not JSON: use another --out`);
      }
      for (const k of ["seed", "api", "haystack", "model"] as const) {
        if (prev[k] !== meta[k]) {
          throw new InvalidInputError(
            `${dir} holds results made with ${k} ${JSON.stringify(prev[k])}, not ${JSON.stringify(meta[k])}: use another --out`,
          );
        }
      }
    } else await writeFile(metaFile, `${JSON.stringify(meta, null, 2)}\n`);
    const file = join(dir, "trials.jsonl");
    const done = new Map<string, TrialRecord>();
    const text = await readFile(file, "utf8").catch(() => "");
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      try {
        const r = JSON.parse(line) as TrialRecord;
        if (typeof r.task === "string" && typeof r.score === "number") done.set(trialKey(r), r);
      } catch {
        // a line cut short by a crash: that trial runs again
      }
    }
    if (text && !text.endsWith("\n")) await appendFile(file, "\n");
    return new TrialStore(file, done);
  }

  /** Appends one finished trial (appends are serialized: lines never interleave). */
  append(r: TrialRecord): Promise<void> {
    this.done.set(trialKey(r), r);
    this.writing = this.writing.then(() => appendFile(this.file, `${JSON.stringify(r)}\n`));
    return this.writing;
  }
}
