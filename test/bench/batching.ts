// `npm run bench -- batching [--clients 1,4,16,32] [--doc-tokens 8192] [--tokens 32] [--quick]
//   [--max-seqs N[,M]] [--questions N] [--max-prefill-tokens N[,M]] [--staggered]
//   [--temperature T]`: many clients asking different questions about one document, against
// `ultralong serve` over HTTP and against llama.cpp with as many parallel sequences, in one run
// (issue 15, item 6).
//
// A generated Llama model (default issue 15's ~157M-parameter shape, test/support/bench-models.ts;
// `--quick`: 2 layers, hidden 64, a 256-token document, clients 1,4, 8 tokens) is converted to GGUF
// by our converter. The prompt of question q is the document (BOS and doc-tokens - 1 ids spread
// over the ordinary vocabulary) followed by 16 question ids that differ from every other
// question's from the first one. Every cell of C clients asks the same max(clients) questions
// (`--questions N`: N of them, so clients ask several each and new questions arrive while others
// decode: the steady state, where prompt pieces share steps with decode tokens; `--staggered`:
// question q's answer is at most tokens/2 + (7q mod (tokens/2 + 1)) tokens, so clients fall out of
// step and new questions arrive mid-answer), C at a time (test/support/batching-load.ts: each client takes the next question when its answer
// is complete), greedy (`--temperature T`: sampled at T, question q with seed q on both sides, so
// an answer is the same in every cell), `--tokens` tokens at most (an end-of-generation token ends an answer early
// on both sides).
//   ours:  `ultralong serve --runtime wasm --threads 2 --no-store` (a child process, as a user runs
//          it), POST /v1/completions with the ids and stream: true, timed per token at the client.
//          A 429 (queue full) is retried after its Retry-After and counted. The server is started
//          once per value of `--max-seqs` (default 1 and max(clients): one sequence at a time and
//          batched), and of `--max-prefill-tokens` where given (serve's own default otherwise), each with a KV pool (--max-positions) that holds the document once and every
//          sequence's question and answer, and each is measured. A serve whose --help does not
//          list --max-seqs (before batching) is started once, without it, and the JSON says so.
//   peer:  llama.cpp through node-llama-cpp's prebuilt CPU binary, one context with max(clients)
//          sequences and 2 threads (test/support/llama-cpp-parallel.ts); a cell of C clients uses
//          C of them, whose concurrent evaluations llama.cpp decodes in one batch. The document is
//          prefilled on one sequence and its state copied into the others.
// Both hold the document before the cells start: our server keeps the KV of the tenant's last
// prompt and reuses its common prefix (one warm-up request prefills it; its first-token time is
// reported), llama.cpp holds it in each sequence (prefilled once, copied; both timed).
// Figures per cell (same code on both sides): aggregate decode tokens/s (all generated tokens over
// the cell's wall time), time to first token p50/p99 (from the request's first send: queueing,
// retries and the question's prefill included), inter-token latency p50/p99, requests lost, and
// answers wrong: the 1-client cell is always run and is the reference (each question asked alone);
// any other cell's answer that differs from it, in any token's text or the count, is wrong, and
// `wrongFromToken` says from which token on. Our answers are also compared with llama.cpp's (its
// ids through our tokenizer's decoder), reported as `sameAnswersAsLlamaCpp`: the same weights
// through an independent forward pass, but random weights leave near-ties that f16 KV (llama.cpp's
// default) and f32 KV (ours) break differently, and llama.cpp's batched answers are not its answers
// alone (its float sums depend on the batch: they part from token 10 or so), so this is reported,
// not required.
// Ratios are ours / llama.cpp for every figure (> 1 is better for tokens/s, < 1 for latencies),
// plus issue 15's targets. Prints one JSON object; exits 1 if any of our requests is lost or wrong.
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { InvalidInputError } from "../../core/errors.ts";
import { LLAMA31_BOS } from "../../core/model/generate.ts";
import { convertModelDirToGguf } from "../../core/node/gguf.ts";
import { loadModelDir } from "../../core/node/load-model-dir.ts";
import { makeModelDir } from "../../core/node/make-model.ts";
import { loadDirTokenizer } from "../../functions/node/tokenizer-cache.ts";
import { ensureBuilt } from "../../wasm/build.mjs";
import {
  type Answer,
  type CellFigures,
  cellFigures,
  firstDivergence,
  runClients,
} from "../support/batching-load.ts";
import { ISSUE15_MODEL } from "../support/bench-models.ts";
import { loadLlamaCpp } from "../support/llama-cpp.ts";
import { openParallelLlama } from "../support/llama-cpp-parallel.ts";
import { TINY } from "../support/models.ts";
import {
  type BenchServer,
  serveOptions,
  startBenchServe,
  streamCompletion,
} from "../support/serve-client.ts";

const THREADS = 2;
const QUESTION_TOKENS = 16;

interface Settings {
  quick: boolean;
  clients: number[];
  docTokens: number;
  tokens: number;
  /** --max-seqs values asked for, or null (the default). */
  maxSeqs: number[] | null;
  /** Questions per cell (default max(clients)). */
  questions: number;
  /** --max-prefill-tokens values asked for, or null (serve's default). */
  maxPrefill: number[] | null;
  /** --staggered: answers of different lengths per question (maxTokensOf). */
  staggered: boolean;
  /** --temperature: 0 (greedy, the default) or the sampling temperature of every question. */
  temperature: number;
}

/** Question q's answer length: `tokens`, or with --staggered tokens/2 .. tokens, spread over q. */
function maxTokensOf(s: Settings, q: number): number {
  if (!s.staggered) return s.tokens;
  const half = Math.floor(s.tokens / 2);
  return Math.max(2, half + ((7 * q) % (s.tokens - half + 1)));
}

const VALUE_OPTIONS = [
  "--clients",
  "--doc-tokens",
  "--tokens",
  "--max-seqs",
  "--questions",
  "--max-prefill-tokens",
  "--temperature",
];

function intList(name: string, text: string | undefined, min: number): number[] {
  if (text === undefined) throw new InvalidInputError(`${name} needs a value`);
  return text.split(",").map((v) => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min)
      throw new InvalidInputError(`${name} takes integers of at least ${min}, got '${v}'`);
    return n;
  });
}

function parseSettings(args: string[]): Settings {
  const given = new Map<string, string | undefined>();
  let quick = false;
  let staggered = false;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--quick") quick = true;
    else if (args[i] === "--staggered") staggered = true;
    else if (VALUE_OPTIONS.includes(args[i])) given.set(args[i], args[++i]);
    else
      throw new InvalidInputError(
        `unknown argument '${args[i]}' (--quick, --staggered, ${VALUE_OPTIONS.join(", ")})`,
      );
  }
  const one = (name: string, dflt: number, min: number) =>
    given.has(name) ? intList(name, given.get(name), min)[0] : dflt;
  const clients = given.has("--clients")
    ? intList("--clients", given.get("--clients"), 1)
    : quick
      ? [1, 4]
      : [1, 4, 16, 32];
  if (Math.max(...clients) > 256) throw new InvalidInputError("--clients: at most 256");
  const questions = one("--questions", Math.max(...clients), 1);
  if (questions < Math.max(...clients) || questions > 1024) {
    throw new InvalidInputError(
      `--questions: at least the most clients (${Math.max(...clients)}) and at most 1024, got ${questions}`,
    );
  }
  const temperature = given.has("--temperature") ? Number(given.get("--temperature")) : 0;
  if (!Number.isFinite(temperature) || temperature < 0 || temperature > 2) {
    throw new InvalidInputError(
      `--temperature takes a number in [0, 2], got '${given.get("--temperature")}'`,
    );
  }
  return {
    quick,
    temperature,
    // 1 always runs: it is the unloaded figure and the answers asked alone.
    clients: [...new Set([1, ...clients])].sort((a, b) => a - b),
    docTokens: one("--doc-tokens", quick ? 256 : 8192, 2),
    // Two at least, so every answer has an inter-token gap.
    tokens: one("--tokens", quick ? 8 : 32, 2),
    maxSeqs: given.has("--max-seqs") ? intList("--max-seqs", given.get("--max-seqs"), 1) : null,
    questions,
    staggered,
    maxPrefill: given.has("--max-prefill-tokens")
      ? intList("--max-prefill-tokens", given.get("--max-prefill-tokens"), 1)
      : null,
  };
}

/** One way of starting our server: its label in the JSON and the flags it adds. */
interface Mode {
  label: string;
  args: string[];
}

/** Which servers to measure: --max-seqs values, passed only when serve has the flag. */
function modes(s: Settings, serveHas: Set<string>): Mode[] {
  if (!serveHas.has("--max-seqs")) {
    if (s.maxSeqs?.some((n) => n !== 1))
      throw new InvalidInputError(
        "--max-seqs: this `ultralong serve` has no --max-seqs (it runs one sequence at a time); leave it out or pass 1",
      );
    return [
      {
        label: "one sequence at a time (serve has no --max-seqs)",
        args: ["--max-positions", String(kvPositions(s, 1))],
      },
    ];
  }
  if (s.maxPrefill && !serveHas.has("--max-prefill-tokens")) {
    throw new InvalidInputError(
      "--max-prefill-tokens: this `ultralong serve` has no --max-prefill-tokens; leave it out",
    );
  }
  const values = s.maxSeqs ?? [1, Math.max(...s.clients)];
  return [...new Set(values)].flatMap((n) =>
    (s.maxPrefill ?? [null]).map((p) => ({
      label: p === null ? `max-seqs ${n}` : `max-seqs ${n}, max-prefill-tokens ${p}`,
      args: [
        "--max-seqs",
        String(n),
        "--max-positions",
        String(kvPositions(s, n)),
        ...(p === null ? [] : ["--max-prefill-tokens", String(p)]),
      ],
    })),
  );
}

/**
 * KV positions for `seqs` sequences sharing the document (with batching, --max-positions is the
 * pool they share): the document once, and each sequence's question and answer with two KV
 * blocks of slack (the document's last block, copied where the question starts, and the
 * rounding of its own), for blocks of up to 64 positions; so no sequence is preempted.
 */
const kvPositions = (s: Settings, seqs: number) =>
  s.docTokens + seqs * (QUESTION_TOKENS + s.tokens + 128);

const round = (x: number, d = 3) => Number(x.toPrecision(d));
const ratio = (a: number | null, b: number | null) =>
  a === null || b === null || b === 0 ? null : round(a / b);

function ratios(ours: CellFigures, peer: CellFigures) {
  return {
    aggregateDecodeTokensPerSec: ratio(
      ours.aggregateDecodeTokensPerSec,
      peer.aggregateDecodeTokensPerSec,
    ),
    ttftP50: ratio(ours.ttftMs.p50, peer.ttftMs.p50),
    ttftP99: ratio(ours.ttftMs.p99, peer.ttftMs.p99),
    interTokenP50: ratio(ours.interTokenMs.p50, peer.interTokenMs.p50),
    interTokenP99: ratio(ours.interTokenMs.p99, peer.interTokenMs.p99),
  };
}

/** How many of `a` completed with exactly `b`'s answer to the same question. */
const sameAnswers = (a: Answer[], b: Answer[]) =>
  a.filter((x, q) => x.error === null && firstDivergence(x.pieces, b[q].pieces) === null).length;

export default async function main(args: string[]): Promise<void> {
  const s = parseSettings(args);
  const root = join(import.meta.dirname, "..", "..");
  const serveModes = modes(s, await serveOptions());
  await ensureBuilt({ root });
  const llama = await loadLlamaCpp();
  if (!llama) throw new Error("node-llama-cpp is not installed: run npm install");
  const shape = s.quick ? TINY : { ...ISSUE15_MODEL, seed: 15 };
  const questions = s.questions;
  const load = [loadavg()[0]];

  // The document and the questions: deterministic ids, none special (all below 128000).
  const document = [
    LLAMA31_BOS,
    ...Array.from({ length: s.docTokens - 1 }, (_, i) => (i * 7919 + 13) % 128000),
  ];
  const question = (q: number) =>
    Array.from({ length: QUESTION_TOKENS }, (_, k) =>
      k === 0 ? 1000 + q : (q * 131 + k * 977) % 128000,
    );
  const positions = kvPositions(s, 1);

  const dir = mkdtempSync(join(tmpdir(), "ultralong-bench-batching-"));
  const servers: BenchServer[] = [];
  let peer: Awaited<ReturnType<typeof openParallelLlama>> | null = null;
  try {
    const modelDir = join(dir, "model");
    await makeModelDir(modelDir, shape);
    const model = await loadModelDir(modelDir);
    const parameters = model.weights
      .tensors()
      .reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0);
    const tokenizer = await loadDirTokenizer(modelDir, model.files);
    const gguf = join(dir, "model.gguf");
    await convertModelDirToGguf(modelDir, gguf);

    const oursDocument: number[] = [];
    for (const [i, mode] of serveModes.entries()) {
      const serveDir = join(dir, `serve-${i}`);
      mkdirSync(serveDir);
      const server = await startBenchServe(
        serveDir,
        ["--model", modelDir, "--runtime", "wasm", "--threads", String(THREADS), ...mode.args],
        { maxPromptTokens: positions, maxOutputTokens: s.tokens },
      );
      servers.push(server);
      // Warm-up, not a cell: prefills the document (its KV stays for the questions) and runs
      // every kernel past V8's baseline tier.
      const warm = await streamCompletion(server, [...document, ...question(questions)], s.tokens);
      if (warm.error) throw new Error(`${mode.label}: warm-up request failed: ${warm.error}`);
      oursDocument.push(warm.tokenMs[0] - warm.startMs);
    }
    peer = await openParallelLlama(llama, {
      ggufPath: gguf,
      sequences: Math.max(...s.clients),
      threads: THREADS,
      document,
      contextSize: positions,
      stateFile: join(dir, "document.state"),
    });

    // Each token's text as our server's streaming decoder would send it.
    const peerPieces = (ids: number[]) => {
      const d = tokenizer.createDecoder({ skipSpecialTokens: true });
      const pieces = ids.map((id) => d.push(id));
      if (pieces.length > 0) pieces[pieces.length - 1] += d.end();
      return pieces;
    };
    const oursRuns = serveModes.map(() => new Map<number, { answers: Answer[]; wallMs: number }>());
    const peerRuns = new Map<number, { answers: Answer[]; wallMs: number }>();
    for (const [ci, clients] of s.clients.entries()) {
      const runOurs = async () => {
        for (const [i, server] of servers.entries()) {
          oursRuns[i].set(
            clients,
            await runClients(clients, questions, (q) =>
              streamCompletion(server, [...document, ...question(q)], maxTokensOf(s, q), {
                temperature: s.temperature,
                seed: q,
              }),
            ),
          );
        }
      };
      const runPeer = async () => {
        const p = peer!;
        peerRuns.set(
          clients,
          await runClients(clients, questions, async (q, client) => {
            const a = await p.ask(client, question(q), maxTokensOf(s, q), {
              temperature: s.temperature,
              seed: q,
            });
            return { ...a, pieces: peerPieces(a.ids) };
          }),
        );
      };
      // Alternate which side goes first, so neither always meets the machine's load first.
      if (ci % 2 === 0) {
        await runOurs();
        await runPeer();
      } else {
        await runPeer();
        await runOurs();
      }
      console.error(`batching: ${clients} clients done`);
    }
    load.push(loadavg()[0]);

    const peerRef = peerRuns.get(1)!.answers;
    const oursRef = oursRuns[0].get(1)!.answers;
    const peerCells = s.clients.map((c) => cellFigures(c, peerRuns.get(c)!, peerRef));
    const oursModes = serveModes.map((mode, i) => ({
      mode: mode.label,
      serveArgs: mode.args,
      documentFirstTokenMs: Math.round(oursDocument[i]),
      cells: s.clients.map((c) => {
        const run = oursRuns[i].get(c)!;
        return {
          ...cellFigures(c, run, oursRef),
          sameAnswersAsLlamaCpp: sameAnswers(run.answers, peerRuns.get(c)!.answers),
        };
      }),
    }));
    const cells = s.clients.map((c, k) => ({
      clients: c,
      ours: Object.fromEntries(oursModes.map((m) => [m.mode, m.cells[k]])),
      llamaCpp: peerCells[k],
      ratios: Object.fromEntries(oursModes.map((m) => [m.mode, ratios(m.cells[k], peerCells[k])])),
    }));

    // Issue 15's targets, on the last mode (the most sequences): at 16 clients (or the most
    // clients asked for when 16 is not among them).
    const loaded = s.clients.includes(16) ? 16 : Math.max(...s.clients);
    const k = s.clients.indexOf(loaded);
    const last = oursModes[oursModes.length - 1];
    const lostOrWrong = oursModes.reduce(
      (n, m) => n + m.cells.reduce((x, c) => x + c.lost + c.wrong, 0),
      0,
    );
    const scaling = ratio(
      last.cells[k].aggregateDecodeTokensPerSec,
      last.cells[0].aggregateDecodeTokensPerSec,
    );
    const vsPeer = ratio(
      last.cells[k].aggregateDecodeTokensPerSec,
      peerCells[k].aggregateDecodeTokensPerSec,
    );
    const itl = ratio(last.cells[k].interTokenMs.p99, last.cells[0].interTokenMs.p99);
    const report = {
      bench: "batching",
      machine: {
        cpus: availableParallelism(),
        loadAverage1m: { start: round(load[0]), end: round(load[1]) },
      },
      model: { ...shape, parameters, gguf: "f32, by core/node/gguf.ts" },
      settings: {
        documentTokens: s.docTokens,
        questionTokens: QUESTION_TOKENS,
        maxTokens: s.tokens,
        staggered: s.staggered,
        questionsPerCell: questions,
        threads: THREADS,
        greedy: s.temperature === 0,
        temperature: s.temperature,
        seedOfQuestionQ: s.temperature === 0 ? null : "q",
      },
      ours: {
        runtime: "wasm",
        modes: oursModes.map((m) => ({
          mode: m.mode,
          serveArgs: m.serveArgs,
          documentFirstTokenMs: m.documentFirstTokenMs,
        })),
      },
      llamaCpp: {
        via: "node-llama-cpp (prebuilt CPU binary, gpu: false, build: never)",
        release: llama.llamaCppRelease.release,
        sequences: Math.max(...s.clients),
        batchSize: peer.context.batchSize,
        documentPrefillMs: Math.round(peer.documentPrefillMs),
        // Sequence 0's state saved and loaded into each other sequence (no KV is shared).
        documentCopyToOtherSequencesMs: Math.round(peer.documentCopyMs),
        wrongMeans: "answers that differ from llama.cpp's own answers with one client",
      },
      ratioMeaning: "ours / llama.cpp: > 1 is better for tokens/s, < 1 is better for latencies",
      cells,
      targets: {
        mode: last.mode,
        atClients: loaded,
        aggregateVsOneClient: {
          value: scaling,
          target: ">= 5",
          met: scaling !== null && scaling >= 5,
        },
        aggregateVsLlamaCpp: { value: vsPeer, target: ">= 1", met: vsPeer !== null && vsPeer >= 1 },
        interTokenP99VsUnloaded: { value: itl, target: "<= 3", met: itl !== null && itl <= 3 },
        lostOrWrong: { value: lostOrWrong, target: 0, met: lostOrWrong === 0 },
      },
    };
    console.log(JSON.stringify(report, null, 2));
    if (lostOrWrong > 0) process.exitCode = 1;
  } finally {
    for (const server of servers) await server.stop();
    await peer?.close();
    await llama.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}
