// AWS Lambda entry for the edge, for a function URL in RESPONSE_STREAM invoke mode (hono's
// streamHandle). Settings from the environment:
//   ULTRALONG_TOKENIZER        compiled vocabulary in the deployment package (default
//                              ./tokenizer.ultralong.bin, next to index.mjs)
//   ULTRALONG_API_KEYS         key file JSON, or ULTRALONG_API_KEYS_ARN (Secrets Manager)
//   ULTRALONG_SIGNING_SECRET   or ULTRALONG_SIGNING_SECRET_ARN
//   ULTRALONG_MODEL_URL, ULTRALONG_MODEL_ID, ULTRALONG_MAX_CONTEXT
//   ULTRALONG_FILES            s3://bucket/prefix for uploaded files (default: memory, per instance)
import { readFileSync } from "node:fs";
import { Hono } from "hono";
import { streamHandle } from "hono/aws-lambda";
import { openStore } from "../../core/node/snapshot-dir.ts";
import type { EdgeApp } from "../edge/app.ts";
import { ObjectFileStore } from "../edge/files.ts";
import { buildEdge } from "./edge-env.ts";

const env = process.env;
let edge: Promise<EdgeApp> | null = null;

/** A secret from the environment, or from Secrets Manager by ARN (the SDK ships with the runtime). */
async function secret(name: string): Promise<string> {
  const direct = env[name];
  if (direct) return direct;
  const arn = env[`${name}_ARN`];
  if (!arn) return "";
  const pkg = "@aws-sdk/client-secrets-manager";
  const sm = await import(pkg);
  const out = await new sm.SecretsManagerClient({}).send(
    new sm.GetSecretValueCommand({ SecretId: arn }),
  );
  return String(out.SecretString ?? "");
}

async function build(): Promise<EdgeApp> {
  return buildEdge({
    tokenizer: new Uint8Array(readFileSync(env.ULTRALONG_TOKENIZER ?? "tokenizer.ultralong.bin")),
    apiKeys: await secret("ULTRALONG_API_KEYS"),
    signingSecret: await secret("ULTRALONG_SIGNING_SECRET"),
    modelUrl: env.ULTRALONG_MODEL_URL ?? "",
    modelId: env.ULTRALONG_MODEL_ID ?? "",
    maxContext: env.ULTRALONG_MAX_CONTEXT ?? "",
    files: env.ULTRALONG_FILES ? new ObjectFileStore(openStore(env.ULTRALONG_FILES)) : undefined,
  });
}

const app = new Hono();
app.all("*", async (c) => {
  edge ??= build();
  return (await edge).app.fetch(c.req.raw);
});

export const handler = streamHandle(app);
