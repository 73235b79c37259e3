// One structured JSON line per request (never prompt or output text): request id, tenant, token
// counts, timings, status. The sink is injectable; the default writes to console.log, which every
// platform (Node, Lambda, Workers) ships to its log service.

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

export function logRequest(
  sink: LogSink,
  line: RequestLogLine,
  clock: () => number = Date.now,
): void {
  sink({
    t: new Date(clock()).toISOString(),
    level: line.status >= 500 ? "error" : "info",
    ...line,
  });
}
