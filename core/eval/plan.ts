// Which trials a run makes, each one's text from its own seed, and the order they run in.
//
// Order: prompts that share a prefix should not compute it twice. Trials of one sample draw their
// haystack from one stream, so a trial's prompt shares BOS + intro + haystack up to its first
// needle with every other trial of that stream and intro. The trial with the longest such prefix
// in each group runs first, alone with the other groups' leaders, so its KV snapshots exist before
// the rest ask for them; the rest follow, longest prefix first.

import { createRng, type Rng } from "../engine/sampling.ts";
import type { Task, TrialText } from "./tasks.ts";

export interface TrialPlan {
  task: Task;
  length: number;
  /** Percent, or null for a task without depth. */
  depth: number | null;
  sample: number;
  text: TrialText;
  /** Trials of one group share a haystack stream and intro. */
  group: string;
  /** Tokens of the prefix this trial shares with its group (an estimate: needles not counted). */
  prefix: number;
}

/** FNV-1a over the string: a 32-bit seed from a trial's coordinates. */
function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** The random stream of a name under the run's seed. */
export function seededRng(seed: number, name: string): Rng {
  return createRng(hash32(`${seed}|${name}`) * 2 ** 21 + (seed % 2 ** 21));
}

export function planTrials(
  tasks: readonly Task[],
  lengths: readonly number[],
  depths: readonly number[],
  samples: number,
  seed: number,
): TrialPlan[] {
  const out: TrialPlan[] = [];
  for (const task of tasks) {
    for (let sample = 0; sample < samples; sample++) {
      for (const length of lengths) {
        for (const depth of task.usesDepth ? depths : [null]) {
          const rng = seededRng(seed, `${task.name}|${length}|${depth ?? "-"}|${sample}`);
          const text = task.make(rng, (depth ?? 0) / 100);
          // A task with its own haystack shares nothing past its intro with any other trial.
          const own = text.haystack !== undefined;
          const first = text.needles.length ? Math.min(...text.needles.map((n) => n.depth)) : 1;
          out.push({
            task,
            length,
            depth,
            sample,
            text,
            group: own ? `${task.name}|${length}|${sample}` : `hay ${sample}|${text.intro}`,
            prefix: own ? 0 : Math.floor(first * length),
          });
        }
      }
    }
  }
  return out;
}

/** Leaders (one per group, the longest prefix) to run first, then the rest, longest prefix first. */
export function orderTrials(plans: readonly TrialPlan[]): {
  leaders: TrialPlan[];
  rest: TrialPlan[];
} {
  const sorted = [...plans].sort((a, b) => b.prefix - a.prefix);
  const seen = new Set<string>();
  const leaders: TrialPlan[] = [];
  const rest: TrialPlan[] = [];
  for (const p of sorted) {
    if (seen.has(p.group)) rest.push(p);
    else {
      seen.add(p.group);
      leaders.push(p);
    }
  }
  return { leaders, rest };
}
