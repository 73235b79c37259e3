// The edge's client for the model function: signs the request, streams the prompt as authenticated
// frames (prefill can start before the last frame is sent), and yields the model's SSE events.
// Aborting `signal` (the client went away) aborts the fetch, which the model function sees as a
// cancelled request and stops generating.
import { UltralongError } from "../../core/errors.ts";
import { type ModelEvent, parseSse } from "../../core/protocol/events.ts";
import { FRAMES_CONTENT_TYPE, frameStream, GENERATE_PATH } from "../../core/protocol/frames.ts";
import type { GenerateHeader } from "../../core/protocol/header.ts";
import { signRequest } from "../../core/protocol/signing.ts";
import { RateLimitError } from "../platform/http-errors.ts";

/** The model function failed in a way the client did not cause (HTTP 502 unless it says otherwise). */
export class UpstreamError extends UltralongError {
  constructor(
    code: string,
    message: string,
    readonly status: number,
  ) {
    super(code, message);
  }
}

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
): Promise<AsyncGenerator<ModelEvent>> {
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
    throw new UpstreamError(
      "upstream_error",
      `the model function is unreachable: ${(err as Error).message}`,
      502,
    );
  }
  if (res.status !== 200) {
    const text = await res.text().catch(() => "");
    let err: { message?: string; code?: string } = {};
    try {
      err = (JSON.parse(text) as { error?: typeof err }).error ?? {};
    } catch {
      // not JSON: keep the status only
    }
    const message = err.message ?? `model function answered ${res.status}`;
    if (res.status === 429)
      throw new RateLimitError(message, Number(res.headers.get("retry-after") ?? 1));
    // 4xx from the model function about the prompt is the client's problem; an auth failure is ours.
    if (res.status >= 400 && res.status < 500 && res.status !== 401 && res.status !== 403) {
      throw new UpstreamError(err.code ?? "invalid_input", message, res.status);
    }
    throw new UpstreamError("upstream_error", `model function: ${message}`, 502);
  }
  if (!res.body) throw new UpstreamError("upstream_error", "model function sent no body", 502);
  return events(res.body);
}

async function* events(body: ReadableStream<Uint8Array>): AsyncGenerator<ModelEvent> {
  for await (const msg of parseSse(body)) {
    const event = msg.event as ModelEvent["event"];
    if (event !== "progress" && event !== "token" && event !== "usage" && event !== "error")
      continue;
    yield { event, data: JSON.parse(msg.data) } as ModelEvent;
  }
}
