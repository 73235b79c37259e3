// One trial's prompt, at an exact token count: BOS, the task's intro, the haystack with the needles
// between its units, the question. As ids (for /v1/completions: the count is exact, the last
// haystack unit cut at a token) or as text (for /v1/chat/completions: whole units only, so the
// count is at most the target by less than one unit; the server's usage says what it was).

import { InvalidInputError } from "../errors.ts";
import type { Unit } from "./haystack.ts";

export interface PromptParts {
  /** Ids the server's tokenizer puts first (BOS), [] for none; only in id prompts. */
  bos: number[];
  intro: Unit;
  /** Needle units, each with its depth (fraction of the haystack). */
  needles: { unit: Unit; depth: number }[];
  question: Unit;
}

export interface BuiltPrompt {
  ids: number[];
  text: string;
  /** Haystack tokens used. */
  hayTokens: number;
  /** Token offset in the prompt where each needle starts (in needle order). */
  needleAt: number[];
  /** Texts of the haystack units used (a cut unit counts). */
  used: string[];
}

/** Tokens a prompt needs besides its haystack. */
export function fixedTokens(p: PromptParts): number {
  return (
    p.bos.length +
    p.intro.ids.length +
    p.question.ids.length +
    p.needles.reduce((n, x) => n + x.unit.ids.length, 0)
  );
}

/**
 * Builds the prompt of `length` tokens from `units` (with `offsets`, the token offset of each
 * unit's start and one more for the end; they must hold at least the haystack's share). `exact`:
 * cut the last unit at a token so the ids number exactly `length`.
 */
export function buildPrompt(
  p: PromptParts,
  units: readonly Unit[],
  offsets: readonly number[],
  length: number,
  exact: boolean,
): BuiltPrompt {
  const budget = length - fixedTokens(p);
  if (budget < 0) {
    throw new InvalidInputError(
      `a ${length}-token prompt cannot hold this task: its question and needles take ${fixedTokens(p)} tokens`,
    );
  }
  // Units [0, n) fit whole; in exact mode unit n supplies the rest.
  let n = 0;
  while (n < units.length && offsets[n + 1] <= budget) n++;
  const rest = exact ? budget - offsets[n] : 0;
  if (rest > 0 && n >= units.length) throw new Error("assertion failed: haystack too short");
  const hay = exact ? budget : offsets[n];
  // Insertion points: between whole units (a cut unit's piece stays last, before the question, as
  // train_retrieval_model.py lays its sequences out).
  const bounds = offsets.slice(0, n + 1);
  const order = p.needles
    .map((nd, i) => ({ i, at: nearest(bounds, nd.depth * hay) }))
    .sort((a, b) => a.at - b.at || a.i - b.i);

  const ids: number[] = [...p.bos, ...p.intro.ids];
  let text = p.intro.text;
  const used: string[] = [];
  const needleAt = new Array<number>(p.needles.length);
  let u = 0; // next unit to copy
  const copyUntil = (tokenOffset: number) => {
    while (u < n && offsets[u] < tokenOffset) {
      ids.push(...units[u].ids);
      text += units[u].text;
      used.push(units[u].text);
      u++;
    }
    if (tokenOffset === hay && rest > 0 && u === n) {
      ids.push(...units[n].ids.slice(0, rest));
      text += units[n].text; // the text of a cut unit is only indicative: ids are what is sent
      used.push(units[n].text);
      u++;
    }
  };
  for (const { i, at } of order) {
    copyUntil(at);
    needleAt[i] = ids.length;
    ids.push(...p.needles[i].unit.ids);
    text += p.needles[i].unit.text;
  }
  copyUntil(hay);
  ids.push(...p.question.ids);
  text += p.question.text;
  return { ids, text, hayTokens: hay, needleAt, used };
}

/** The value in sorted `bounds` nearest to `x` (the lower one on a tie). */
function nearest(bounds: readonly number[], x: number): number {
  let best = bounds[0];
  for (const b of bounds) if (Math.abs(b - x) < Math.abs(best - x)) best = b;
  return best;
}
