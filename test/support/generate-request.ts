// The edge-to-model request, built as the edge builds it, for tests that talk to a model function
// directly: a GenerateHeader with greedy defaults, and its signed frame body.
import { FRAMES_CONTENT_TYPE, frameStream, GENERATE_PATH } from "../../core/protocol/frames.ts";
import type { GenerateHeader } from "../../core/protocol/header.ts";
import { importSigningKey, signRequest } from "../../core/protocol/signing.ts";

/** A greedy one-token request header for `tenant` (fields overridable). */
export function generateHeader(overrides: Partial<GenerateHeader> = {}): GenerateHeader {
  return {
    v: 1,
    requestId: "r1",
    tenant: "a",
    promptTokens: 2,
    maxTokens: 1,
    temperature: 0,
    topP: 1,
    seed: null,
    stop: [],
    logprobs: false,
    topLogprobs: 0,
    progress: false,
    ...overrides,
  };
}

/** A request signed once with `secret`; `send(url)` posts the same bytes (a replay when repeated). */
export async function signedGenerate(
  secret: string,
  tokens: Int32Array,
  overrides: Partial<GenerateHeader> = {},
): Promise<(modelUrl: string) => Promise<Response>> {
  const key = await importSigningKey(secret);
  const { headers, signature } = await signRequest(key, "POST", GENERATE_PATH);
  const header = generateHeader({ promptTokens: tokens.length, ...overrides });
  const body = new Uint8Array(
    await new Response(frameStream(key, signature, header, [tokens])).arrayBuffer(),
  );
  return (modelUrl) =>
    fetch(`${modelUrl}${GENERATE_PATH}`, {
      method: "POST",
      headers: { ...headers, "content-type": FRAMES_CONTENT_TYPE },
      body,
    });
}
