// multipart/form-data (RFC 7578) read as a stream: each part's body is yielded as it arrives, so a
// 50 MB upload is never held whole (Request.formData() buffers the body, then the file, then its
// text). Web streams only, for every platform. Parts must be read in order; a part whose body is
// not read is skipped.
import { ParamError } from "../http/http-errors.ts";

export interface MultipartPart {
  /** Content-Disposition's name. */
  name: string;
  /** Content-Disposition's filename; null for a plain field. */
  filename: string | null;
  body: AsyncGenerator<Uint8Array>;
}

/** A part's headers longer than this are refused (browsers and SDKs send about 150 bytes). */
const MAX_HEADER_BYTES = 16 << 10;

const CRLF = new Uint8Array([13, 10]);
const HEADER_END = new Uint8Array([13, 10, 13, 10]);

function malformed(why: string): ParamError {
  return new ParamError(
    null,
    `request body is not valid multipart/form-data: ${why}`,
    "invalid_format",
  );
}

/** The boundary parameter of a multipart/form-data Content-Type. */
export function multipartBoundary(contentType: string): string {
  const m = /;\s*boundary=(?:"([^"]{1,70})"|([^\s;]{1,70}))/i.exec(contentType);
  if (!m) throw malformed("no boundary in Content-Type");
  return m[1] ?? m[2];
}

function indexOf(hay: Uint8Array, needle: Uint8Array, from: number): number {
  const first = needle[0];
  for (let i = hay.indexOf(first, from); i >= 0 && i + needle.length <= hay.length; ) {
    let k = 1;
    while (k < needle.length && hay[i + k] === needle[k]) k++;
    if (k === needle.length) return i;
    i = hay.indexOf(first, i + 1);
  }
  return -1;
}

/** Bytes from an async source, with look-ahead. */
class Buffered {
  buf = new Uint8Array(0);
  #done = false;
  constructor(readonly source: AsyncIterator<Uint8Array>) {}

  /** Reads one more chunk; false at the end of the source. */
  async more(): Promise<boolean> {
    if (this.#done) return false;
    const r = await this.source.next();
    if (r.done) {
      this.#done = true;
      return false;
    }
    const next = new Uint8Array(this.buf.length + r.value.length);
    next.set(this.buf);
    next.set(r.value, this.buf.length);
    this.buf = next;
    return true;
  }

  /** Index of `needle`, reading until it is found (or `limit` bytes are buffered); -1 if not. */
  async find(needle: Uint8Array, limit = Number.POSITIVE_INFINITY): Promise<number> {
    for (let from = 0; ; ) {
      const i = indexOf(this.buf, needle, from);
      if (i >= 0) return i;
      from = Math.max(0, this.buf.length - needle.length + 1);
      if (this.buf.length > limit || !(await this.more())) return -1;
    }
  }

  take(n: number): Uint8Array {
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
}

function disposition(headers: string): { name: string; filename: string | null } {
  for (const line of headers.split("\r\n")) {
    const colon = line.indexOf(":");
    if (line.slice(0, colon).trim().toLowerCase() !== "content-disposition") continue;
    const value = line.slice(colon + 1);
    const param = (key: string) => {
      const m = new RegExp(`;\\s*${key}="((?:[^"\\\\]|\\\\.)*)"|;\\s*${key}=([^;\\s]+)`, "i").exec(
        value,
      );
      return m ? (m[1]?.replace(/\\(.)/g, "$1") ?? m[2]) : null;
    };
    const name = param("name");
    if (name === null) throw malformed("a part's Content-Disposition has no name");
    return { name, filename: param("filename") };
  }
  throw malformed("a part has no Content-Disposition");
}

export async function* multipartParts(
  chunks: AsyncIterable<Uint8Array>,
  boundary: string,
): AsyncGenerator<MultipartPart> {
  const input = new Buffered(chunks[Symbol.asyncIterator]());
  const delimiter = new TextEncoder().encode(`\r\n--${boundary}`);
  // The preamble (usually empty) ends at the first boundary line; pretend a CRLF precedes it.
  input.buf = CRLF;
  const first = await input.find(delimiter);
  if (first < 0) throw malformed("no boundary line");
  input.take(first + delimiter.length);
  for (;;) {
    while (input.buf.length < 2) if (!(await input.more())) throw malformed("truncated");
    if (input.buf[0] === 45 && input.buf[1] === 45) return; // "--": the closing boundary
    const eol = await input.find(CRLF, 1024);
    if (eol < 0) throw malformed("a boundary line does not end");
    input.take(eol + 2);
    while (input.buf.length < 2) if (!(await input.more())) throw malformed("truncated");
    if (input.buf[0] === 13 && input.buf[1] === 10)
      throw malformed("a part has no Content-Disposition");
    const end = await input.find(HEADER_END, MAX_HEADER_BYTES);
    if (end < 0)
      throw malformed(
        input.buf.length > MAX_HEADER_BYTES ? "part headers too long" : "truncated part headers",
      );
    const { name, filename } = disposition(new TextDecoder().decode(input.take(end)));
    input.take(4);
    let finished = false;
    // Chunks are views of the input's buffers, which are never written again.
    const body = (async function* () {
      for (;;) {
        const i = indexOf(input.buf, delimiter, 0);
        if (i >= 0) {
          if (i > 0) yield input.take(i);
          input.take(delimiter.length);
          finished = true;
          return;
        }
        // Everything but a possible start of the delimiter is this part's.
        const keep = Math.min(input.buf.length, delimiter.length - 1);
        if (input.buf.length > keep) yield input.take(input.buf.length - keep);
        if (!(await input.more())) throw malformed("truncated");
      }
    })();
    yield { name, filename, body };
    // A body nobody read is skipped; one abandoned half-way leaves nothing parseable.
    if (!finished) for await (const _ of body);
    if (!finished) return;
  }
}
