// The one place where typed errors become HTTP responses (STYLE.md habit 6). Both Hono apps install
// `onError(errorResponse)`. Bodies use OpenAI's error shape so OpenAI SDKs surface the message:
//   { "error": { "message", "type", "param", "code" } }
import { UltralongError } from "../../core/errors.ts";

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

/** Bad input naming the field (`param`) as OpenAI does. */
export class ParamError extends UltralongError {
  constructor(
    readonly param: string | null,
    message: string,
    code = "invalid_value",
  ) {
    super(code, message);
  }
}

/** A named object that does not exist, e.g. the model id or a file id. */
export class NotFoundHttpError extends UltralongError {
  constructor(
    message: string,
    code = "not_found",
    readonly param: string | null = null,
  ) {
    super(code, message);
  }
}

// code -> [status, OpenAI error type]. Codes not listed are server errors (500).
const STATUS: Record<string, [number, string]> = {
  invalid_input: [400, "invalid_request_error"],
  invalid_value: [400, "invalid_request_error"],
  invalid_json: [400, "invalid_request_error"],
  invalid_type: [400, "invalid_request_error"],
  missing_field: [400, "invalid_request_error"],
  invalid_utf8: [400, "invalid_request_error"],
  context_length_exceeded: [400, "invalid_request_error"],
  limit_exceeded: [400, "invalid_request_error"],
  invalid_format: [400, "invalid_request_error"],
  invalid_api_key: [401, "authentication_error"],
  bad_signature: [401, "authentication_error"],
  permission_denied: [403, "permission_error"],
  not_found: [404, "not_found_error"],
  model_not_found: [404, "not_found_error"],
  file_not_found: [404, "not_found_error"],
  route_not_found: [404, "not_found_error"],
  method_not_allowed: [405, "invalid_request_error"],
  payload_too_large: [413, "invalid_request_error"],
  unsupported_media_type: [415, "invalid_request_error"],
  rate_limit_exceeded: [429, "rate_limit_error"],
  cancelled: [499, "invalid_request_error"],
  not_available: [503, "server_error"],
  upstream_error: [502, "server_error"],
};

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
    const [status, type] = STATUS[err.code] ?? [500, "server_error"];
    const param = (err as { param?: string | null }).param ?? null;
    const body = { error: { message: err.message, type, param, code: err.code } };
    return err instanceof RateLimitError
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
