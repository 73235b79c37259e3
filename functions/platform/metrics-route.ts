// GET /metrics behind its own bearer key (separate from API keys), shared by both apps.
import type { Context } from "hono";
import { sha256Hex, timingSafeEqualHex } from "../edge/keys.ts";
import { AuthenticationError, PermissionError } from "./http-errors.ts";
import type { Metrics } from "./metrics.ts";

/** `metricsKeySha256`: hex SHA-256 of the metrics key; undefined turns /metrics off (403). */
export async function metricsResponse(
  c: Context,
  metrics: Metrics,
  metricsKeySha256?: string,
): Promise<Response> {
  const auth = c.req.header("authorization") ?? "";
  const match = /^Bearer (.+)$/.exec(auth);
  if (!match)
    throw new AuthenticationError("GET /metrics needs Authorization: Bearer <metrics key>");
  if (!metricsKeySha256) throw new PermissionError("metrics are not enabled on this server");
  if (!timingSafeEqualHex(await sha256Hex(match[1]), metricsKeySha256)) {
    throw new PermissionError("this key may not read metrics");
  }
  return c.text(metrics.render(), 200, {
    "content-type": "text/plain; version=0.0.4; charset=utf-8",
  });
}
