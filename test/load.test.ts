// Bounded load on loopback: 32 concurrent clients for two phases of LOAD_SECONDS each against the
// edge + model function (reference runtime, TINY model, a queue of 4). Every response must be a
// correct completion or a well-formed 429 with Retry-After; no 5xx; heap and open handles after
// the second phase no larger than after the first (beyond a stated slack), so nothing leaks per
// request.
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sha256Hex } from "../core/hash/sha256.ts";
import { type LocalServer, startLocal } from "../functions/entries/local.ts";
import { testModelDir } from "./support/models.ts";

const CLIENTS = 32;
const LOAD_SECONDS = Number(process.env.LOAD_SECONDS ?? 5);
const KEY = "load-test-key-0123456789";
let s: LocalServer;

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

beforeAll(async () => {
  s = await startLocal({
    modelDir: await testModelDir(),
    modelId: "tiny",
    runtime: "reference",
    store: null,
    maxPositions: 1024,
    maxWaiting: 4,
    keys: {
      tenants: { load: { rpm: 0, maxOutputTokens: 16 } },
      keys: [{ sha256: await sha256Hex(KEY), tenant: "load" }],
    },
    log: () => {},
  });
});
afterAll(async () => {
  await s?.close();
});

interface Tally {
  ok: number;
  busy: number;
  other: string[];
}

/** The one request every client sends (greedy, so every completion is the same text). */
function complete(stream: boolean): Promise<Response> {
  return fetch(`${s.url}/v1/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body: JSON.stringify({
      model: "tiny",
      prompt: "load test prompt",
      max_tokens: 4,
      temperature: 0,
      stream,
    }),
  });
}

async function phase(expected: string): Promise<Tally> {
  const tally: Tally = { ok: 0, busy: 0, other: [] };
  const until = Date.now() + LOAD_SECONDS * 1000;
  const client = async (i: number) => {
    while (Date.now() < until) {
      const stream = i % 2 === 0;
      const res = await complete(stream);
      const text = await res.text();
      if (res.status === 429) {
        const body = JSON.parse(text);
        if (
          body.error?.code === "rate_limit_exceeded" &&
          Number(res.headers.get("retry-after")) >= 1
        )
          tally.busy++;
        else tally.other.push(`bad 429: ${text}`);
        await new Promise((r) => setTimeout(r, 20));
      } else if (res.status === 200) {
        const got = stream
          ? text
              .split("\n\n")
              .filter((l) => l.startsWith("data: {"))
              .map((l) => JSON.parse(l.slice(6)).choices[0]?.text ?? "")
              .join("")
          : JSON.parse(text).choices[0].text;
        if (got === expected) tally.ok++;
        else tally.other.push(`wrong text ${JSON.stringify(got)}`);
      } else tally.other.push(`${res.status}: ${text.slice(0, 200)}`);
    }
  };
  await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(i)));
  return tally;
}

function footprint(): { heap: number; sockets: number; other: number } {
  gc();
  gc();
  const resources = process.getActiveResourcesInfo();
  const sockets = resources.filter((r) => r === "TCPSocketWrap").length;
  return { heap: process.memoryUsage().heapUsed, sockets, other: resources.length - sockets };
}

describe("load", () => {
  it(`${CLIENTS} clients: only correct completions or well-formed 429s; no growth`, async () => {
    const ref = await complete(false);
    const expected = ((await ref.json()) as { choices: { text: string }[] }).choices[0].text;
    const first = await phase(expected);
    await new Promise((r) => setTimeout(r, 200));
    const after1 = footprint();
    const second = await phase(expected);
    await new Promise((r) => setTimeout(r, 200));
    const after2 = footprint();
    console.log(JSON.stringify({ first, second, after1, after2 }));
    for (const t of [first, second]) {
      expect(t.other).toEqual([]);
      expect(t.ok).toBeGreaterThan(0);
      expect(t.busy).toBeGreaterThan(0); // 32 clients against a queue of 4 must see 429s
    }
    expect(s.model.queue.active + s.model.queue.waiting).toBe(0);
    // Slack: 16 MiB of heap (JIT and allocator noise). Keep-alive sockets come and go with the
    // pools (client, edge server, edge -> model, model server: at most 3 per client in this
    // process); ~300 requests per phase would leave far more if requests leaked them. Every other
    // handle kind (timers, files, workers) must not grow at all.
    expect(after2.heap - after1.heap).toBeLessThan(16 << 20);
    expect(after2.sockets).toBeLessThanOrEqual(3 * CLIENTS + 8);
    expect(after2.other).toBeLessThanOrEqual(after1.other);
  });
});
