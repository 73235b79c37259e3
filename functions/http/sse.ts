// The streamed responses of both apps: the edge's OpenAI chunks to its client and the model
// function's events to the edge are the same machine, written once here. A response whose status
// is already committed (200) reports a later failure in-band, as its last event; keep-alive
// comments hold idle proxies open; a client that goes away aborts the work.
//
//   clientAbort(request.signal)   the work's AbortController, aborted when the client disconnects
//   sseResponse({ abort, run, fail, done, keepAliveMs })
//                                 run(send) writes events; a throw becomes fail(err)'s last event;
//                                 done(status) runs once, after the last byte
import { CancelledError } from "../../core/errors.ts";
import { closeQuietly, SSE_HEADERS, sseComment } from "../../core/protocol/events.ts";

export interface ClientAbort {
  /** Aborted with CancelledError("client went away") when the client disconnects. */
  controller: AbortController;
  /** Stops listening to the client's signal (the work ended). */
  release(): void;
}

/**
 * Links the request's signal to a controller for the work. A listener added to a signal that has
 * already fired never runs (a client gone while its request was read, verified or tokenized), so
 * the state is checked too: otherwise such a request would be served in full.
 */
export function clientAbort(clientSignal: AbortSignal | undefined): ClientAbort {
  const controller = new AbortController();
  const onAbort = () => controller.abort(new CancelledError("client went away"));
  if (clientSignal?.aborted) onAbort();
  else clientSignal?.addEventListener("abort", onAbort, { once: true });
  return {
    controller,
    release: () => clientSignal?.removeEventListener("abort", onAbort),
  };
}

export interface SseResponseOptions {
  /** The work's controller: aborted when the reader cancels; `send` writes nothing once it is. */
  abort: AbortController;
  /** Keep-alive comment interval, ms. */
  keepAliveMs: number;
  headers?: Record<string, string>;
  /** Writes the events. */
  run(send: (bytes: Uint8Array) => void): Promise<void>;
  /** What a throw from `run` becomes: the status to log and the last event. */
  fail(err: unknown): { status: number; event: Uint8Array };
  /** Once, after the last byte, with 200 or `fail`'s status. */
  done(status: number): void;
}

export function sseResponse(o: SseResponseOptions): Response {
  let timer: ReturnType<typeof setInterval> | undefined;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      const send = (bytes: Uint8Array) => {
        if (!o.abort.signal.aborted) controller.enqueue(bytes);
      };
      timer = setInterval(() => send(sseComment("keep-alive")), o.keepAliveMs);
      void (async () => {
        let status = 200;
        try {
          await o.run(send);
        } catch (err) {
          const failed = o.fail(err);
          status = failed.status;
          send(failed.event);
        } finally {
          clearInterval(timer);
          try {
            o.done(status);
          } finally {
            closeQuietly(controller);
          }
        }
      })();
    },
    cancel() {
      clearInterval(timer);
      o.abort.abort(new CancelledError("client went away"));
    },
  });
  return new Response(body, { headers: { ...SSE_HEADERS, ...o.headers } });
}
