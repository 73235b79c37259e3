// One uploaded file's bytes -> UTF-8 text -> token ids, incrementally, with what a chat part needs to
// reuse the ids later (file-splice.ts). Synchronous and platform-free: the Node worker
// (functions/node/file-tokenizer-thread.ts) and the in-thread path (file-tokenizer.ts) both
// run it. Memory: the decoder's unfinished character, the encoder's unfinished pre-token, the
// leading/trailing whitespace (at most MAX_EDGE_CHARS each) and one number pair per push.
import { ParamError } from "../http/http-errors.ts";
import type { StreamingEncoder } from "./text.ts";
import { joinParts } from "./typed-parts.ts";

/** Leading or trailing whitespace longer than this makes a file be used as text (file-splice.ts). */
export const MAX_EDGE_CHARS = 65_536;

/** How a chat part splices a file's stored ids (file-splice.ts explains why these suffice). */
export interface FileEdges {
  /** Leading whitespace (JavaScript's \s, what a template's `trim` removes). */
  lead: string;
  /** Trailing whitespace. */
  trail: string;
  /**
   * Index into the ids of a pre-token boundary that was final before the trailing whitespace
   * began (the encoder had seen only text before it), so no text after the file can move it.
   */
  tailFrom: number;
  /** UTF-16 code units of the whole text. */
  chars: number;
}

export interface FileSummary {
  tokens: number;
  /** UTF-16 code units of the text. */
  chars: number;
  /** null: the file is all whitespace, or its edges are longer than MAX_EDGE_CHARS. */
  edges: FileEdges | null;
}

/** JavaScript's \s (WhiteSpace and LineTerminator): what String.prototype.trim removes. */
function isJsSpace(c: number): boolean {
  return (
    (c >= 9 && c <= 13) ||
    c === 0x20 ||
    c === 0xa0 ||
    c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 ||
    c === 0x2029 ||
    c === 0x202f ||
    c === 0x205f ||
    c === 0x3000 ||
    c === 0xfeff
  );
}

export class FileEncoding {
  readonly #encoder: StreamingEncoder;
  readonly #decoder = new TextDecoder("utf-8", { fatal: true });
  #chars = 0;
  #tokens = 0;
  #lead = "";
  #leadDone = false;
  #trail = "";
  #trailChars = 0;
  /** Checkpoints not yet known to precede the trailing whitespace: (ids so far, chars pushed). */
  #pending: [number, number][] = [];
  #tailFrom = -1;

  constructor(encoder: StreamingEncoder) {
    this.#encoder = encoder;
  }

  /** The ids that are final after these bytes (ParamError invalid_utf8 on bad UTF-8). */
  push(bytes: Uint8Array): Int32Array {
    let s: string;
    try {
      s = this.#decoder.decode(bytes, { stream: true });
    } catch {
      throw new ParamError("file", "the file is not valid UTF-8", "invalid_utf8");
    }
    return this.#text(s);
  }

  end(): { ids: Int32Array; summary: FileSummary } {
    let s: string;
    try {
      s = this.#decoder.decode();
    } catch {
      throw new ParamError("file", "the file is not valid UTF-8", "invalid_utf8");
    }
    const a = this.#text(s);
    const b = Int32Array.from(this.#encoder.end());
    this.#tokens += b.length;
    const ids = joinParts([a, b], (n) => new Int32Array(n));
    const edges =
      this.#leadDone &&
      this.#tailFrom >= 0 &&
      this.#lead.length <= MAX_EDGE_CHARS &&
      this.#trailChars <= MAX_EDGE_CHARS
        ? { lead: this.#lead, trail: this.#trail, tailFrom: this.#tailFrom, chars: this.#chars }
        : null;
    return { ids, summary: { tokens: this.#tokens, chars: this.#chars, edges } };
  }

  #text(s: string): Int32Array {
    if (s.length === 0) return new Int32Array(0);
    if (!this.#leadDone) {
      let i = 0;
      while (i < s.length && isJsSpace(s.charCodeAt(i))) i++;
      if (this.#lead.length <= MAX_EDGE_CHARS) this.#lead += s.slice(0, i);
      this.#leadDone = i < s.length;
    }
    let j = s.length;
    while (j > 0 && isJsSpace(s.charCodeAt(j - 1))) j--;
    if (j === 0) {
      this.#trailChars += s.length;
      if (this.#trailChars <= MAX_EDGE_CHARS) this.#trail += s;
    } else {
      this.#trailChars = s.length - j;
      this.#trail = s.slice(j);
    }
    this.#chars += s.length;
    const ids = Int32Array.from(this.#encoder.push(s));
    this.#tokens += ids.length;
    // Where the text before the trailing whitespace ends; it only grows as text arrives.
    const coreEnd = this.#chars - this.#trailChars;
    this.#pending.push([this.#tokens, this.#chars]);
    while (this.#pending.length > 0 && this.#pending[0][1] <= coreEnd)
      this.#tailFrom = this.#pending.shift()![0];
    return ids;
  }
}
