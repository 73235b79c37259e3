// `npm run bench -- sampling [--vocab N] [--reps N]`: the time to pick one token from one row of
// logits, per sampler setting, for core/engine/sampling.ts's Sampler (what the driver runs per
// sequence between decode steps, on the main thread) against the textbook sampler measured in the
// same run.
//
// Why it matters: the sampler runs once per sequence per step, so a batched step of 16 sequences
// waits for 16 of them, and on a GPU (a decode step of a few ms) or the 2-core wasm runtime (whose
// main thread shares the cores with the shards) the sampler is on the step's critical path.
//
// The textbook sampler (written here, independent of ours) is what Hugging Face's generate and
// llama.cpp's dist sampler do: an exp of every id (softmax in f64), the filters by one sort of the
// whole vocabulary (top-k, then top-p's cumulative mass, min-p against the max), then an inverse
// CDF. Greedy is one scan on both sides.
//
// Logits: Llama 3's 128,256-id vocabulary (`--vocab`), eight rows of each of two shapes: "flat"
// (normal, sd 1: what a generated model's random weights give, so top-p keeps most of the
// vocabulary) and "peaky" (sd 4: a few likely ids and a long tail, closer to a trained model).
// Each setting's figure is the mean over `--reps` draws (default 200) after 50 unmeasured ones
// (the textbook's: a tenth of them, at least 10, after 5). The repetition penalty applies to a
// 512-id prompt on both sides (ours also to the row's earlier outputs: a few ids more).
// Prints one JSON object: per setting and shape, ours and the textbook's ms per token and
// textbook / ours (> 1: ours is faster).

import { createRng, Sampler, type SamplingOptions } from "../../core/engine/sampling.ts";
import { InvalidInputError } from "../../core/errors.ts";

/** The ids the repetition penalty applies to on both sides (a prompt's; the outputs add a few). */
const PROMPT = Array.from({ length: 512 }, (_, i) => (i * 7919 + 13) % 128000);

const SETTINGS: [string, SamplingOptions][] = [
  ["greedy", { temperature: 0 }],
  ["temperature 1 (the OpenAI default)", { temperature: 1 }],
  ["temperature 0.7", { temperature: 0.7 }],
  ["top-p 0.9", { temperature: 1, topP: 0.9 }],
  ["top-k 40", { temperature: 1, topK: 40 }],
  ["min-p 0.05", { temperature: 1, minP: 0.05 }],
  ["repetition penalty 1.1", { temperature: 1, repetitionPenalty: 1.1 }],
  ["logprobs 5", { temperature: 1, logprobs: 5 }],
];

/** The textbook sampler: softmax over every id, filters by a full sort, inverse CDF. */
function textbook(raw: Float32Array, o: SamplingOptions, u: number, seen: number[]): number {
  const V = raw.length;
  const T = o.temperature ?? 1;
  let logits = raw;
  if ((o.repetitionPenalty ?? 1) !== 1) {
    const r = o.repetitionPenalty ?? 1;
    logits = raw.slice();
    for (const i of seen) logits[i] = logits[i] > 0 ? logits[i] / r : logits[i] * r;
  }
  if (T === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < V; i++) max = Math.max(max, logits[i] / T);
  const p = new Float64Array(V);
  let z = 0;
  for (let i = 0; i < V; i++) z += p[i] = Math.exp(logits[i] / T - max);
  if (o.logprobs) {
    // log-softmax of the raw logits and the top N by one pass of selection (as torch.topk).
    let rawMax = Number.NEGATIVE_INFINITY;
    for (let i = 0; i < V; i++) rawMax = Math.max(rawMax, logits[i]);
    let rawZ = 0;
    for (let i = 0; i < V; i++) rawZ += Math.exp(logits[i] - rawMax);
    const top: number[] = [];
    for (let i = 0; i < V; i++) {
      if (top.length === o.logprobs && logits[i] <= logits[top[top.length - 1]]) continue;
      top.push(i);
      top.sort((a, b) => logits[b] - logits[a]);
      if (top.length > o.logprobs) top.pop();
    }
    sink += top[0] + Math.log(rawZ);
  }
  let ids: number[] | null = null;
  if (o.topK || (o.topP ?? 1) < 1 || o.minP) {
    ids = Array.from({ length: V }, (_, i) => i).sort((a, b) => p[b] - p[a] || a - b);
    if (o.minP) ids = ids.filter((i) => p[i] >= (o.minP ?? 0));
    if (o.topK && ids.length > o.topK) {
      // Ties with the k-th are kept, as Hugging Face's top-k warper keeps them.
      const kth = p[ids[o.topK - 1]];
      ids = ids.filter((i, n) => n < o.topK! || p[i] === kth);
    }
    if ((o.topP ?? 1) < 1) {
      let kept = 0;
      for (const i of ids) kept += p[i];
      let before = 0;
      let n = 0;
      while (n < ids.length && before < (o.topP ?? 1) * kept) before += p[ids[n++]];
      ids = ids.slice(0, Math.max(n, 1));
    }
    z = 0;
    for (const i of ids) z += p[i];
  }
  const target = u * z;
  let acc = 0;
  if (ids) {
    for (const i of ids) if (target < (acc += p[i])) return i;
    return ids[ids.length - 1];
  }
  for (let i = 0; i < V; i++) if (target < (acc += p[i])) return i;
  return V - 1;
}

function rows(vocab: number, sd: number, seed: number): Float32Array[] {
  const rng = createRng(seed);
  return Array.from({ length: 8 }, () =>
    Float32Array.from({ length: vocab }, () => {
      // Box-Muller.
      const r = Math.sqrt(-2 * Math.log(1 - rng()));
      return sd * r * Math.cos(2 * Math.PI * rng());
    }),
  );
}

/** Keeps the textbook's logprobs from being optimised away. */
let sink = 0;

function timeMs(reps: number, f: (i: number) => void, warm = 50): number {
  for (let i = 0; i < warm; i++) f(i);
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) f(i);
  return (performance.now() - t0) / reps;
}

export default async function main(args: string[]): Promise<void> {
  let vocab = 128256;
  let reps = 200;
  for (let i = 0; i < args.length; i++) {
    const value = Number(args[i + 1]);
    if (
      (args[i] === "--vocab" || args[i] === "--reps") &&
      Number.isSafeInteger(value) &&
      value > 0
    ) {
      if (args[i] === "--vocab") vocab = value;
      else reps = value;
      i++;
    } else {
      throw new InvalidInputError(
        `unknown argument or bad value '${args[i]}' (--vocab N, --reps N: positive integers)`,
      );
    }
  }
  const shapes: [string, Float32Array[]][] = [
    ["flat (sd 1)", rows(vocab, 1, 1)],
    ["peaky (sd 4)", rows(vocab, 4, 2)],
  ];
  const round = (x: number) => Number(x.toPrecision(3));
  const results = [];
  for (const [setting, o] of SETTINGS) {
    for (const [shape, data] of shapes) {
      const sampler = new Sampler({ ...o, seed: 1 }, vocab);
      sampler.addPrompt(PROMPT);
      const ours = timeMs(reps, (i) => sampler.sample(data[i % 8]));
      const u = createRng(2);
      // The textbook's sorts are slow: a tenth of the draws (at least 10) after 5 unmeasured.
      const peer = timeMs(
        Math.max(10, Math.floor(reps / 10)),
        (i) => textbook(data[i % 8], o, u(), PROMPT),
        5,
      );
      results.push({
        setting,
        options: o,
        logits: shape,
        oursMsPerToken: round(ours),
        textbookMsPerToken: round(peer),
        textbookOverOurs: round(peer / ours),
      });
      console.error(`sampling: ${setting}, ${shape} done`);
    }
  }
  console.log(
    JSON.stringify(
      {
        bench: "sampling",
        vocab,
        reps,
        ours: "core/engine/sampling.ts Sampler.sample, one row of logits per call",
        textbook:
          "softmax of every id in f64, the filters by a sort of the vocabulary, inverse CDF (as Hugging Face's generate and llama.cpp's dist sampler)",
        ratioMeaning: "textbook / ours: > 1 means ours takes less time per token",
        results,
        sink: Number.isFinite(sink),
      },
      null,
      2,
    ),
  );
}
