// An OpenAI-compatible server as the eval talks to it: /v1/models, /v1/tokenize (vLLM's shape, which
// `ultralong serve` answers too), and streamed /v1/completions or /v1/chat/completions with time to
// first token measured. Busy answers (429, 502, 503, 504) and dropped connections are retried,
// waiting what `retry-after` says (seconds or an HTTP date) or else 1, 2, 4 ... 30 s; any other
// error status is an EvalServerError, which stops the run: a bad key or model would fail every
// trial alike.

import { UltralongError } from "../../core/errors.ts";

/** The server answered with an error that retrying will not cure (or retries ran out). */
export class EvalServerError extends UltralongError {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super("eval_server_error", message);
  }
}

export interface ClientOptions {
  /** Base URL, with or without the trailing /v1. */
  url: string;
  apiKey?: string;
  /** Retries of one request after a busy answer or a dropped connection (default 5). */
  retries?: number;
  fetch?: typeof fetch;
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
  /** Told of each retry (the trial's progress line says it). */
  onRetry?: (why: string, waitMs: number) => void;
}

export interface CompletionRequest {
  model: string;
  /** Token ids (/v1/completions) or text (/v1/chat/completions, one user message). */
  prompt: number[] | string;
  maxTokens: number;
}

export interface CompletionResult {
  text: string;
  promptTokens: number | null;
  cachedTokens: number | null;
  completionTokens: number | null;
  finishReason: string | null;
  /** Milliseconds from sending the request to the first streamed text. */
  ttftMs: number | null;
  totalMs: number;
  retries: number;
}

const BUSY = new Set([429, 502, 503, 504]);

/** `retry-after` as milliseconds (seconds or an HTTP date), or undefined when absent or unreadable. */
export function retryAfterMs(value: string | null, now: number): number | undefined {
  if (value === null) return undefined;
  if (/^\s*\d+(\.\d+)?\s*$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

export class EvalClient {
  readonly v1: string;
  private readonly root: string;
  private readonly fetch: typeof fetch;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly now: () => number;
  private tokenizePath: string | null = null;

  constructor(private readonly o: ClientOptions) {
    const base = o.url.replace(/\/+$/, "");
    this.v1 = base.endsWith("/v1") ? base : `${base}/v1`;
    this.root = this.v1.slice(0, -3);
    this.fetch = o.fetch ?? fetch;
    this.sleep = o.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
    this.now = o.now ?? (() => performance.now());
  }

  private headers(): Record<string, string> {
    const h: Record<string, string> = { "content-type": "application/json" };
    if (this.o.apiKey) h.authorization = `Bearer ${this.o.apiKey}`;
    return h;
  }

  /** One request with retries; resolves to the first non-busy response (its status may be an error). */
  private async send(
    url: string,
    init: RequestInit,
  ): Promise<{ res: Response; retries: number; sentAt: number }> {
    const max = this.o.retries ?? 5;
    for (let attempt = 0; ; attempt++) {
      const sentAt = this.now();
      let res: Response | null = null;
      let why: string;
      try {
        res = await this.fetch(url, { ...init, headers: this.headers() });
        if (!BUSY.has(res.status)) return { res, retries: attempt, sentAt };
        why = `HTTP ${res.status}`;
      } catch (err) {
        why = `connection failed (${(err as Error).message})`;
      }
      if (attempt >= max) {
        const body = res ? await errorText(res) : "";
        throw new EvalServerError(
          res?.status ?? 0,
          `${url}: ${why}${body ? `: ${body}` : ""}, after ${max} retries`,
        );
      }
      const hinted = res ? retryAfterMs(res.headers.get("retry-after"), Date.now()) : undefined;
      await res?.body?.cancel();
      const wait = hinted ?? Math.min(30_000, 1000 * 2 ** attempt);
      this.o.onRetry?.(why, wait);
      await this.sleep(wait);
    }
  }

  private async json(url: string, init: RequestInit): Promise<Record<string, unknown>> {
    const { res } = await this.send(url, init);
    if (!res.ok) {
      throw new EvalServerError(res.status, `${url}: HTTP ${res.status}: ${await errorText(res)}`);
    }
    return (await res.json()) as Record<string, unknown>;
  }

  /** The served models' ids and, where the server says it, the context each takes. */
  async models(): Promise<{ id: string; maxModelLen: number | null }[]> {
    const body = await this.json(`${this.v1}/models`, { method: "GET" });
    const data = (body.data ?? []) as { id: string; max_model_len?: number }[];
    return data.map((m) => ({ id: m.id, maxModelLen: m.max_model_len ?? null }));
  }

  /**
   * Token ids of `text` by the server's tokenizer (/v1/tokenize, else vLLM's /tokenize); with
   * `chat`, of a one-message chat holding `text`, the model's chat template applied.
   */
  async tokenize(
    model: string,
    text: string,
    addSpecialTokens = false,
    chat = false,
  ): Promise<number[]> {
    const body = chat
      ? { model, messages: [{ role: "user", content: text }] }
      : { model, prompt: text, add_special_tokens: addSpecialTokens };
    const init = { method: "POST", body: JSON.stringify(body) };
    const paths = this.tokenizePath
      ? [this.tokenizePath]
      : [`${this.v1}/tokenize`, `${this.root}/tokenize`];
    for (const path of paths) {
      const { res } = await this.send(path, init);
      if (res.status === 404 && path !== paths[paths.length - 1]) {
        await res.body?.cancel();
        continue;
      }
      if (!res.ok) {
        throw new EvalServerError(
          res.status,
          `${path}: HTTP ${res.status}: ${await errorText(res)}`,
        );
      }
      this.tokenizePath = path;
      const body = (await res.json()) as { tokens?: unknown };
      if (!Array.isArray(body.tokens)) {
        throw new EvalServerError(res.status, `${path}: the answer has no "tokens" array`);
      }
      return body.tokens as number[];
    }
    throw new Error("assertion failed: no tokenize path");
  }

  /** A greedy completion, streamed: the text, usage and times. */
  async complete(req: CompletionRequest): Promise<CompletionResult> {
    const chat = typeof req.prompt === "string";
    const url = chat ? `${this.v1}/chat/completions` : `${this.v1}/completions`;
    const body = {
      model: req.model,
      ...(chat ? { messages: [{ role: "user", content: req.prompt }] } : { prompt: req.prompt }),
      max_tokens: req.maxTokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    };
    const { res, retries, sentAt } = await this.send(url, {
      method: "POST",
      body: JSON.stringify(body),
    });
    if (!res.ok) {
      throw new EvalServerError(res.status, `${url}: HTTP ${res.status}: ${await errorText(res)}`);
    }
    const out: CompletionResult = {
      text: "",
      promptTokens: null,
      cachedTokens: null,
      completionTokens: null,
      finishReason: null,
      ttftMs: null,
      totalMs: 0,
      retries,
    };
    for await (const event of sseData(res)) {
      if (event === "[DONE]") break;
      const chunk = JSON.parse(event) as StreamChunk;
      if (chunk.error) {
        throw new EvalServerError(res.status, `${url}: ${chunk.error.message ?? "stream error"}`);
      }
      const choice = chunk.choices?.[0];
      const piece = chat ? choice?.delta?.content : choice?.text;
      if (piece) {
        if (out.ttftMs === null) out.ttftMs = this.now() - sentAt;
        out.text += piece;
      }
      if (choice?.finish_reason) out.finishReason = choice.finish_reason;
      if (chunk.usage) {
        out.promptTokens = chunk.usage.prompt_tokens ?? null;
        out.completionTokens = chunk.usage.completion_tokens ?? null;
        out.cachedTokens = chunk.usage.prompt_tokens_details?.cached_tokens ?? null;
      }
    }
    out.totalMs = this.now() - sentAt;
    return out;
  }
}

interface StreamChunk {
  choices?: { text?: string; delta?: { content?: string }; finish_reason?: string | null }[];
  usage?: {
    prompt_tokens?: number;
    completion_tokens?: number;
    prompt_tokens_details?: { cached_tokens?: number };
  };
  error?: { message?: string };
}

/** The `data:` payloads of a server-sent event stream. */
async function* sseData(res: Response): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const bytes of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(bytes, { stream: true });
    let cut = buf.indexOf("\n\n");
    while (cut >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart())
        .join("\n");
      if (data) yield data;
      cut = buf.indexOf("\n\n");
    }
  }
}

/** The error body's message (OpenAI's `{"error": {"message"}}`), or its first 200 characters. */
async function errorText(res: Response): Promise<string> {
  const text = await res.text().catch(() => "");
  try {
    const msg = (JSON.parse(text) as { error?: { message?: string } }).error?.message;
    if (msg) return msg;
  } catch {}
  return text.slice(0, 200);
}
