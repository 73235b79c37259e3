// Two kinds of failure (STYLE.md habit 6): assertions for broken invariants, and the typed errors
// below for what a user or the world can cause. Each carries a stable `code` for machines to read;
// the HTTP layer maps each class (never a code) to a status in one table
// (functions/http/http-errors.ts), and the CLI prints `message` on one line.

export class UltralongError extends Error {
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The caller sent something we refuse: bad JSON, wrong types, out-of-range values. */
export class InvalidInputError extends UltralongError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("invalid_input", message, options);
  }
}

/** A model directory, safetensors file, tokenizer file or snapshot object is malformed. */
export class FormatError extends UltralongError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("invalid_format", message, options);
  }
}

/** A capability is not present on this machine (no GPU, addon not built, tool missing). */
export class NotAvailableError extends UltralongError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("not_available", message, options);
  }
}

/** A named object (model, file, snapshot) does not exist. */
export class NotFoundError extends UltralongError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("not_found", message, options);
  }
}

/** A limit was hit: context length, queue depth, request size, rate. */
export class LimitError extends UltralongError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("limit_exceeded", message, options);
  }
}

/**
 * The server is short of a resource for now (host memory for preempted sequences' KV, pool room to
 * restore one): not the request's fault, and the same request may succeed later (HTTP 503 with
 * retry-after).
 */
export class BusyError extends UltralongError {
  constructor(
    message: string,
    readonly retryAfterS = 1,
  ) {
    super("server_busy", message);
  }
}

/** The work was cancelled (client went away, AbortSignal fired). */
export class CancelledError extends UltralongError {
  constructor(message = "cancelled", options?: { cause?: unknown }) {
    super("cancelled", message, options);
  }
}

/** Assertion for invariants: a failure here is a bug in this repository, never user input. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}
