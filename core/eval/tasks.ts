// The evaluation tasks, generated from a seed: needle-in-a-haystack (niah) and RULER-style (ruler,
// Hsieh et al. 2024, "RULER: What's the real context size of your long-context language models?").
// A task makes one trial's text: the needles and where they go, the question, and the answers the
// output is scored against. Every question ends with the needle's own words up to the value ("...
// The pass key is:"), so a completion model continues with the value and a chat model can answer in
// a sentence; both are scored by whether each answer appears in the output (RULER's string match).
//
//   passkey     one needle, a 5-digit pass key in filler (Mohtashami & Jaggi's passkey test)
//   number      one needle, a 7-digit "special magic number" under a key
//   uuid        one needle, a UUID under a key (36 characters to copy exactly)
//   multikey    four keys, four numbers; the question names one (distractors of the same form)
//   multivalue  one key with four numbers; all four are asked for
//   multiquery  four keys; all four numbers are asked for
//   vt          variable tracking: VAR A = 12345, then VAR B = VAR A, ... ; which names hold 12345?
//   cwe         common-word extraction: a list where ten words recur; name the ten
//   fwe         frequent-word extraction: coded words drawn Zipf-like; name the three most frequent

import type { Rng } from "../engine/sampling.ts";
import { KEY_ADJECTIVES, KEY_WORDS, SYLLABLES } from "./words.ts";

export interface Needle {
  /** The sentence, with its leading space. */
  text: string;
  /** Where it goes, as a fraction of the haystack (0 = first, 1 = last). */
  depth: number;
}

export interface TrialText {
  /** Text before the haystack (a task's instructions); "" for none. */
  intro: string;
  needles: Needle[];
  /** Text after the haystack: the question and the start of the answer. */
  question: string;
  /** Strings the output must contain; a trial scores the share it contains. */
  answers: string[];
  /**
   * The haystack, when the task brings its own (word lists) instead of filler: an endless stream of
   * pieces, and the answers computed from the pieces that fit.
   */
  haystack?: { pieces: () => Iterator<string>; answers: (used: string[]) => string[] };
}

export interface Task {
  name: string;
  suite: "niah" | "ruler";
  /** Whether the needle depth is a dimension of this task (false: one depth, "-", per length). */
  usesDepth: boolean;
  /** One trial at `depth` (0..1; ignored when !usesDepth). */
  make(rng: Rng, depth: number): TrialText;
}

function int(rng: Rng, lo: number, hi: number): number {
  return lo + Math.floor(rng() * (hi - lo));
}

function pick<T>(rng: Rng, list: readonly T[]): T {
  return list[Math.floor(rng() * list.length)];
}

function keys(rng: Rng, n: number): string[] {
  const out = new Set<string>();
  while (out.size < n) out.add(`${pick(rng, KEY_ADJECTIVES)}-${pick(rng, KEY_WORDS)}`);
  return [...out];
}

function uuid(rng: Rng): string {
  const h = Array.from({ length: 32 }, () => "0123456789abcdef"[int(rng, 0, 16)]).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const number7 = (rng: Rng) => String(int(rng, 1_000_000, 10_000_000));

const magicNeedle = (kind: string, key: string, value: string) =>
  ` The special magic ${kind} for ${key} is: ${value}.`;
const magicQuestion = (kind: string, key: string) =>
  ` What is the special magic ${kind} for ${key}? The special magic ${kind} for ${key} is:`;

function keyed(name: string, kind: string, make: (rng: Rng) => string): Task {
  return {
    name,
    suite: "niah",
    usesDepth: true,
    make(rng, depth) {
      const [key] = keys(rng, 1);
      const value = make(rng);
      return {
        intro: "",
        needles: [{ text: magicNeedle(kind, key, value), depth }],
        question: magicQuestion(kind, key),
        answers: [value],
      };
    },
  };
}

const passkey: Task = {
  name: "passkey",
  suite: "niah",
  usesDepth: true,
  make(rng, depth) {
    const v = String(int(rng, 10_000, 100_000));
    return {
      intro: "",
      needles: [{ text: ` The pass key is: ${v}. Remember it. ${v} is the pass key.`, depth }],
      question: " What is the pass key? The pass key is:",
      answers: [v],
    };
  },
};

/**
 * A RULER task over four number needles (the first at `depth`, the rest at random depths): keys are
 * distinct, or one key for all four (multivalue); `ask` makes the question and its answers.
 */
function fourNumbers(
  name: string,
  distinctKeys: boolean,
  ask: (ks: string[], values: string[]) => { question: string; answers: string[] },
): Task {
  return {
    name,
    suite: "ruler",
    usesDepth: true,
    make(rng, depth) {
      const ks = distinctKeys ? keys(rng, 4) : Array(4).fill(keys(rng, 1)[0]);
      const values = ks.map(() => number7(rng));
      const needles = values.map((v, i) => ({
        text: magicNeedle("number", ks[i], v),
        depth: i === 0 ? depth : rng(),
      }));
      return { intro: "", needles, ...ask(ks, values) };
    },
  };
}

const joinKeys = (ks: string[]) => `${ks.slice(0, -1).join(", ")} and ${ks[ks.length - 1]}`;

const multikey = fourNumbers("multikey", true, (ks, values) => ({
  question: magicQuestion("number", ks[0]),
  answers: [values[0]],
}));

const multivalue = fourNumbers("multivalue", false, ([key], values) => ({
  question: ` What are all the special magic numbers for ${key}? The special magic numbers for ${key} are:`,
  answers: values,
}));

const multiquery = fourNumbers("multiquery", true, (ks, values) => ({
  question: ` What are the special magic numbers for ${joinKeys(ks)}? The special magic numbers for ${joinKeys(ks)} are:`,
  answers: values,
}));

function varName(rng: Rng): string {
  return Array.from({ length: 5 }, () => "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[int(rng, 0, 26)]).join("");
}

/** Variable tracking: one chain of five names spread evenly through the haystack. */
const vt: Task = {
  name: "vt",
  suite: "ruler",
  usesDepth: false,
  make(rng) {
    const names = new Set<string>();
    while (names.size < 5) names.add(varName(rng));
    const [first, ...rest] = [...names];
    const value = String(int(rng, 10_000, 100_000));
    const chain = [` VAR ${first} = ${value}.`];
    let prev = first;
    for (const n of rest) {
      chain.push(` VAR ${n} = VAR ${prev}.`);
      prev = n;
    }
    return {
      intro: "Memorize and track the chain(s) of variable assignment hidden in the following text.",
      needles: chain.map((text, i) => ({ text, depth: (i + 0.5) / chain.length })),
      question: ` Question: Find all variables that are assigned the value ${value} in the text above. Answer: According to the chain(s) of variable assignment in the text above, 5 variables are assigned the value ${value}, they are:`,
      answers: [...names],
    };
  },
};

/** `n` distinct made-up words of three syllables. */
function madeUpWords(rng: Rng, n: number): string[] {
  const out = new Set<string>();
  while (out.size < n) out.add(Array.from({ length: 3 }, () => pick(rng, SYLLABLES)).join(""));
  return [...out];
}

/** The `k` most frequent of `used` (ties: the first seen), trailing commas dropped. */
function topWords(used: string[], k: number): string[] {
  const counts = new Map<string, number>();
  for (const p of used) {
    const w = p.trim().replace(/,$/, "");
    counts.set(w, (counts.get(w) ?? 0) + 1);
  }
  return [...counts.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, k)
    .map(([w]) => w);
}

/**
 * Common words: blocks of the ten common words and twenty rare ones (from a pool of 1000, so they
 * recur about 50 times less often), each block shuffled. Ten common words need two blocks to
 * stand out; a length that holds fewer is refused by the trial builder's minimum.
 */
const cwe: Task = {
  name: "cwe",
  suite: "ruler",
  usesDepth: false,
  make(rng) {
    const words = madeUpWords(rng, 1010);
    const common = words.slice(0, 10);
    const rare = words.slice(10);
    const seed = rng;
    return {
      intro:
        "Below is a list of words. In these words, some appear more often than others. Memorize the ones that appear most often.",
      needles: [],
      question:
        " Question: What are the 10 most common words in the above list? Answer: The top 10 words that appear most often in the list are:",
      answers: common,
      haystack: {
        *pieces() {
          for (;;) {
            const block = [...common, ...Array.from({ length: 20 }, () => pick(seed, rare))];
            for (let i = block.length - 1; i > 0; i--) {
              const j = int(seed, 0, i + 1);
              [block[i], block[j]] = [block[j], block[i]];
            }
            for (const w of block) yield ` ${w},`;
          }
        },
        answers: (used) => topWords(used, 10),
      },
    };
  },
};

/** Frequent words: coded words drawn with probability ~ 1/rank^1.5 from 200; name the top three. */
const fwe: Task = {
  name: "fwe",
  suite: "ruler",
  usesDepth: false,
  make(rng) {
    const words = madeUpWords(rng, 200);
    const weights = words.map((_, i) => 1 / (i + 1) ** 1.5);
    const total = weights.reduce((a, b) => a + b, 0);
    const seed = rng;
    return {
      intro:
        "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words.",
      needles: [],
      question:
        " Question: What are the three most frequently appeared words in the above coded text? Answer: According to the coded text above, the three most frequently appeared words are:",
      answers: words.slice(0, 3),
      haystack: {
        *pieces() {
          for (;;) {
            let u = seed() * total;
            let i = 0;
            while (i < words.length - 1 && u >= weights[i]) u -= weights[i++];
            yield ` ${words[i]}`;
          }
        },
        answers: (used) => topWords(used, 3),
      },
    };
  },
};

export const TASKS: readonly Task[] = [
  passkey,
  keyed("number", "number", number7),
  keyed("uuid", "uuid", uuid),
  multikey,
  multivalue,
  multiquery,
  vt,
  cwe,
  fwe,
];

/** The tasks a suite runs by default: niah's three single needles; ruler's nine. */
export function suiteTasks(suite: "niah" | "ruler"): Task[] {
  return suite === "niah" ? TASKS.filter((t) => t.suite === "niah") : [...TASKS];
}
