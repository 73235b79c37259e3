// The edge bundled with esbuild (the deploy bundler, Workers target, vocabulary embedded as
// infra/workers/wrangler.toml deploys it: no TOKENIZER binding) and run in the real workerd binary,
// called over HTTP; it forwards signed frames to a model function on a Node socket. Same
// answers as the Node edge for the same greedy request.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseSse } from "../core/protocol/events.ts";
import type { WorkerdServer } from "./harness/workerd.ts";
import { type DeployedEdgeFixture, startWorkersEdge } from "./support/deployed-edge.ts";

let edge: DeployedEdgeFixture;
let worker: WorkerdServer;
let close: (() => Promise<void>) | undefined;
const KEY = "workerd-test-key-0123";

beforeAll(async () => {
  ({ edge, worker, close } = await startWorkersEdge(KEY));
});
afterAll(() => close?.());

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
      [worker.url, edge.local.url].map(async (u) =>
        (await fetch(`${u}/v1/tokenize`, { method: "POST", headers, body: tok })).json(),
      ),
    );
    expect(wt).toEqual(nt);
    const w = (await (
      await fetch(`${worker.url}/v1/chat/completions`, { method: "POST", headers, body })
    ).json()) as Record<string, unknown>;
    const n = (await (
      await fetch(`${edge.local.url}/v1/chat/completions`, { method: "POST", headers, body })
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

  it("streams n choices through workerd as the Node edge answers them", async () => {
    const body = (stream: boolean) =>
      JSON.stringify({
        model: "tiny",
        prompt: "workerd chooses",
        max_tokens: 4,
        temperature: 1,
        seed: 11,
        n: 3,
        stream,
      });
    const res = await fetch(`${worker.url}/v1/completions`, {
      method: "POST",
      headers,
      body: body(true),
    });
    const text = ["", "", ""];
    for await (const m of parseSse(res.body!)) {
      if (m.data === "[DONE]") continue;
      for (const c of JSON.parse(m.data).choices) text[c.index] += c.text;
    }
    const node = (await (
      await fetch(`${edge.local.url}/v1/completions`, {
        method: "POST",
        headers,
        body: body(false),
      })
    ).json()) as { choices: { text: string }[] };
    expect(text).toEqual(node.choices.map((c) => c.text));
  });
});
