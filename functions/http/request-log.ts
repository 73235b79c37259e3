// One structured JSON line per request (never prompt or output text): request id, tenant, token
// counts, timings, status, and a level that follows the status. The sink is injectable; the
// default writes to console.log, which every platform (Node, Lambda, Workers) ships to its log
// service.
import type { UsageEvent } from "../../core/protocol/events.ts";

export type LogSink = (line: Record<string, unknown>) => void;

export const consoleSink: LogSink = (line) => console.log(JSON.stringify(line));

/** Fields allowed in a log line: numbers, ids and names only, so text cannot leak by accident. */
export interface RequestLogLine {
  app: "edge" | "model";
  requestId: string;
  route: string;
  status: number;
  tenant?: string;
  promptTokens?: number;
  completionTokens?: number;
  cachedTokens?: number;
  finishReason?: string;
  errorCode?: string;
  queueMs?: number;
  prefillMs?: number;
  decodeMs?: number;
  totalMs: number;
}

/** The log fields of a generation's usage (both apps log the same ones). */
export function usageLogFields(u: UsageEvent): Partial<RequestLogLine> {
  return {
    promptTokens: u.promptTokens,
    completionTokens: u.completionTokens,
    cachedTokens: u.cachedTokens,
    finishReason: u.finishReason,
    prefillMs: u.prefillMs,
    decodeMs: u.decodeMs,
  };
}

/** error: the server failed (5xx); warn: the request was refused or cut off (4xx, 499 included). */
function levelOf(status: number): "info" | "warn" | "error" {
  return status >= 500 ? "error" : status >= 400 ? "warn" : "info";
}

export function logRequest(
  sink: LogSink,
  line: RequestLogLine,
  clock: () => number = Date.now,
): void {
  sink({
    t: new Date(clock()).toISOString(),
    level: levelOf(line.status),
    ...line,
  });
}
