// Closed-loop clients and the figures of one cell of `npm run bench -- batching`: N clients share a
// list of questions, each taking the next one as soon as its previous answer is complete, so N
// requests are in flight until the list runs out (as a pool of N users would keep a server busy).
// Both sides (our server over HTTP, llama.cpp's sequences in-process) answer through the same
// Answer shape, so their figures are computed by the same code.

/** One request's answer, as its client saw it. Times are performance.now() milliseconds. */
export interface Answer {
  /** When the client first sent the request (before any 429 and retry). */
  startMs: number;
  /** When each generated token arrived, in order. */
  tokenMs: number[];
  /** Each generated token's text, in order: what a comparison with another answer looks at. */
  pieces: string[];
  /** Why the request did not complete (an HTTP status, a stream error, an exception), or null. */
  error: string | null;
  /** 429s (queue full) the client was answered before the request was admitted. */
  retries: number;
}

/**
 * `clients` concurrent loops answering questions 0..questions-1, each question once; `ask` must
 * not throw (a failure is an Answer with `error`). Returns the answers by question and the wall
 * time from the first request to the last token.
 */
export async function runClients(
  clients: number,
  questions: number,
  ask: (question: number, client: number) => Promise<Answer>,
): Promise<{ answers: Answer[]; wallMs: number }> {
  const answers: Answer[] = new Array(questions);
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, client) => {
      for (let q = next++; q < questions; q = next++) answers[q] = await ask(q, client);
    }),
  );
  return { answers, wallMs: performance.now() - t0 };
}

/** The first token where two answers differ (or the shorter one's length); null when equal. */
export function firstDivergence(a: string[], b: string[]): number | null {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? null : n;
}

/** Nearest-rank percentile of `xs` (0 < p <= 1); null when empty. */
export function percentile(xs: number[], p: number): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil(p * s.length) - 1)];
}

const ms = (x: number | null) => (x === null ? null : Math.round(x * 10) / 10);

export interface CellFigures {
  clients: number;
  requests: number;
  /** Generated tokens over all answers. */
  outputTokens: number;
  wallMs: number;
  /** outputTokens over the cell's wall time: what the server delivers to all clients together. */
  aggregateDecodeTokensPerSec: number;
  /** From a request's first send to its first token (queueing, 429 retries and prefill included). */
  ttftMs: { p50: number | null; p99: number | null };
  /** Gaps between consecutive tokens of one answer, over every answer of the cell. */
  interTokenMs: { p50: number | null; p99: number | null };
  /** Requests that did not complete. */
  lost: number;
  /** Completed answers that differ from the same question's answer asked alone (`reference`). */
  wrong: number;
  /** Where the wrong answers first differ from the reference: token index, least and median. */
  wrongFromToken: { min: number | null; p50: number | null };
  retried429: number;
}

/**
 * The figures of one cell. `reference` holds the same questions' answers asked one at a time
 * (the 1-client cell); an answer is wrong when any token's text, or the token count, differs
 * from the reference's, unless the reference itself was lost.
 */
export function cellFigures(
  clients: number,
  run: { answers: Answer[]; wallMs: number },
  reference: Answer[],
): CellFigures {
  const done = run.answers.filter((a) => a.error === null);
  const outputTokens = done.reduce((n, a) => n + a.tokenMs.length, 0);
  const ttft = done.filter((a) => a.tokenMs.length > 0).map((a) => a.tokenMs[0] - a.startMs);
  const gaps = done.flatMap((a) => a.tokenMs.slice(1).map((t, i) => t - a.tokenMs[i]));
  const divergences = run.answers.flatMap((a, q) => {
    const ref = reference[q];
    const at =
      a.error === null && ref.error === null ? firstDivergence(a.pieces, ref.pieces) : null;
    return at === null ? [] : [at];
  });
  return {
    clients,
    requests: run.answers.length,
    outputTokens,
    wallMs: Math.round(run.wallMs),
    aggregateDecodeTokensPerSec: Math.round((outputTokens / run.wallMs) * 1e4) / 10,
    ttftMs: { p50: ms(percentile(ttft, 0.5)), p99: ms(percentile(ttft, 0.99)) },
    interTokenMs: { p50: ms(percentile(gaps, 0.5)), p99: ms(percentile(gaps, 0.99)) },
    lost: run.answers.length - done.length,
    wrong: divergences.length,
    wrongFromToken: { min: percentile(divergences, 0), p50: percentile(divergences, 0.5) },
    retried429: run.answers.reduce((n, a) => n + a.retries, 0),
  };
}
