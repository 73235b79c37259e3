// The edge app from string settings, the same on every platform (Workers bindings, Lambda
// environment): settings are read and checked here once, so each entry file stays a few lines.
import { InvalidInputError } from "../../core/errors.ts";
import { Tokenizer } from "../../core/tokenizer/index.ts";
import { createEdgeApp, type EdgeApp } from "../edge/app.ts";
import type { FileStore } from "../edge/files.ts";
import type { KeyConfig } from "../edge/keys.ts";
import { edgeTextFromTokenizer, templateChatRenderer } from "../edge/tokenizer-text.ts";

export interface EdgeSettings {
  /** Compiled vocabulary (core/tokenizer `compile()`), with the chat template in it. */
  tokenizer: Uint8Array;
  /** Key file JSON (functions/edge/keys.ts). */
  apiKeys: string;
  signingSecret: string;
  modelUrl: string;
  modelId: string;
  maxContext: string;
  modelFetch?: (req: Request) => Promise<Response>;
  /** Uploaded files (default: memory, per isolate or instance). */
  files?: FileStore;
}

export function buildEdge(s: EdgeSettings): Promise<EdgeApp> {
  for (const [name, v] of Object.entries({
    apiKeys: s.apiKeys,
    signingSecret: s.signingSecret,
    modelUrl: s.modelUrl,
    modelId: s.modelId,
    maxContext: s.maxContext,
  })) {
    if (!v) throw new InvalidInputError(`edge setting '${name}' is missing`);
  }
  const tokenizer = Tokenizer.fromCompiled(s.tokenizer);
  const text = edgeTextFromTokenizer(tokenizer, templateChatRenderer(tokenizer, s.modelId));
  return createEdgeApp({
    modelId: s.modelId,
    maxContext: Number(s.maxContext),
    text,
    keys: JSON.parse(s.apiKeys) as KeyConfig,
    modelUrl: s.modelUrl,
    secret: s.signingSecret,
    modelFetch: s.modelFetch,
    files: s.files,
  });
}
