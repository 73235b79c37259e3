// What the edge's sub-apps (routes/*.ts, the files service) share: the Hono environment the
// middleware in app.ts fills (tenant, request id, the log line), and the edge's settings and
// services, built once per app. Prompt assembly lives here too because two sub-apps need it:
// generation (routes/generate.ts) and tokenize (routes/tokenize.ts) must count the same ids.
import type { Context } from "hono";
import { isTokenId } from "../../core/tokenizer/token-id.ts";
import { NotFoundHttpError, ParamError } from "../http/http-errors.ts";
import { type Metrics, statusClass } from "../http/metrics.ts";
import { type LogSink, logRequest, type RequestLogLine } from "../http/request-log.ts";
import type { FileService } from "./file-service.ts";
import type { ModelClientOptions } from "./forward.ts";
import type { Tenant } from "./keys.ts";
import type { ChatMessage, CompletionRequest } from "./openai-request.ts";
import type { EdgeText } from "./text.ts";

export type EdgeVars = {
  tenant: Tenant;
  requestId: string;
  /** The request's log line, filled as it runs; `deferred`: a stream logs it when it ends. */
  log: Partial<RequestLogLine> & { deferred?: boolean };
};
export type EdgeEnv = { Variables: EdgeVars };
export type EdgeContext = Context<EdgeEnv>;

export interface EdgeDeps {
  modelId: string;
  maxContext: number;
  text: EdgeText;
  client: ModelClientOptions;
  files: FileService;
  metrics: Metrics;
  sink: LogSink;
  clock: () => number;
  randomId: () => string;
  maxBodyBytes: number;
  maxUploadBytes: number;
  keepAliveMs: number;
}

/** A finished request: the requests counter and its one log line. */
export function recordRequest(deps: EdgeDeps, line: Omit<RequestLogLine, "app">): void {
  deps.metrics.inc("ul_edge_requests_total", {
    route: line.route,
    class: statusClass(line.status),
  });
  logRequest(deps.sink, { app: "edge", ...line }, deps.clock);
}

/** The ids of prompts, the same for generation and tokenize. */
export class Prompts {
  readonly #d: EdgeDeps;

  constructor(deps: EdgeDeps) {
    this.#d = deps;
  }

  /** 404 model_not_found unless `model` is the served one. */
  checkModel(model: string): void {
    if (model !== this.#d.modelId) {
      throw new NotFoundHttpError(
        `The model '${model}' does not exist (this server serves '${this.#d.modelId}')`,
        "model_not_found",
        "model",
      );
    }
  }

  /**
   * A chat through the template. File parts read the files' stored ids (file-service.ts); nothing
   * re-tokenizes a file here. `checkLength` refuses early once the prompt is known to be too long.
   */
  async chat(
    tenant: Tenant,
    messages: ChatMessage[],
    checkLength?: (atLeast: number) => void,
  ): Promise<Int32Array> {
    const chat = await this.#d.files.resolveChat(tenant.id, messages, checkLength);
    return Int32Array.from(await this.#d.text.renderChat(chat.messages, chat.encodeText));
  }

  /** A completion prompt: ids as sent (checked), or text encoded after BOS. */
  completion(req: CompletionRequest): Int32Array {
    const text = this.#d.text;
    if (req.prompt.kind === "ids") {
      this.#checkIds(req.prompt.ids, "prompt");
      return Int32Array.from(req.prompt.ids);
    }
    const ids = text.encode(req.prompt.text);
    const out = new Int32Array(ids.length + (text.bosId === null ? 0 : 1));
    if (text.bosId !== null) out[0] = text.bosId;
    out.set(ids, text.bosId === null ? 0 : 1);
    return out;
  }

  /** Refuses ids a client may not send: out of the vocabulary or reserved control tokens. */
  #checkIds(ids: ArrayLike<number>, param: string): void {
    const text = this.#d.text;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!isTokenId(id, text.vocabSize)) {
        throw new ParamError(
          param,
          `${param}[${i}] = ${id} is outside the vocabulary (0..${text.vocabSize - 1})`,
        );
      }
      if (text.isReservedId(id))
        throw new ParamError(param, `${param}[${i}] = ${id} is a reserved control token`);
    }
  }
}
