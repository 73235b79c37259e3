// The model function's response: server-sent events (text/event-stream), one JSON object per event.
//   event: progress  {done, total, cached, tokensPerSecond}       prefill progress (opt-in)
//   event: token     {id, text, logprob?, top?: [{id, text, logprob}]}
//   event: usage     {promptTokens, completionTokens, cachedTokens, finishReason, prefillMs, decodeMs}
//   event: error     {code, message}                               ends the stream
// Comment lines (": keep-alive") keep idle connections open through proxies during long prefill.
// The same encoder/parser serve the edge's OpenAI stream (data-only events).

export interface ProgressEvent {
  /** Prompt tokens in the KV cache (restored + computed). */
  done: number;
  /** Prompt tokens in all (null while a streamed prompt is still arriving). */
  total: number | null;
  /** Prompt tokens restored from snapshots. */
  cached: number;
  /** Prefill rate over the computed part, tokens per second. */
  tokensPerSecond: number;
}

export interface TopLogprob {
  id: number;
  text: string;
  logprob: number;
}

export interface TokenEvent {
  id: number;
  text: string;
  logprob?: number;
  top?: TopLogprob[];
}

export type FinishReason = "stop" | "length" | "cancelled";

export interface UsageEvent {
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
  finishReason: FinishReason;
  /** Wall time of restore + prefill, and of decode, ms. */
  prefillMs: number;
  decodeMs: number;
}

export interface ErrorEvent {
  code: string;
  message: string;
  /** HTTP status the edge should use when nothing has been streamed yet. */
  status?: number;
  /** Seconds to wait before retrying, where the status has one (429; 503 for want of a resource). */
  retryAfterS?: number;
}

export type ModelEvent =
  | { event: "progress"; data: ProgressEvent }
  | { event: "token"; data: TokenEvent }
  | { event: "usage"; data: UsageEvent }
  | { event: "error"; data: ErrorEvent };

const encoder = new TextEncoder();

export function sseEvent(event: string | null, data: unknown): Uint8Array {
  const body = typeof data === "string" ? data : JSON.stringify(data);
  return encoder.encode(`${event ? `event: ${event}\n` : ""}data: ${body}\n\n`);
}

export function sseComment(text: string): Uint8Array {
  return encoder.encode(`: ${text}\n\n`);
}

export interface SseMessage {
  /** "message" when the event had no `event:` line. */
  event: string;
  data: string;
}

/** Parses a text/event-stream body (comments skipped), per the WHATWG event-stream rules we use. */
export async function* parseSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseMessage> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "message";
  let data: string[] = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl = buffer.indexOf("\n");
      while (nl >= 0) {
        let line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length > 0) yield { event, data: data.join("\n") };
          event = "message";
          data = [];
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "event") event = value;
          else if (field === "data") data.push(value);
        }
        nl = buffer.indexOf("\n");
      }
    }
    if (data.length > 0) yield { event, data: data.join("\n") };
  } finally {
    await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/** Response headers of every event stream we send (no proxy buffering, no caching). */
export const SSE_HEADERS = {
  "content-type": "text/event-stream",
  "cache-control": "no-cache",
  "x-accel-buffering": "no",
} as const;

/** Closes a stream's controller, which the client may already have cancelled. */
export function closeQuietly(controller: ReadableStreamDefaultController<Uint8Array>): void {
  try {
    controller.close();
  } catch {
    // already cancelled by the client
  }
}
