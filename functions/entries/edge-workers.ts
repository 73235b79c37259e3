// Cloudflare Workers entry for the edge. Bindings: TOKENIZER (data: compiled vocabulary), API_KEYS,
// SIGNING_SECRET (secrets), MODEL_URL, MODEL_ID, MAX_CONTEXT (vars); MODEL (optional service binding
// to the model function). Built once per isolate.
import type { EdgeApp } from "../edge/app.ts";
import { buildEdge } from "./edge-env.ts";

interface Env {
  TOKENIZER: ArrayBuffer;
  API_KEYS: string;
  SIGNING_SECRET: string;
  MODEL_URL: string;
  MODEL_ID: string;
  MAX_CONTEXT: string;
  MODEL?: { fetch(req: Request): Promise<Response> };
}

let edge: Promise<EdgeApp> | null = null;

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    edge ??= buildEdge({
      tokenizer: new Uint8Array(env.TOKENIZER),
      apiKeys: env.API_KEYS,
      signingSecret: env.SIGNING_SECRET,
      modelUrl: env.MODEL_URL,
      modelId: env.MODEL_ID,
      maxContext: env.MAX_CONTEXT,
      modelFetch: env.MODEL ? (req) => env.MODEL!.fetch(req) : undefined,
    });
    return (await edge).app.fetch(request);
  },
};
