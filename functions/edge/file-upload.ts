// POST /v1/files: the multipart body streamed into the file store while the file tokenizer turns the
// same bytes into ids, both as they arrive. What one upload holds at a time: a body chunk, one
// text part and one ids part not yet put (PART_BYTES each, files.ts), and the tokenizer's state
// (file-encoding.ts): about 8 MiB plus the longest pre-token of the file, whatever its size.
import { ParamError } from "../http/http-errors.ts";
import type { FileTokenizer } from "./file-tokenizer.ts";
import type { FileStore, StoredFile } from "./files.ts";
import { multipartBoundary, multipartParts } from "./multipart.ts";
import { joinParts } from "./typed-parts.ts";

export interface UploadTarget {
  files: FileStore;
  tokenizer: FileTokenizer;
  tenant: string;
  id: string;
  createdAt: number;
}

/** A short field's value (purpose), refused beyond 1 KiB. */
async function fieldText(body: AsyncIterable<Uint8Array>, name: string): Promise<string> {
  const parts: Uint8Array[] = [];
  let size = 0;
  for await (const p of body) {
    size += p.length;
    if (size > 1024) throw new ParamError(name, `'${name}' is over 1 KiB`, "invalid_value");
    parts.push(p);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(
      joinParts(parts, (n) => new Uint8Array(n)),
    );
  } catch {
    throw new ParamError(name, `'${name}' is not valid UTF-8`, "invalid_utf8");
  }
}

/** Stores and tokenizes the multipart body's file; on any failure removes what it wrote. */
export async function receiveUpload(
  req: Request,
  chunks: AsyncIterable<Uint8Array>,
  t: UploadTarget,
): Promise<StoredFile> {
  const boundary = multipartBoundary(req.headers.get("content-type") ?? "");
  let purpose = "user_data";
  let file: Omit<StoredFile, "purpose"> | null = null;
  const writer = t.files.create(t.tenant, t.id);
  const encoding = t.tokenizer.open();
  try {
    for await (const part of multipartParts(chunks, boundary)) {
      if (part.name === "purpose") purpose = await fieldText(part.body, "purpose");
      else if (part.name === "file" && part.filename !== null && file === null) {
        let bytes = 0;
        for await (const chunk of part.body) {
          bytes += chunk.length;
          // Store and tokenize the same chunk at once; each waits on its own I/O or thread.
          await Promise.all([
            writer.text(chunk),
            encoding.push(chunk).then((ids) => writer.ids(ids)),
          ]);
        }
        const { ids, summary } = await encoding.end();
        await writer.ids(ids);
        file = {
          id: t.id,
          tenant: t.tenant,
          filename: part.filename || "upload.txt",
          bytes,
          createdAt: t.createdAt,
          tokens: summary.tokens,
          edges: summary.edges,
        };
      }
    }
    if (!file) throw new ParamError("file", "'file' is required (a file field)", "missing_field");
    return await writer.commit({ ...file, purpose });
  } catch (err) {
    encoding.abort();
    await writer.abort();
    throw err;
  }
}
