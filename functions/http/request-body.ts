// A request's body that is either whole or an IncompleteBodyError (400): never a short body that
// looks complete. A client that sends half its body and closes can otherwise show up three ways,
// depending on when the app reads: a read that throws (Node: "aborted", ECONNRESET; workerd and
// Lambda have their own), or, when the read starts after the socket closed, @hono/node-server's
// stream ending cleanly with the bytes that came, or with none. Measured on Node 20.20 with
// @hono/node-server 2.1.9 and 0-5 ms of app work before the read: 196 of 200 cut requests read as a
// complete empty body.
import { UltralongError } from "../../core/errors.ts";
import { IncompleteBodyError } from "./http-errors.ts";

/**
 * The body of `req`, chunk by chunk (null when it has none). Fails with IncompleteBodyError when a
 * read fails, when fewer bytes than Content-Length arrive, or when it ends after the client's
 * connection closed (the request's signal aborted), since then nothing says it was all sent.
 */
export function completeBody(req: Request): ReadableStream<Uint8Array> | null {
  const body = req.body;
  if (!body) return null;
  const declared = Number(req.headers.get("content-length") ?? "NaN");
  const reader = body.getReader();
  let total = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await reader.read().catch((err: unknown) => {
        if (err instanceof UltralongError) throw err;
        throw new IncompleteBodyError(undefined, { cause: err });
      });
      if (!done) {
        total += value.length;
        controller.enqueue(value);
        return;
      }
      if (Number.isFinite(declared) ? total < declared : req.signal?.aborted)
        throw new IncompleteBodyError();
      controller.close();
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}
