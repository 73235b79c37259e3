// Errors over real sockets: every bad-input class gets its 4xx in OpenAI's shape and a warn log line
// naming the code; a body cut mid-stream (a raw socket that sends half a body, then ends) is a 400
// JSON on the edge and on the model function; the model function's own refusals reach the client
// through the one table (429 queue full relayed, unreachable = 502 at error level).
import { connect, createServer } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BusyError, InvalidInputError, LimitError, NotAvailableError } from "../core/errors.ts";
import { sha256Hex } from "../core/hash/sha256.ts";
import { StoreError } from "../core/kv/store.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { FRAMES_CONTENT_TYPE, frameStream, GENERATE_PATH } from "../core/protocol/frames.ts";
import { importSigningKey, SignatureError, signRequest } from "../core/protocol/signing.ts";
import { createEdgeApp } from "../functions/edge/app.ts";
import { edgeTextFromTokenizer } from "../functions/edge/tokenizer-text.ts";
import { type LocalServer, startLocal } from "../functions/entries/local.ts";
import {
  describeError,
  IncompleteBodyError,
  RateLimitError,
  relayedError,
  UpstreamError,
} from "../functions/http/http-errors.ts";
import { listen } from "../functions/node/listen.ts";
import { loadDirTokenizer } from "../functions/node/tokenizer-cache.ts";
import { generateHeader } from "./support/generate-request.ts";
import { testModelDir } from "./support/models.ts";

const KEY = "key-errors-tenant-0123456789";
const KEY_RPM1 = "key-errors-rpm-one-0123456789";
const KEY_OFF = "key-errors-disabled-0123456789";
const SECRET = "errors-test-signing-secret-0123456789";
type Line = Record<string, unknown>;
const logs: Line[] = [];
let s: LocalServer;

beforeAll(async () => {
  s = await startLocal({
    modelDir: await testModelDir(),
    modelId: "tiny",
    runtime: "reference",
    store: null,
    maxPositions: 256,
    maxWaiting: 0,
    secret: SECRET,
    keys: {
      tenants: {
        a: { maxPromptTokens: 200, maxOutputTokens: 200, rpm: 0 },
        one: { rpm: 1 },
        off: { disabled: true },
      },
      keys: [
        { sha256: await sha256Hex(KEY), tenant: "a" },
        { sha256: await sha256Hex(KEY_RPM1), tenant: "one" },
        { sha256: await sha256Hex(KEY_OFF), tenant: "off" },
      ],
    },
    log: (line) => logs.push(line),
  });
});
afterAll(async () => {
  await s?.close();
});

interface ErrorJson {
  error: { message: string; type: string; param: string | null; code: string };
}

/** The log line of one app for the request with this id (waits for deferred stream lines). */
async function logLine(app: "edge" | "model", requestId: string): Promise<Line> {
  for (let i = 0; i < 200; i++) {
    const line = logs.find((l) => l.app === app && l.requestId === requestId);
    if (line) return line;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`no ${app} log line for ${requestId}`);
}

/** Raw HTTP/1.1 over a socket: sends `head` and `body`, ends its side, returns all it got back. */
function rawHttp(port: number, head: string, body: string | Uint8Array): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, "127.0.0.1", () => {
      sock.write(head);
      sock.end(body);
    });
    let got = "";
    sock.on("data", (d) => {
      got += d;
    });
    sock.on("close", () => resolve(got));
    sock.on("error", reject);
  });
}

function parseRaw(text: string): { status: number; headers: string; json: ErrorJson } {
  const split = text.indexOf("\r\n\r\n");
  return {
    status: Number(text.slice(9, 12)),
    headers: text.slice(0, split).toLowerCase(),
    json: JSON.parse(text.slice(split + 4)) as ErrorJson,
  };
}

const portOf = (url: string) => Number(new URL(url).port);

describe("bad input over HTTP: the 4xx of its class, OpenAI's shape, a warn line with the code", () => {
  const json = "application/json";
  const cases: Array<{
    name: string;
    path?: string;
    body: unknown;
    status: number;
    code: string;
    param?: string;
    key?: string | null;
    type?: string;
  }> = [
    {
      name: "malformed JSON",
      body: '{"model": "tiny", "prompt": ',
      status: 400,
      code: "invalid_json",
    },
    { name: "body not an object", body: "[1]", status: 400, code: "invalid_type" },
    {
      name: "wrong type",
      body: { model: "tiny", prompt: "x", max_tokens: "ten" },
      status: 400,
      code: "invalid_type",
      param: "max_tokens",
    },
    {
      name: "out of range",
      body: { model: "tiny", prompt: "x", temperature: -1 },
      status: 400,
      code: "invalid_value",
      param: "temperature",
    },
    { name: "missing field", body: { model: "tiny" }, status: 400, code: "missing_field" },
    {
      name: 'empty prompt ""',
      body: { model: "tiny", prompt: "" },
      status: 400,
      code: "invalid_value",
      param: "prompt",
    },
    {
      name: "empty prompt []",
      body: { model: "tiny", prompt: [] },
      status: 400,
      code: "invalid_value",
      param: "prompt",
    },
    {
      name: 'empty batch [""]',
      body: { model: "tiny", prompt: [""] },
      status: 400,
      code: "invalid_value",
      param: "prompt",
    },
    {
      name: "empty messages",
      path: "/v1/chat/completions",
      body: { model: "tiny", messages: [] },
      status: 400,
      code: "invalid_value",
      param: "messages",
    },
    {
      name: "empty content parts",
      path: "/v1/chat/completions",
      body: { model: "tiny", messages: [{ role: "user", content: [] }] },
      status: 400,
      code: "invalid_value",
      param: "messages[0].content",
    },
    {
      name: "prompt over the context",
      body: { model: "tiny", prompt: "word ".repeat(300) },
      status: 400,
      code: "context_length_exceeded",
    },
    {
      name: "invalid UTF-8",
      body: new Uint8Array([123, 34, 109, 34, 58, 34, 0xff, 34, 125]),
      status: 400,
      code: "invalid_utf8",
    },
    {
      name: "unknown model",
      body: { model: "gpt-9", prompt: "x" },
      status: 404,
      code: "model_not_found",
      type: "not_found_error",
    },
    {
      name: "unknown route",
      path: "/v1/nope",
      body: {},
      status: 404,
      code: "route_not_found",
      type: "not_found_error",
    },
    {
      name: "no API key",
      body: { model: "tiny", prompt: "x" },
      key: null,
      status: 401,
      code: "invalid_api_key",
      type: "authentication_error",
    },
    {
      name: "disabled tenant",
      body: { model: "tiny", prompt: "x" },
      key: KEY_OFF,
      status: 403,
      code: "permission_denied",
      type: "permission_error",
    },
    { name: "wrong Content-Type", body: "prompt=x", status: 415, code: "unsupported_media_type" },
    {
      name: "body over 8 MiB",
      body: JSON.stringify({ model: "tiny", prompt: "x".repeat(9 << 20) }),
      status: 413,
      code: "payload_too_large",
    },
  ];
  for (const c of cases) {
    it(`${c.name}: ${c.status} ${c.code}`, async () => {
      const requestId = `req-bad-${c.name.replace(/\W+/g, "-")}`;
      const key = c.key === undefined ? KEY : c.key;
      const res = await fetch(`${s.url}${c.path ?? "/v1/completions"}`, {
        method: "POST",
        headers: {
          ...(key ? { authorization: `Bearer ${key}` } : {}),
          "content-type": c.code === "unsupported_media_type" ? "text/csv" : json,
          "x-request-id": requestId,
        },
        body:
          typeof c.body === "string" || c.body instanceof Uint8Array
            ? (c.body as BodyInit)
            : JSON.stringify(c.body),
      });
      expect(res.status).toBe(c.status);
      expect(res.headers.get("content-type")).toBe(json);
      const body = (await res.json()) as ErrorJson;
      expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"]);
      expect(body.error).toMatchObject({
        code: c.code,
        type: c.type ?? "invalid_request_error",
        param: c.param ?? body.error.param,
      });
      expect(body.error.message.length).toBeGreaterThan(5);
      expect(await logLine("edge", requestId)).toMatchObject({
        level: "warn",
        status: c.status,
        errorCode: c.code,
      });
    });
  }

  it("over the key's rate: 429 with Retry-After, rate_limit_error", async () => {
    const send = () =>
      fetch(`${s.url}/v1/models`, { headers: { authorization: `Bearer ${KEY_RPM1}` } });
    expect((await send()).status).toBe(200);
    const res = await send();
    expect(res.status).toBe(429);
    expect(Number(res.headers.get("retry-after"))).toBeGreaterThan(0);
    expect(((await res.json()) as ErrorJson).error.type).toBe("rate_limit_error");
  });
});

describe("a body cut mid-stream", () => {
  const head = (path: string, type: string, length: number | null, id: string) =>
    `POST ${path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${KEY}\r\ncontent-type: ${type}\r\nx-request-id: ${id}\r\n${length === null ? "transfer-encoding: chunked" : `content-length: ${length}`}\r\n\r\n`;
  const whole = JSON.stringify({ model: "tiny", prompt: "a prompt that never fully arrives" });

  it("JSON, half of its Content-Length: 400 incomplete_body JSON, logged at warn", async () => {
    const got = parseRaw(
      await rawHttp(
        portOf(s.url),
        head("/v1/completions", "application/json", whole.length, "req-cut-json"),
        whole.slice(0, whole.length >> 1),
      ),
    );
    expect(got.status).toBe(400);
    expect(got.headers).toContain("content-type: application/json");
    expect(got.json.error).toMatchObject({
      code: "incomplete_body",
      type: "invalid_request_error",
    });
    expect(await logLine("edge", "req-cut-json")).toMatchObject({
      level: "warn",
      status: 400,
      errorCode: "incomplete_body",
    });
  });

  it("chunked, no last chunk: the same", async () => {
    const part = whole.slice(0, 20);
    const got = parseRaw(
      await rawHttp(
        portOf(s.url),
        head("/v1/completions", "application/json", null, "req-cut-chunked"),
        `${part.length.toString(16)}\r\n${part}\r\n`,
      ),
    );
    expect(got.status).toBe(400);
    expect(got.json.error.code).toBe("incomplete_body");
    expect(await logLine("edge", "req-cut-chunked")).toMatchObject({ level: "warn", status: 400 });
  });

  it("a streamed text/plain upload: 400 on the edge, and the model function never logs a 5xx", async () => {
    const text = "an upload that is cut off ".repeat(40);
    const got = parseRaw(
      await rawHttp(
        portOf(s.url),
        head("/v1/completions/text?max_tokens=1", "text/plain", text.length * 2, "req-cut-upload"),
        text,
      ),
    );
    expect(got.status).toBe(400);
    expect(got.json.error.code).toBe("incomplete_body");
    expect(await logLine("edge", "req-cut-upload")).toMatchObject({
      level: "warn",
      status: 400,
      errorCode: "incomplete_body",
    });
    const model = logs.find((l) => l.app === "model" && l.requestId === "req-cut-upload");
    if (model) expect(model.level).not.toBe("error");
  });

  it("a multipart file upload: the same", async () => {
    const form = `--b\r\ncontent-disposition: form-data; name="file"; filename="a.txt"\r\ncontent-type: text/plain\r\n\r\n${"file text ".repeat(50)}\r\n--b--\r\n`;
    const got = parseRaw(
      await rawHttp(
        portOf(s.url),
        head("/v1/files", "multipart/form-data; boundary=b", form.length, "req-cut-file"),
        form.slice(0, 200),
      ),
    );
    expect(got.status).toBe(400);
    expect(got.json.error.code).toBe("incomplete_body");
    expect(await logLine("edge", "req-cut-file")).toMatchObject({
      level: "warn",
      status: 400,
      errorCode: "incomplete_body",
    });
  });

  it("the model function's signed frames, cut: 400 incomplete_body, logged at warn", async () => {
    const key = await importSigningKey(SECRET);
    const { headers, signature } = await signRequest(key, "POST", GENERATE_PATH);
    const frames = new Uint8Array(
      await new Response(
        frameStream(key, signature, generateHeader({ requestId: "req-cut-frames" }), [
          Int32Array.from([1, 2]),
        ]),
      ).arrayBuffer(),
    );
    const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`);
    const got = parseRaw(
      await rawHttp(
        portOf(s.modelUrl),
        `POST ${GENERATE_PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: ${FRAMES_CONTENT_TYPE}\r\nx-request-id: req-cut-frames\r\n${lines.join("")}content-length: ${frames.length}\r\n\r\n`,
        frames.subarray(0, 20),
      ),
    );
    expect(got.status).toBe(400);
    expect(got.json.error.code).toBe("incomplete_body");
    expect(await logLine("model", "req-cut-frames")).toMatchObject({
      level: "warn",
      status: 400,
      errorCode: "incomplete_body",
    });
  });

  it("the server still serves", async () => {
    const res = await fetch(`${s.url}/v1/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", prompt: "still here", max_tokens: 1 }),
    });
    expect(res.status).toBe(200);
  });
});

describe("the model function's errors, through the same table", () => {
  it("its queue is full: the edge answers 429 with Retry-After (relayed), logged at warn", async () => {
    const abort = new AbortController();
    const busy = await fetch(`${s.url}/v1/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", prompt: "busy", max_tokens: 200, stream: true }),
      signal: abort.signal,
    });
    const reader = busy.body!.getReader();
    await reader.read(); // its first token: the generation holds the runtime
    const res = await fetch(`${s.url}/v1/completions`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${KEY}`,
        "content-type": "application/json",
        "x-request-id": "req-queue-full",
      },
      body: JSON.stringify({ model: "tiny", prompt: "second", max_tokens: 1 }),
    });
    abort.abort();
    expect(res.status).toBe(429);
    expect(Number(res.headers.get("retry-after"))).toBeGreaterThan(0);
    expect(((await res.json()) as ErrorJson).error).toMatchObject({
      type: "rate_limit_error",
      code: "rate_limit_exceeded",
    });
    expect(await logLine("edge", "req-queue-full")).toMatchObject({ level: "warn", status: 429 });
  });

  it("unreachable: 502 upstream_error, logged at error", async () => {
    const dir = await testModelDir();
    const tokenizer = await loadDirTokenizer(dir, (await loadModelDir(dir)).files);
    const free = createServer().listen(0, "127.0.0.1");
    await new Promise((r) => free.once("listening", r));
    const port = (free.address() as { port: number }).port;
    await new Promise((r) => free.close(r));
    const lines: Line[] = [];
    const edge = await createEdgeApp({
      modelId: "tiny",
      maxContext: 256,
      text: edgeTextFromTokenizer(tokenizer, () => {
        throw new InvalidInputError("no chat here");
      }),
      keys: { tenants: { a: {} }, keys: [{ sha256: await sha256Hex(KEY), tenant: "a" }] },
      modelUrl: `http://127.0.0.1:${port}`,
      secret: SECRET,
      log: (l) => lines.push(l),
    });
    const server = await listen(edge.app);
    try {
      const res = await fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "tiny", prompt: "x", max_tokens: 1 }),
      });
      expect(res.status).toBe(502);
      expect(((await res.json()) as ErrorJson).error).toMatchObject({
        type: "server_error",
        code: "upstream_error",
      });
      expect(lines.at(-1)).toMatchObject({
        level: "error",
        status: 502,
        errorCode: "upstream_error",
      });
    } finally {
      await server.close();
    }
  });

  it("each status it can report becomes the edge's error of that status, or 502", () => {
    const relay = (status: number) =>
      relayedError({ status, code: "its_code", message: "its message" }, 7);
    expect(describeError(relay(400))).toMatchObject({
      status: 400,
      body: { error: { code: "its_code", message: "its message" } },
    });
    expect(relay(429)).toBeInstanceOf(RateLimitError);
    expect(describeError(relay(429)).retryAfterS).toBe(7);
    expect(describeError(relay(499)).status).toBe(499);
    expect(relay(503)).toBeInstanceOf(BusyError); // with a retry-after: short of a resource for now
    expect(describeError(relay(503))).toMatchObject({ status: 503, retryAfterS: 7 });
    const noRetry = relayedError({ status: 503, code: "not_available", message: "no GPU" });
    expect(noRetry).toBeInstanceOf(NotAvailableError);
    expect(noRetry).not.toBeInstanceOf(BusyError);
    expect(describeError(noRetry).retryAfterS).toBeUndefined();
    expect(describeError(relayedError({ status: 429, code: "x", message: "y" })).retryAfterS).toBe(
      1,
    );
    // The edge's own signature, request or server: not the client's doing.
    for (const status of [401, 403, 404, 413, 415, 500, 502]) {
      expect(relay(status)).toBeInstanceOf(UpstreamError);
      expect(describeError(relay(status)).status).toBe(502);
    }
  });

  it("statuses follow the class, not the code, and subclasses inherit theirs", () => {
    class Narrower extends LimitError {}
    expect(describeError(new Narrower("too long")).status).toBe(400);
    expect(describeError(new SignatureError("bad tag")).status).toBe(401);
    expect(describeError(new StoreError("down")).status).toBe(503);
    // Short of memory or pool room for now: a 503 that says when to retry, not the request's 400.
    expect(describeError(new BusyError("no room", 2))).toMatchObject({
      status: 503,
      retryAfterS: 2,
    });
    expect(describeError(new IncompleteBodyError()).status).toBe(400);
    expect(describeError(new Error("boom"))).toMatchObject({
      status: 500,
      body: { error: { code: "internal_error", message: "internal server error" } },
    });
  });
});
