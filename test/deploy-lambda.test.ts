// The edge exactly as the deploy ships it to Lambda: the esbuild bundle plus the compiled
// vocabulary beside it, loaded from its folder and invoked with Function URL (payload 2.0) events.
// The Lambda runtime's two streaming globals are stood in for by plain Node streams; the edge
// forwards signed frames to a real model function on a loopback socket.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Tokenizer } from "../core/tokenizer/index.ts";
import { COMPILED_TOKENIZER_FILE } from "../core/tokenizer/load.ts";
import { type DeployedEdgeFixture, startDeployedEdgeFixture } from "./support/deployed-edge.ts";

type Handler = (event: unknown, stream: PassThrough, context: unknown) => Promise<void>;
interface Reply {
  statusCode: number;
  headers: Record<string, string>;
  body: string;
}

let edge: DeployedEdgeFixture;
let handler: Handler;
let meta: { statusCode: number; headers: Record<string, string> } | undefined;

beforeAll(async () => {
  edge = await startDeployedEdgeFixture("lambda", "lambda-test-key-0123");
  Object.assign(process.env, {
    ULTRALONG_TOKENIZER: join(edge.bundleDir, COMPILED_TOKENIZER_FILE),
    ULTRALONG_API_KEYS: edge.apiKeys,
    ULTRALONG_SIGNING_SECRET: edge.secret,
    ULTRALONG_MODEL_URL: edge.settings.modelUrl,
    ULTRALONG_MODEL_ID: edge.settings.modelId,
    ULTRALONG_MAX_CONTEXT: edge.settings.maxContext,
  });
  // What the Lambda Node runtime provides to response-streaming handlers.
  Object.assign(globalThis, {
    awslambda: {
      streamifyResponse: (fn: Handler) => fn,
      HttpResponseStream: {
        from: (stream: PassThrough, m: typeof meta) => {
          meta = m;
          return stream;
        },
      },
    },
  });
  handler = ((await import(edge.bundleFile)) as { handler: Handler }).handler;
});
afterAll(async () => {
  await edge?.close();
});

async function invoke(
  method: string,
  path: string,
  body?: unknown,
  key = edge.key,
): Promise<Reply> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (key) headers.authorization = `Bearer ${key}`;
  const event = {
    version: "2.0",
    rawPath: path,
    rawQueryString: "",
    headers,
    requestContext: {
      domainName: "abc.lambda-url.us-east-1.on.aws",
      http: { method, path, protocol: "HTTP/1.1", sourceIp: "127.0.0.1", userAgent: "test" },
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    isBase64Encoded: false,
  };
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on("data", (c: Buffer) => chunks.push(c));
  meta = undefined;
  await handler(event, stream, {});
  if (!meta) throw new Error("the handler never set the response metadata");
  const m = meta as { statusCode: number; headers: Record<string, string> };
  return { statusCode: m.statusCode, headers: m.headers, body: Buffer.concat(chunks).toString() };
}

describe("edge as deployed to Lambda", () => {
  it("ships the compiled Llama 3.1 vocabulary with its chat template", async () => {
    const tok = Tokenizer.fromCompiled(
      new Uint8Array(await readFile(join(edge.bundleDir, COMPILED_TOKENIZER_FILE))),
    );
    expect(tok.vocabSize).toBe(128256);
    expect(tok.chatTemplate).toContain("<|start_header_id|>");
  });

  it("answers /healthz without a key and refuses other routes without one", async () => {
    expect((await invoke("GET", "/healthz", undefined, "")).statusCode).toBe(200);
    const r = await invoke("GET", "/v1/models", undefined, "");
    expect(r.statusCode).toBe(401);
    expect(JSON.parse(r.body).error.type).toBe("authentication_error");
  });

  it("streams a chat completion from the model function", async () => {
    const r = await invoke("POST", "/v1/chat/completions", {
      model: "tiny",
      messages: [{ role: "user", content: "Hello" }],
      max_tokens: 4,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(r.statusCode).toBe(200);
    expect(r.headers["content-type"]).toContain("text/event-stream");
    const events = r.body
      .split("\n")
      .filter((l) => l.startsWith("data: ") && l !== "data: [DONE]")
      .map((l) => JSON.parse(l.slice(6)));
    const usage = events.at(-1).usage;
    expect(usage.completion_tokens).toBe(4);
    expect(usage.prompt_tokens).toBeGreaterThan(5);
    expect(r.body.trim().endsWith("data: [DONE]")).toBe(true);
  });
});
