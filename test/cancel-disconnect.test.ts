// Client disconnects, 50 of them, at random moments: during a streamed upload, while queued behind
// another generation, during prefill and during decode, with streamed and non-streamed responses.
// Real sockets end to end (client -> edge -> model function, functions/entries/local.ts), the
// reference runtime, snapshots in a real directory. Nothing is timed: every disconnect must show up
// as the model function's log line for that request id with status 499 / cancelled (a missed one
// runs to the end and logs 200), and the queue counts the requests that had to wait: only the ones
// this test queues on purpose.
//
// The moments are drawn from a seeded generator (SEED=<n> to replay; the seed is printed).
import { afterAll, beforeAll, expect, it } from "vitest";
import { sha256Hex } from "../core/hash/sha256.ts";
import { parseSse } from "../core/protocol/events.ts";
import { type LocalServer, startLocal } from "../functions/entries/local.ts";
import { scratchDir, testModelDir } from "./support/models.ts";

const KEY = "key-tenant-cancel-0123456789";
const DISCONNECTS = Number(process.env.DISCONNECTS ?? 50);
const logs: Record<string, unknown>[] = [];
let s: LocalServer;

beforeAll(async () => {
  s = await startLocal({
    modelDir: await testModelDir(),
    modelId: "tiny",
    runtime: "reference",
    // One generation at a time, so a request can be queued behind another on purpose (the batched
    // scheduler's cancellations: test/batching-serve.test.ts).
    maxSeqs: 1,
    store: scratchDir("snapshots"),
    snapshotChunkTokens: 32,
    maxPositions: 4096,
    keys: {
      tenants: { c: { maxPromptTokens: 4000, maxOutputTokens: 4000, rpm: 0 } },
      keys: [{ sha256: await sha256Hex(KEY), tenant: "c" }],
    },
    keepAliveMs: 100,
    log: (line) => logs.push(line),
  });
});
afterAll(async () => {
  await s?.close();
});

/** xorshift32: the test's moments, reproducible from the printed seed. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

const tick = () => new Promise((r) => setTimeout(r, 10));
let waitingFor = "";
async function until(cond: () => boolean): Promise<void> {
  for (let i = 1; !cond(); i++) {
    // Not an assertion: says what a stuck run waits for (vitest's timeout ends it).
    if (i % 3000 === 0)
      console.log(
        `cancel-disconnect: still waiting for ${waitingFor}`,
        s.model.queue.active,
        s.model.queue.waiting,
        JSON.stringify(logs.slice(-4)),
      );
    await tick();
  }
}
const modelLine = (id: string) => logs.find((l) => l.app === "model" && l.requestId === id);

/** Words no earlier round used, so each prompt is computed (no reuse, no snapshot restore). */
function words(round: number, n: number): string {
  return `round ${round}: ${Array.from({ length: n }, (_, i) => `w${(i * 7919 + round) % 997}`).join(" ")}`;
}

interface Client {
  id: string;
  abort: AbortController;
  /** Settles when the client has seen what it waits for (or the request failed). */
  reached: Promise<void>;
  /** Settles when the response has ended (or failed). */
  ended: Promise<void>;
}

/**
 * A JSON completion; `reached` settles after `events` SSE events of `kind` (the response is still
 * read on: leaving the loop would close it) or, with `wait` null, once the request is sent.
 */
function complete(
  id: string,
  body: Record<string, unknown>,
  wait: { kind: "token" | "progress"; events: number } | null,
): Client {
  const abort = new AbortController();
  let reach = () => {};
  const reached = new Promise<void>((r) => {
    reach = r;
  });
  if (!wait) reach();
  const ended = (async () => {
    const res = await fetch(`${s.url}/v1/completions`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${KEY}`,
        "content-type": "application/json",
        "x-request-id": id,
      },
      body: JSON.stringify({ model: "tiny", temperature: 0, ...body }),
      signal: abort.signal,
    });
    if (!wait) return void (await res.arrayBuffer());
    let seen = 0;
    for await (const m of parseSse(res.body!)) {
      if (m.data === "[DONE]") break;
      const chunk = JSON.parse(m.data);
      const is = wait.kind === "progress" ? chunk.progress : chunk.choices?.[0]?.text !== undefined;
      if (is && ++seen >= wait.events) reach();
    }
  })()
    .catch(() => {})
    .finally(reach);
  return { id, abort, reached, ended };
}

/** A text/plain upload that sends 16-word pieces and disconnects after `pieces` of them. */
function upload(id: string, round: number, pieces: number, stream: boolean): Client {
  const abort = new AbortController();
  const enc = new TextEncoder();
  let sent = 0;
  const body = new ReadableStream<Uint8Array>({
    async pull(c) {
      // The model function holds the request (its queue slot) before the disconnect, so the
      // disconnect lands in the upload, not before the edge forwards anything.
      if (sent >= pieces && s.model.queue.active === 1) {
        abort.abort();
        return;
      }
      await tick();
      c.enqueue(enc.encode(` ${words(round * 1000 + sent, 16)}`));
      sent++;
    },
  });
  const ended = (async () => {
    const res = await fetch(
      `${s.url}/v1/completions/text?max_tokens=8&temperature=0&stream=${stream}&progress=true`,
      {
        method: "POST",
        headers: {
          authorization: `Bearer ${KEY}`,
          "content-type": "text/plain",
          "x-request-id": id,
        },
        body,
        signal: abort.signal,
        duplex: "half",
      } as RequestInit,
    );
    await res.arrayBuffer();
  })().catch(() => {});
  return { id, abort, reached: ended, ended };
}

it(`${DISCONNECTS} disconnects at random moments: ${DISCONNECTS} cancellations, no queue wait after them`, async () => {
  const seed = Number(process.env.SEED ?? Date.now() % 2 ** 31);
  console.log(`cancel-disconnect: SEED=${seed}`);
  const pick = rng(seed);
  const queue = s.model.queue;
  let disconnects = 0;
  let queuedOnPurpose = 0;
  const phases: Record<string, number> = {};
  const outcomes: Record<string, unknown>[] = [];

  /** Disconnects `c` and waits for the model function's line about it. */
  async function drop(c: Client, phase: string): Promise<void> {
    waitingFor = `${c.id} (${phase})`;
    c.abort.abort();
    disconnects++;
    phases[phase] = (phases[phase] ?? 0) + 1;
    await until(() => modelLine(c.id) !== undefined);
    const line = modelLine(c.id)!;
    outcomes.push({ phase, status: line.status, errorCode: line.errorCode });
    if (process.env.VERBOSE) console.log(c.id, phase, line.status, line.errorCode);
    await c.ended;
  }

  for (let round = 0; disconnects < DISCONNECTS; round++) {
    // Everything before has ended: the runtime is free, nobody waits.
    await until(() => queue.active === 0);
    expect(queue.waiting).toBe(0);
    const id = `cancel-${seed}-${round}`;
    const stream = Math.floor(round / 4) % 2 === 0; // every phase both ways, in turn
    const phase = ["upload", "queue", "prefill", "decode"][round % 4];
    waitingFor = `round ${round} (${phase}, ${stream ? "stream" : "whole"})`;
    if (phase === "upload") {
      const c = upload(id, round, 1 + pick(40), stream);
      await until(() => c.abort.signal.aborted);
      await drop(c, `upload/${stream ? "stream" : "whole"}`);
    } else if (phase === "queue") {
      const blocker = complete(
        `${id}-blocker`,
        { prompt: words(round, 20), max_tokens: 400, stream: true },
        {
          kind: "token",
          events: 1,
        },
      );
      await blocker.reached;
      const c = complete(id, { prompt: words(round + 0.5, 20), max_tokens: 8, stream }, null);
      await until(() => queue.waiting === 1);
      queuedOnPurpose++;
      for (let i = pick(5); i > 0; i--) await tick();
      await drop(c, `queue/${stream ? "stream" : "whole"}`);
      await drop(blocker, "decode/stream");
    } else if (stream) {
      const wait =
        phase === "prefill"
          ? { kind: "progress" as const, events: 1 + pick(50) }
          : { kind: "token" as const, events: 1 + pick(20) };
      const c = complete(
        id,
        {
          prompt: words(round, phase === "prefill" ? 1000 : 20),
          max_tokens: 400,
          stream: true,
          progress: phase === "prefill",
        },
        wait,
      );
      await c.reached;
      await drop(c, `${phase}/stream`);
    } else {
      // Non-streamed: nothing reaches the client before the end, so the moment is the model
      // function's: once it runs the request, a random number of event-loop turns later.
      const c = complete(
        id,
        { prompt: words(round, phase === "prefill" ? 1000 : 20), max_tokens: 400 },
        null,
      );
      await until(() => queue.active === 1);
      for (let i = pick(phase === "prefill" ? 20 : 60); i > 0; i--) await tick();
      await drop(c, `${phase}/whole`);
    }
  }
  console.log("cancel-disconnect:", JSON.stringify(phases));
  const cancelled = outcomes.filter((o) => o.status === 499 && o.errorCode === "cancelled");
  expect(outcomes.filter((o) => !cancelled.includes(o))).toEqual([]);
  expect(cancelled).toHaveLength(DISCONNECTS);
  // No request waited for the runtime except the ones queued behind a blocker on purpose.
  expect(queue.waited).toBe(queuedOnPurpose);
}, 600_000);
