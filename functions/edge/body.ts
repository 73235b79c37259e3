// Reading request bodies with a byte limit enforced while reading (a missing or lying
// Content-Length cannot make us buffer more), strict UTF-8, and JSON errors that name the problem.
// A body that breaks off mid-stream is the client's IncompleteBodyError (400), never a short body
// read as whole (functions/http/request-body.ts).
import {
  ParamError,
  PayloadTooLargeError,
  UnsupportedMediaTypeError,
} from "../http/http-errors.ts";
import { completeBody } from "../http/request-body.ts";

export function mediaType(req: Request): string {
  return (req.headers.get("content-type") ?? "").split(";")[0].trim().toLowerCase();
}

export function requireMediaType(req: Request, ...allowed: string[]): void {
  const type = mediaType(req);
  if (!allowed.includes(type)) {
    throw new UnsupportedMediaTypeError(
      `Content-Type must be ${allowed.join(" or ")}${type ? `, got ${type}` : " (none was sent)"}`,
    );
  }
}

/** Yields the body's chunks, failing with 413 once more than `limit` bytes have arrived. */
export async function* limitedChunks(req: Request, limit: number): AsyncGenerator<Uint8Array> {
  const declared = Number(req.headers.get("content-length") ?? "NaN");
  if (declared > limit)
    throw new PayloadTooLargeError(`request body is ${declared} bytes; the limit is ${limit}`);
  const body = completeBody(req);
  if (!body) return;
  const reader = body.getReader();
  let total = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      total += value.length;
      if (total > limit)
        throw new PayloadTooLargeError(`request body is over the ${limit}-byte limit`);
      yield value;
    }
  } finally {
    await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

export async function readBytes(req: Request, limit: number): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let total = 0;
  for await (const p of limitedChunks(req, limit)) {
    parts.push(p);
    total += p.length;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function decodeUtf8(bytes: Uint8Array, what = "request body"): string {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes);
  } catch {
    throw new ParamError(null, `${what} is not valid UTF-8`, "invalid_utf8");
  }
}

export async function readJson(req: Request, limit: number): Promise<Record<string, unknown>> {
  requireMediaType(req, "application/json");
  const text = decodeUtf8(await readBytes(req, limit));
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ParamError(
      null,
      `request body is not valid JSON: ${(err as Error).message}`,
      "invalid_json",
    );
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    throw new ParamError(null, "request body must be a JSON object", "invalid_type");
  }
  return value as Record<string, unknown>;
}

/** JSON text may hold lone surrogates (\ud800), which are not text; refuse them by name. */
export function checkWellFormed(s: string, param: string): string {
  // String.prototype.isWellFormed is Node 20+ and workerd; fall back to a regex elsewhere.
  const ok =
    typeof (s as { isWellFormed?: () => boolean }).isWellFormed === "function"
      ? (s as unknown as { isWellFormed: () => boolean }).isWellFormed()
      : !/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
  if (!ok)
    throw new ParamError(
      param,
      `${param} contains a lone UTF-16 surrogate (invalid Unicode)`,
      "invalid_utf8",
    );
  return s;
}
