// The one place where errors become HTTP statuses (STYLE.md habit 6). Both Hono apps install
// `onError(errorResponse)`, the edge's forwarder rebuilds the model function's errors through
// `relayedError`, and the Node listener answers a body cut mid-stream with the same body. A status
// is decided by the error's class (the table below), never by its `code`, which is free text for
// the client. Bodies use OpenAI's error shape so OpenAI SDKs surface the message:
//   { "error": { "message", "type", "param", "code" } }
import {
  BusyError,
  CancelledError,
  FormatError,
  InvalidInputError,
  LimitError,
  NotAvailableError,
  NotFoundError,
  UltralongError,
} from "../../core/errors.ts";
import { StoreError } from "../../core/kv/store.ts";
import type { ErrorEvent } from "../../core/protocol/events.ts";
import { SignatureError } from "../../core/protocol/signing.ts";

/** No key, or a key that matches no configured hash. */
export class AuthenticationError extends UltralongError {
  constructor(message: string) {
    super("invalid_api_key", message);
  }
}

/** A valid key without the right to this route. */
export class PermissionError extends UltralongError {
  constructor(message: string) {
    super("permission_denied", message);
  }
}

/** Requests per minute or queue depth exceeded; the client may retry after `retryAfterS`. */
export class RateLimitError extends UltralongError {
  constructor(
    message: string,
    readonly retryAfterS: number,
  ) {
    super("rate_limit_exceeded", message);
  }
}

/** The body is larger than this deployment accepts. */
export class PayloadTooLargeError extends UltralongError {
  constructor(message: string) {
    super("payload_too_large", message);
  }
}

/** The body is not in the content type the route accepts. */
export class UnsupportedMediaTypeError extends UltralongError {
  constructor(message: string) {
    super("unsupported_media_type", message);
  }
}

/**
 * The request body stopped before its end (the client closed or reset the connection mid-body, or
 * sent fewer bytes than its Content-Length): the client's fault, so a 400, never a server error.
 */
export class IncompleteBodyError extends UltralongError {
  constructor(
    message = "the request body ended before it was complete (the connection closed mid-body)",
    options?: { cause?: unknown },
  ) {
    super("incomplete_body", message, options);
  }
}

/** Bad input naming the field (`param`) as OpenAI does; `code` is OpenAI's, free text. */
export class ParamError extends UltralongError {
  constructor(
    readonly param: string | null,
    message: string,
    code = "invalid_value",
  ) {
    super(code, message);
  }
}

/** A named object that does not exist, e.g. the model id, a file id or a route. */
export class NotFoundHttpError extends UltralongError {
  constructor(
    message: string,
    code = "not_found",
    readonly param: string | null = null,
  ) {
    super(code, message);
  }
}

/** The model function failed in a way the edge's client did not cause. */
export class UpstreamError extends UltralongError {
  constructor(message: string) {
    super("upstream_error", message);
  }
}

// biome-ignore lint/suspicious/noExplicitAny: any constructor signature; only identity matters
type ErrorClass = abstract new (...args: any[]) => UltralongError;

// Error class -> [status, OpenAI error type]. An error takes the entry of its own class or else of
// its nearest listed ancestor (UnreadableError is a FormatError); an UltralongError with no listed
// ancestor, and any other thrown value, is a 500.
const BY_CLASS = new Map<ErrorClass, readonly [number, string]>([
  [InvalidInputError, [400, "invalid_request_error"]],
  [ParamError, [400, "invalid_request_error"]],
  [IncompleteBodyError, [400, "invalid_request_error"]],
  // Context length and other request limits; rates and queues are RateLimitError.
  [LimitError, [400, "invalid_request_error"]],
  [AuthenticationError, [401, "authentication_error"]],
  [SignatureError, [401, "authentication_error"]],
  [PermissionError, [403, "permission_error"]],
  [NotFoundHttpError, [404, "not_found_error"]],
  [NotFoundError, [404, "not_found_error"]],
  [PayloadTooLargeError, [413, "invalid_request_error"]],
  [UnsupportedMediaTypeError, [415, "invalid_request_error"]],
  [RateLimitError, [429, "rate_limit_error"]],
  // nginx's "client closed request": only ever logged, the client is gone.
  [CancelledError, [499, "invalid_request_error"]],
  // Model directory, tokenizer or snapshot files: the server's own data, not the request.
  [FormatError, [500, "server_error"]],
  [UpstreamError, [502, "server_error"]],
  [NotAvailableError, [503, "server_error"]],
  [StoreError, [503, "server_error"]],
  [BusyError, [503, "server_error"]],
]);

function entryOf(err: UltralongError): readonly [number, string] {
  for (let c = err.constructor; c && c !== UltralongError; c = Object.getPrototypeOf(c)) {
    const hit = BY_CLASS.get(c as ErrorClass);
    if (hit) return hit;
  }
  return [500, "server_error"];
}

/** The status errors of this class answer with. */
export function statusOf(cls: ErrorClass): number {
  return BY_CLASS.get(cls)?.[0] ?? 500;
}

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string };
}

/** Body and status for any thrown value; unknown errors are 500 with a generic message. */
export function describeError(err: unknown): {
  status: number;
  body: OpenAIErrorBody;
  retryAfterS?: number;
} {
  if (err instanceof UltralongError) {
    const [status, type] = entryOf(err);
    const param = (err as { param?: string | null }).param ?? null;
    const body = { error: { message: err.message, type, param, code: err.code } };
    return err instanceof RateLimitError || err instanceof BusyError
      ? { status, body, retryAfterS: err.retryAfterS }
      : { status, body };
  }
  return {
    status: 500,
    body: {
      error: {
        message: "internal server error",
        type: "server_error",
        param: null,
        code: "internal_error",
      },
    },
  };
}

export function errorResponse(err: unknown): Response {
  const { status, body, retryAfterS } = describeError(err);
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (retryAfterS !== undefined)
    headers["retry-after"] = String(Math.max(1, Math.ceil(retryAfterS)));
  return new Response(JSON.stringify(body), { status, headers });
}

// What the model function's statuses mean to the edge's client. Those a client causes or may retry
// are rebuilt as the edge's own error of the class with that status; every other one (401/403: the
// edge's signature, 404/413/415: the edge's request, 5xx) is the edge's failure, a 502.
// A 503 that says when to retry (the model function short of memory or pool room for now) stays a
// BusyError, with its retry-after; one that does not is NotAvailableError.
const RELAYED: Array<[ErrorClass, (e: ErrorEvent, retryAfterS?: number) => UltralongError]> = [
  [ParamError, (e) => new ParamError(null, e.message, e.code)],
  [RateLimitError, (e, s) => new RateLimitError(e.message, s ?? 1)],
  [CancelledError, (e) => new CancelledError(e.message)],
  [
    NotAvailableError,
    (e, s) =>
      s === undefined
        ? new NotAvailableError(`model function: ${e.message}`)
        : new BusyError(`model function: ${e.message}`, s),
  ],
];

/**
 * The edge's error for one the model function reported: an HTTP answer other than 200 (its status
 * and OpenAI body) or an `error` event (with the status it would have answered); `retryAfterS`:
 * its retry-after header or the event's, if it had one.
 */
export function relayedError(e: ErrorEvent, retryAfterS?: number): UltralongError {
  for (const [cls, make] of RELAYED) if (statusOf(cls) === e.status) return make(e, retryAfterS);
  return new UpstreamError(`model function: ${e.message}`);
}
