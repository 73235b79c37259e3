// The edge bundled with esbuild (the deploy bundler, Workers target, vocabulary embedded as
// infra/workers/wrangler.toml deploys it: no TOKENIZER binding) and run in the real workerd binary,
// called over HTTP; it forwards signed frames to a model function on a Node socket. Same
// answers as the Node edge for the same greedy request.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseSse } from "../core/protocol/events.ts";
import { sha256Hex } from "../functions/edge/keys.ts";
import { type LocalServer, startLocal } from "../functions/platform/local.ts";
import { bundleEdge } from "../infra/deploy/bundle.ts";
import { startWorkerd, type WorkerdServer } from "./harness/workerd.ts";
import { testModelDir } from "./support/models.ts";

const KEY = "workerd-test-key-0123";
const SECRET = "workerd-test-signing-secret-0123456789";
let local: LocalServer;
let worker: WorkerdServer;
let bundleDir: string;

beforeAll(async () => {
  const dir = await testModelDir();
  const keys = {
    tenants: { t: { rpm: 0, maxOutputTokens: 32 } },
    keys: [{ sha256: await sha256Hex(KEY), tenant: "t" }],
  };
  local = await startLocal({
    modelDir: dir,
    modelId: "tiny",
    runtime: "reference",
    store: null,
    maxPositions: 4096,
    keys,
    secret: SECRET,
    log: () => {},
  });
  bundleDir = await mkdtemp(join(tmpdir(), "ultralong-edge-bundle-"));
  const { file } = await bundleEdge(process.cwd(), "workers", bundleDir);
  worker = await startWorkerd({
    script: await readFile(file, "utf8"),
    bindings: {
      API_KEYS: JSON.stringify(keys),
      SIGNING_SECRET: SECRET,
      MODEL_URL: local.modelUrl,
      MODEL_ID: "tiny",
      MAX_CONTEXT: "4096",
    },
    allowLocalNetwork: true,
  });
});
afterAll(async () => {
  await worker?.stop();
  await local?.close();
  if (bundleDir) await rm(bundleDir, { recursive: true, force: true });
});

const headers = { authorization: `Bearer ${KEY}`, "content-type": "application/json" };

describe("edge in workerd", () => {
  it("answers /healthz without a key and 401 without one elsewhere", async () => {
    expect((await fetch(`${worker.url}/healthz`)).status).toBe(200);
    const r = await fetch(`${worker.url}/v1/models`);
    expect(r.status).toBe(401);
    expect(((await r.json()) as { error: { type: string } }).error.type).toBe(
      "authentication_error",
    );
  });

  it("tokenizes and chats exactly like the Node edge", async () => {
    const body = JSON.stringify({
      model: "tiny",
      messages: [{ role: "user", content: "Hi <|eot_id|> there" }],
      max_tokens: 6,
      temperature: 0,
    });
    const tok = JSON.stringify({ messages: [{ role: "user", content: "Hi <|eot_id|> there" }] });
    const [wt, nt] = await Promise.all(
      [worker.url, local.url].map(async (u) =>
        (await fetch(`${u}/v1/tokenize`, { method: "POST", headers, body: tok })).json(),
      ),
    );
    expect(wt).toEqual(nt);
    const w = (await (
      await fetch(`${worker.url}/v1/chat/completions`, { method: "POST", headers, body })
    ).json()) as Record<string, unknown>;
    const n = (await (
      await fetch(`${local.url}/v1/chat/completions`, { method: "POST", headers, body })
    ).json()) as Record<string, unknown>;
    expect(w.choices).toEqual(n.choices);
    expect((w.usage as { completion_tokens: number }).completion_tokens).toBe(6);
  });

  it("streams completions with usage through workerd", async () => {
    const res = await fetch(`${worker.url}/v1/completions`, {
      method: "POST",
      headers,
      body: JSON.stringify({
        model: "tiny",
        prompt: "workerd streams",
        max_tokens: 4,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    expect(res.headers.get("content-type")).toContain("text/event-stream");
    const data: string[] = [];
    for await (const m of parseSse(res.body!)) data.push(m.data);
    expect(data.at(-1)).toBe("[DONE]");
    const usage = JSON.parse(data.at(-2)!).usage;
    expect(usage.completion_tokens).toBe(4);
    const bad = await fetch(`${worker.url}/v1/completions`, {
      method: "POST",
      headers,
      body: '{"model":"tiny","prompt":[1,999999]}',
    });
    expect(bad.status).toBe(400);
  });
});
