// AWS Lambda entry for the edge, for a function URL in RESPONSE_STREAM invoke mode (hono's
// streamHandle). Settings from the environment: ULTRALONG_TOKENIZER (path of the compiled
// vocabulary in the deployment package), ULTRALONG_API_KEYS, ULTRALONG_SIGNING_SECRET,
// ULTRALONG_MODEL_URL, ULTRALONG_MODEL_ID, ULTRALONG_MAX_CONTEXT.
import { readFileSync } from "node:fs";
import { Hono } from "hono";
import { streamHandle } from "hono/aws-lambda";
import type { EdgeApp } from "../edge/app.ts";
import { buildEdge } from "./edge-env.ts";

let edge: Promise<EdgeApp> | null = null;
const env = process.env;

const app = new Hono();
app.all("*", async (c) => {
  edge ??= buildEdge({
    tokenizer: new Uint8Array(readFileSync(env.ULTRALONG_TOKENIZER ?? "tokenizer.ultralong.bin")),
    apiKeys: env.ULTRALONG_API_KEYS ?? "",
    signingSecret: env.ULTRALONG_SIGNING_SECRET ?? "",
    modelUrl: env.ULTRALONG_MODEL_URL ?? "",
    modelId: env.ULTRALONG_MODEL_ID ?? "",
    maxContext: env.ULTRALONG_MAX_CONTEXT ?? "",
  });
  return (await edge).app.fetch(c.req.raw);
});

export const handler = streamHandle(app);
