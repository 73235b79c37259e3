// The edge's client for the model function: signs the request, streams the prompt as authenticated
// frames (prefill can start before the last frame is sent), and yields the model's SSE events.
// Aborting `signal` (the client went away) aborts the fetch, which the model function sees as a
// cancelled request and stops generating. Its errors, and the model function's, are typed here and
// mapped to statuses by functions/http/http-errors.ts like every other error.
import { UltralongError } from "../../core/errors.ts";
import { type ErrorEvent, type ModelEvent, parseSse } from "../../core/protocol/events.ts";
import { FRAMES_CONTENT_TYPE, frameStream, GENERATE_PATH } from "../../core/protocol/frames.ts";
import type { GenerateHeader } from "../../core/protocol/header.ts";
import { signRequest } from "../../core/protocol/signing.ts";
import { relayedError, UpstreamError } from "../http/http-errors.ts";

export interface ModelClientOptions {
  /** Base URL of the model function, e.g. http://127.0.0.1:8081. */
  url: string;
  signingKey: CryptoKey;
  /** Defaults to global fetch; Workers pass a service binding's fetch. */
  fetch?: (req: Request) => Promise<Response>;
  clock?: () => number;
}

/**
 * Sends the request and waits for the model function's response headers (so queue-full and
 * signature failures surface as HTTP errors before anything is streamed to the client), then
 * returns its events.
 */
export async function generateRemote(
  options: ModelClientOptions,
  header: GenerateHeader,
  prompt: AsyncIterable<Int32Array> | Iterable<Int32Array>,
  signal: AbortSignal,
): Promise<AsyncGenerator<Exclude<ModelEvent, { event: "error" }>>> {
  const { headers, signature } = await signRequest(options.signingKey, "POST", GENERATE_PATH, {
    clock: options.clock,
  });
  const body = frameStream(options.signingKey, signature, header, prompt);
  const request = new Request(new URL(GENERATE_PATH, options.url), {
    method: "POST",
    headers: { ...headers, "content-type": FRAMES_CONTENT_TYPE, "x-request-id": header.requestId },
    body,
    signal,
    // Node's fetch needs this to send a streamed body; others ignore it.
    duplex: "half",
  } as RequestInit);
  let res: Response;
  try {
    res = await (options.fetch ?? fetch)(request);
  } catch (err) {
    if (signal.aborted) throw err;
    throw new UpstreamError(`the model function is unreachable: ${(err as Error).message}`);
  }
  if (res.status !== 200) {
    const text = await res.text().catch(() => "");
    let body: { message?: unknown; code?: unknown } = {};
    try {
      body = (JSON.parse(text) as { error?: typeof body }).error ?? {};
    } catch {
      // not JSON: the status alone says what happened
    }
    const error: ErrorEvent = {
      status: res.status,
      code: typeof body.code === "string" ? body.code : "upstream_error",
      message: typeof body.message === "string" ? body.message : `answered ${res.status}`,
    };
    const retryAfter = Number(res.headers.get("retry-after") ?? Number.NaN); // seconds, or absent
    throw relayedError(error, Number.isFinite(retryAfter) ? retryAfter : undefined);
  }
  if (!res.body) throw new UpstreamError("the model function sent no body");
  // Cancel the response body ourselves when `signal` fires. Passing `signal` to fetch alone is not
  // enough on Node 20: undici links a Request's signal to the one it follows through a WeakRef,
  // and once the Request objects are garbage collected (a long decode allocates plenty) the abort
  // no longer reaches the connection, so the model function served a gone client to the end, at
  // random, about 4 times in 10. The pipe's own abort listener holds the body strongly; cancelling
  // it aborts the fetch and closes the socket, which the model function sees. The model function
  // answers its headers before it queues, so this covers the queue wait as well.
  const piped = res.body.pipeThrough(new TransformStream<Uint8Array, Uint8Array>(), { signal });
  return events(piped, signal);
}

/** The model function's events; an `error` event, or a stream that breaks, is thrown as the edge's. */
async function* events(
  body: ReadableStream<Uint8Array>,
  signal: AbortSignal,
): AsyncGenerator<Exclude<ModelEvent, { event: "error" }>> {
  try {
    for await (const msg of parseSse(body)) {
      const event = msg.event as ModelEvent["event"];
      if (event === "error") {
        const e = JSON.parse(msg.data) as ErrorEvent;
        throw relayedError(e, e.retryAfterS);
      }
      if (event !== "progress" && event !== "token" && event !== "usage") continue;
      yield { event, data: JSON.parse(msg.data) } as Exclude<ModelEvent, { event: "error" }>;
    }
  } catch (err) {
    if (err instanceof UltralongError) throw err;
    // The app aborted the fetch with a CancelledError (its client went away): that, not a break.
    if (signal.aborted) throw signal.reason ?? err;
    throw new UpstreamError(`the model function's stream broke: ${(err as Error).message}`);
  }
}
