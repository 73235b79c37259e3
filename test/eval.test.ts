// `ultralong eval` end to end: the real CLI process against a real `ultralong serve` (wasm runtime)
// on the retrieval fixture (test/fixtures/retrieval-model: a 2-layer Llama trained here from random
// weights by test/reference/train_retrieval_model.py, at 512 tokens), and on a random
// model, which must fail: a harness that scored a random model well would prove nothing. Also the JSON lines, resume, the pictures, a
// server that answers 429 with retry-after, and the refusals.
import type { ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TrialRecord } from "../functions/eval/store.ts";
import { startServe } from "./support/cli.ts";
import { runUltralong, scratchDir, TINY, testModelDir } from "./support/models.ts";

const FIXTURE = join(import.meta.dirname, "fixtures/retrieval-model");
const KEY = "eval-test-key-0123456789abcdef";
const env = { ...process.env, XDG_CACHE_HOME: scratchDir("cache") };
// One tenant without the default 600 requests a minute: an eval run tokenizes each distinct piece
// through the API, and a rate-limited answer would make the tests wait out retry-after.
const KEYS = join(scratchDir("keys"), "keys.json");
writeFileSync(
  KEYS,
  JSON.stringify({
    tenants: { eval: { rpm: 0 } },
    keys: [{ sha256: createHash("sha256").update(KEY).digest("hex"), tenant: "eval" }],
  }),
);
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) c.kill("SIGKILL");
});

async function serve(model: string, extra: string[] = []): Promise<string> {
  const s = await startServe(
    [
      "--model",
      model,
      "--port",
      "0",
      "--runtime",
      "wasm",
      "--threads",
      "1",
      "--api-keys",
      KEYS,
      ...extra,
    ],
    env,
  );
  children.push(s.child);
  return s.out.match(/on (http:\/\/127\.0\.0\.1:\d+)/)![1];
}

type Line = TrialRecord;

const lines = (dir: string): Line[] =>
  readFileSync(join(dir, "trials.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Line);

const mean = (xs: Line[]) => xs.reduce((a, r) => a + r.score, 0) / xs.length;

function evalArgs(url: string, out: string, ...more: string[]) {
  return ["eval", "niah", "--url", url, "--api-key", KEY, "--out", out, ...more];
}

describe("ultralong eval on the retrieval fixture", () => {
  let url: string;
  beforeAll(async () => {
    url = await serve(FIXTURE, ["--store", scratchDir("snapshots")]);
  }, 120_000);

  const out = scratchDir("eval-fixture");
  it("finds >= 90% of needles at 256 and 512 tokens; writes JSON lines, SVG and PNG", async () => {
    const r = await runUltralong(
      evalArgs(url, out, "--lengths", "256,512", "--depths", "0:100:25", "--samples", "2"),
      env,
    );
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(r.status, r.stderr).toBe(0);
    const got = lines(out);
    expect(got).toHaveLength(3 * 2 * 5 * 2);
    for (const l of got) {
      expect(l.prompt_tokens).toBe(l.length); // exact: ids cut with the server's tokenizer
      expect(l.total_ms).toBeGreaterThan(0);
      expect(l.ttft_ms === null || l.ttft_ms <= l.total_ms).toBe(true);
    }
    console.log(r.stdout);
    for (const task of ["passkey", "number", "uuid"]) {
      expect(mean(got.filter((l) => l.task === task)), task).toBeGreaterThanOrEqual(0.9);
    }
    expect(r.stdout).toMatch(/prompt tokens \d+, cached \d+ \(\d+\.\d%\)/);
    expect(r.stdout).toMatch(/^depth +256 +512$/m);
    const svg = readFileSync(join(out, "niah.svg"), "utf8");
    expect(svg).toMatch(/^<svg /);
    expect(svg).toContain("context length (tokens)");
    const png = readFileSync(join(out, "niah.png"));
    expect([...png.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  }, 300_000);

  it("a rerun skips every finished trial and adds the missing ones", async () => {
    const before = readFileSync(join(out, "trials.jsonl"), "utf8");
    const again = await runUltralong(
      evalArgs(url, out, "--lengths", "256,512", "--depths", "0:100:25", "--samples", "2"),
      env,
    );
    expect(again.status, again.stderr).toBe(0);
    expect(again.stderr).toContain("60 of 60 trials already done");
    expect(readFileSync(join(out, "trials.jsonl"), "utf8")).toBe(before);
    const more = await runUltralong(
      evalArgs(
        url,
        out,
        "--lengths",
        "256,512",
        "--depths",
        "0:100:25",
        "--samples",
        "3",
        "--tasks",
        "passkey",
      ),
      env,
    );
    expect(more.status, more.stderr).toBe(0);
    expect(more.stderr).toContain("20 of 30 trials already done");
    expect(readFileSync(join(out, "trials.jsonl"), "utf8").startsWith(before)).toBe(true);
    expect(lines(out)).toHaveLength(70);
  }, 120_000);

  it("reports what happens past its trained length (512) up to its 4096 positions, reusing KV snapshots", async () => {
    const far = scratchDir("eval-far");
    const r = await runUltralong(
      evalArgs(url, far, "--lengths", "2k,4000", "--depths", "0:100:50", "--tasks", "passkey"),
      env,
    );
    expect(r.status, r.stderr).toBe(0);
    console.log(r.stdout);
    const got = lines(far);
    expect(got).toHaveLength(6);
    // What it scores there is printed and written, not asserted: past 512 the trained model keeps
    // the pass key to 4000 tokens but loses uuids (docs/evaluation.md's grid).
    expect(r.stdout).toMatch(/^depth +2k +4000$/m);
    for (const l of got) expect([0, 1]).toContain(l.score);
    // The 4k, depth-100% trial runs first and leaves 512-token KV snapshots of the haystack; every
    // other trial with its needle past the first chunk shares chunks and gets them from the store.
    expect(got[0]).toMatchObject({ length: 4000, depth: 100, cached_tokens: 0 });
    for (const l of got.slice(1).filter((x) => x.depth !== 0)) {
      expect(l.cached_tokens, JSON.stringify(l)).toBeGreaterThanOrEqual(512);
    }
  }, 300_000);

  it("runs the RULER-style suite and draws its bars", async () => {
    const dir = scratchDir("eval-ruler");
    const r = await runUltralong(
      [
        "eval",
        "ruler",
        "--url",
        url,
        "--api-key",
        KEY,
        "--out",
        dir,
        "--lengths",
        "512",
        "--depths",
        "50",
      ],
      env,
    );
    expect(r.status, r.stderr).toBe(0);
    console.log(r.stdout);
    const got = lines(dir);
    expect(new Set(got.map((l) => l.task))).toEqual(
      new Set([
        "passkey",
        "number",
        "uuid",
        "multikey",
        "multivalue",
        "multiquery",
        "vt",
        "cwe",
        "fwe",
      ]),
    );
    expect(r.stdout).toMatch(/^task +512$/m);
    expect(readFileSync(join(dir, "ruler.svg"), "utf8")).toContain(">multivalue<");
    expect(readFileSync(join(dir, "ruler.png")).subarray(1, 4).toString()).toBe("PNG");
  }, 120_000);

  it("takes its haystack from a text file (--haystack), exact lengths still", async () => {
    const dir = scratchDir("eval-file");
    const file = join(dir, "essay.txt");
    writeFileSync(
      file,
      "It was the best of times, it was the worst of times.\n\nIt was the age of wisdom! Was it the age of foolishness? ".repeat(
        20,
      ),
    );
    const out = join(dir, "out");
    const r = await runUltralong(
      evalArgs(
        url,
        out,
        "--lengths",
        "300,700",
        "--depths",
        "50",
        "--tasks",
        "passkey",
        "--haystack",
        file,
      ),
      env,
    );
    expect(r.status, r.stderr).toBe(0);
    const got = lines(out);
    expect(got.map((l) => l.prompt_tokens)).toEqual(got.map((l) => l.length));
    expect(JSON.parse(readFileSync(join(out, "meta.json"), "utf8")).haystack).toBe(file);
  }, 60_000);

  it("refuses, in one line, a length the server cannot hold and a directory of other settings", async () => {
    const long = await runUltralong(evalArgs(url, scratchDir("x"), "--lengths", "1M"), env);
    expect(long.status).toBe(1);
    expect(long.stderr.trim()).toMatch(
      /^ultralong eval: --lengths 1048576 does not fit: .* takes 4096 tokens on this server, prompt and 64 output tokens$/,
    );
    const other = await runUltralong(evalArgs(url, out, "--lengths", "256", "--seed", "7"), env);
    expect(other.status).toBe(1);
    expect(other.stderr.trim()).toMatch(
      /^ultralong eval: .* holds results made with seed 0, not 7: use another --out$/,
    );
  }, 60_000);

  it("waits out 429 + retry-after and goes on", async () => {
    // A real proxy in front of serve: the first two completions get 429 with retry-after: 0.
    let refused = 0;
    const proxy: Server = createServer(async (req, res) => {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      if (req.url?.endsWith("/completions") && refused < 2) {
        refused++;
        res.writeHead(429, { "retry-after": "0", "content-type": "application/json" });
        res.end('{"error":{"message":"busy"}}');
        return;
      }
      const upstream = await fetch(url + req.url, {
        method: req.method,
        headers: {
          authorization: String(req.headers.authorization),
          "content-type": "application/json",
        },
        body: req.method === "GET" ? undefined : Buffer.concat(chunks),
      });
      res.writeHead(upstream.status, {
        "content-type": upstream.headers.get("content-type") ?? "application/json",
      });
      for await (const c of upstream.body as unknown as AsyncIterable<Uint8Array>) res.write(c);
      res.end();
    }).listen(0, "127.0.0.1");
    await new Promise((r) => proxy.once("listening", r));
    const port = (proxy.address() as { port: number }).port;
    try {
      const dir = scratchDir("eval-retry");
      const r = await runUltralong(
        evalArgs(
          `http://127.0.0.1:${port}/v1`,
          dir,
          "--lengths",
          "256",
          "--depths",
          "50",
          "--tasks",
          "passkey",
          "--concurrency",
          "1",
        ),
        env,
      );
      expect(r.status, r.stderr).toBe(0);
      expect(refused).toBe(2);
      expect(r.stderr).toContain("retrying after HTTP 429: waiting 0.0 s");
      expect(lines(dir)[0].retries).toBe(2);
    } finally {
      proxy.close();
    }
  }, 60_000);
});

describe("ultralong eval on a random model", () => {
  it("scores near 0: the harness can fail", async () => {
    const url = await serve(await testModelDir(TINY), ["--no-store"]);
    const out = scratchDir("eval-random");
    const r = await runUltralong(
      evalArgs(url, out, "--lengths", "256,512", "--depths", "0:100:25"),
      env,
    );
    expect(r.status, r.stderr).toBe(0);
    const got = lines(out);
    expect(got).toHaveLength(30);
    expect(mean(got)).toBeLessThanOrEqual(0.05);
  }, 300_000);
});

describe("ultralong eval: refusals before any request", () => {
  const cases: [string[], RegExp][] = [
    [
      ["eval", "haystack", "--url", "http://127.0.0.1:9"],
      /unknown suite 'haystack': niah or ruler/,
    ],
    [["eval", "niah"], /--url URL is required/],
    [
      ["eval", "niah", "--url", "http://127.0.0.1:9", "--lengths", "4q"],
      /--lengths: '4q' is not a token count/,
    ],
    [
      ["eval", "niah", "--url", "http://127.0.0.1:9", "--depths", "0:100:0"],
      /--depths: the step must be positive/,
    ],
    [
      ["eval", "niah", "--url", "http://127.0.0.1:9", "--tasks", "vt"],
      /'vt' is not a niah task \(it is a ruler task\)/,
    ],
    [
      ["eval", "niah", "--url", "http://127.0.0.1:9", "--api", "grpc"],
      /--api must be completions or chat/,
    ],
  ];
  for (const [args, re] of cases) {
    it(args.slice(1).join(" "), async () => {
      const r = await runUltralong(args, env);
      expect(r.status).toBe(1);
      const err = r.stderr.trim().split("\n");
      expect(err).toHaveLength(1);
      expect(err[0]).toMatch(/^ultralong eval: /);
      expect(err[0]).toMatch(re);
    });
  }
});
