// The edge's files: the /v1/files routes, and chat messages whose file parts become the files'
// stored ids (file-splice.ts). Tokenization happens once per file, at upload (or, for a file an
// older version stored without usable ids, at its first use), in the FileTokenizer: a worker on
// Node, slices between event-loop turns elsewhere.
import { type Context, type Env, Hono } from "hono";
import { NotFoundHttpError } from "../http/http-errors.ts";
import type { Metrics } from "../http/metrics.ts";
import { limitedChunks, requireMediaType } from "./body.ts";
import { fileMarker, fileSplicer, MARK_OPEN, type SplicedFile } from "./file-splice.ts";
import type { FileTokenizer } from "./file-tokenizer.ts";
import { receiveUpload } from "./file-upload.ts";
import { type FileStore, fileObject, getFileOr404, type StoredFile } from "./files.ts";
import type { ChatMessage } from "./openai-request.ts";
import type { ChatMessageText, EdgeText } from "./text.ts";
import { joinParts } from "./typed-parts.ts";

export interface FileServiceOptions {
  files: FileStore;
  tokenizer: FileTokenizer;
  text: EdgeText;
  metrics: Metrics;
  maxUploadBytes: number;
  clock: () => number;
  randomId: () => string;
}

/**
 * Tokens the two edges of a file part may lose to merging with the text around them: generous,
 * since a merge joins a piece or two at each edge.
 */
const EDGE_MERGE_TOKENS = 1024;

/** Bytes handed to the tokenizer at a time when an older version's file is tokenized on first use. */
const FIRST_USE_SLICE = 64 << 10;

export interface ResolvedChat {
  messages: ChatMessageText[];
  /** Encodes rendered text with the files' ids spliced in (undefined: no file parts). */
  encodeText?: (text: string) => ArrayLike<number>;
}

export class FileService {
  readonly #o: FileServiceOptions;

  constructor(o: FileServiceOptions) {
    this.#o = o;
    o.metrics.counter(
      "ul_edge_file_tokenizations_total",
      "Files tokenized whole: at upload, or at the first use of one stored without ids",
    );
    o.metrics.counter(
      "ul_edge_file_part_chars_encoded_total",
      "Characters of file text encoded for chat file parts (their edges, not the files)",
    );
  }

  /** The file's ids, tokenizing (once, then stored) a file an older version stored without them. */
  async #ids(f: StoredFile): Promise<{ file: StoredFile; ids: Int32Array }> {
    const ids = await this.#o.files.ids(f);
    if (ids) return { file: f, ids };
    const bytes = await this.#o.files.text(f);
    const encoding = this.#o.tokenizer.open();
    const parts: Int32Array[] = [];
    for (let at = 0; at < bytes.length; at += FIRST_USE_SLICE)
      parts.push(await encoding.push(bytes.subarray(at, at + FIRST_USE_SLICE)));
    const end = await encoding.end();
    parts.push(end.ids);
    const all = joinParts(parts, (n) => new Int32Array(n));
    this.#o.metrics.inc("ul_edge_file_tokenizations_total", { when: "first_use" });
    return { file: await this.#o.files.setIds(f, all, end.summary.edges), ids: all };
  }

  /**
   * Messages for the chat template, file parts as markers, and the encoder that replaces them. The
   * parts are joined as the request gave them (no separator).
   */
  async resolveChat(
    tenant: string,
    messages: ChatMessage[],
    /** Refuses a prompt of at least this many tokens (too long) before any file's ids are read. */
    checkLength: (atLeast: number) => void = () => {},
    // Text that carries the marker character (a noncharacter) turns splicing off.
    splicing = !messages.some((m) =>
      m.content.some((p) => p.type === "text" && p.text.includes(MARK_OPEN)),
    ),
  ): Promise<ResolvedChat> {
    const metas = new Map<string, StoredFile>();
    let atLeast = 0;
    for (const [i, m] of messages.entries()) {
      for (const [j, part] of m.content.entries()) {
        if (part.type !== "file") continue;
        const meta = await getFileOr404(
          this.#o.files,
          tenant,
          part.fileId,
          `messages[${i}].content[${j}].file.file_id`,
        );
        metas.set(part.fileId, meta);
        // A part's edges can merge with their neighbours: a bound, not the count.
        atLeast += Math.max(0, meta.tokens - EDGE_MERGE_TOKENS);
      }
    }
    // So a chat naming a file far over the limit costs no read of its ids (an older version's
    // file, whose count may be missing, is checked after rendering like any prompt).
    if (atLeast > 0) checkLength(atLeast);
    const spliced: SplicedFile[] = [];
    const out: ChatMessageText[] = [];
    for (const m of messages) {
      let content = "";
      for (const part of m.content) {
        if (part.type === "text") {
          content += part.text;
          continue;
        }
        const { file, ids } = await this.#ids(metas.get(part.fileId)!);
        if (file.edges && splicing) {
          content += file.edges.lead + fileMarker(spliced.length) + file.edges.trail;
          spliced.push({ ids, edges: file.edges });
        } else {
          // All whitespace, or edges too long to splice: the text itself (decoded from its ids).
          const whole = this.#o.text.decode(ids);
          if (splicing && whole.includes(MARK_OPEN))
            return this.resolveChat(tenant, messages, checkLength, false);
          content += whole;
        }
      }
      out.push({ ...m, content });
    }
    if (spliced.length === 0) return { messages: out };
    const stats = { fileChars: 0 };
    const splice = fileSplicer(this.#o.text, spliced, stats);
    return {
      messages: out,
      encodeText: (run) => {
        const before = stats.fileChars;
        const ids = splice(run);
        this.#o.metrics.inc("ul_edge_file_part_chars_encoded_total", {}, stats.fileChars - before);
        return ids;
      },
    };
  }

  /** POST /v1/files, GET /v1/files[/{id}], DELETE /v1/files/{id}, as a sub-app. */
  routes<E extends Env>(tenantOf: (c: Context<E>) => string): Hono<E> {
    const o = this.#o;
    const app = new Hono<E>();
    app.post("/v1/files", async (c) => {
      requireMediaType(c.req.raw, "multipart/form-data");
      const raw = c.req.raw;
      const file = await receiveUpload(raw, limitedChunks(raw, o.maxUploadBytes), {
        files: o.files,
        tokenizer: o.tokenizer,
        tenant: tenantOf(c),
        id: `file-${o.randomId()}`,
        createdAt: o.clock(),
      });
      o.metrics.inc("ul_edge_file_tokenizations_total", { when: "upload" });
      return c.json(fileObject(file));
    });
    app.get("/v1/files", async (c) =>
      c.json({ object: "list", data: (await o.files.list(tenantOf(c))).map(fileObject) }),
    );
    app.get("/v1/files/:id", async (c) =>
      c.json(fileObject(await getFileOr404(o.files, tenantOf(c), c.req.param("id")))),
    );
    app.delete("/v1/files/:id", async (c) => {
      const id = c.req.param("id");
      if (!(await o.files.delete(tenantOf(c), id)))
        throw new NotFoundHttpError(`No such file: '${id}'`, "file_not_found");
      return c.json({ id, object: "file", deleted: true });
    });
    return app;
  }
}
