// GET /metrics behind its own bearer key (separate from API keys), shared by both apps.
import type { Context } from "hono";
import { timingSafeEqualHex } from "../../core/hash/hex.ts";
import { sha256Hex } from "../../core/hash/sha256.ts";
import { bearerToken } from "./bearer.ts";
import { AuthenticationError, PermissionError } from "./http-errors.ts";
import type { Metrics } from "./metrics.ts";

/**
 * Whether the request carries the metrics key (operator-only routes: /metrics, /readyz details).
 * `metricsKeySha256`: hex SHA-256 of the metrics key; undefined: no request does.
 */
export async function hasMetricsKey(c: Context, metricsKeySha256?: string): Promise<boolean> {
  const token = bearerToken(c.req.header("authorization"));
  if (token === null || !metricsKeySha256) return false;
  return timingSafeEqualHex(await sha256Hex(token), metricsKeySha256);
}

/** `metricsKeySha256`: hex SHA-256 of the metrics key; undefined turns /metrics off (403). */
export async function metricsResponse(
  c: Context,
  metrics: Metrics,
  metricsKeySha256?: string,
): Promise<Response> {
  if (bearerToken(c.req.header("authorization")) === null)
    throw new AuthenticationError("GET /metrics needs Authorization: Bearer <metrics key>");
  if (!metricsKeySha256) throw new PermissionError("metrics are not enabled on this server");
  if (!(await hasMetricsKey(c, metricsKeySha256))) {
    throw new PermissionError("this key may not read metrics");
  }
  return c.text(metrics.render(), 200, {
    "content-type": "text/plain; version=0.0.4; charset=utf-8",
  });
}
