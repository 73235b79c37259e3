// Loading a model directory's tokenizer fast on Node: parsing tokenizer.json takes seconds, the
// compiled vocabulary (core/tokenizer) about 0.1 s. The compiled form is cached beside the model
// (like the fingerprint cache) and used only when its recorded source SHA-256 equals the current
// tokenizer.json's, so an edited tokenizer.json is never served stale. A read-only directory just
// means no cache.
//
// TODO(tokenizer owner): replace with core's loadTokenizer(files) once it lands with its own cache.
import { createHash } from "node:crypto";
import { readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Tokenizer } from "../../core/tokenizer/index.ts";

const CACHE = ".ultralong-tokenizer.bin";

export async function loadDirTokenizer(dir: string): Promise<Tokenizer> {
  const json = await readFile(join(dir, "tokenizer.json"));
  const config = await readFile(join(dir, "tokenizer_config.json"), "utf8").catch(() => undefined);
  const sha = createHash("sha256").update(json).digest("hex");
  const cached = await readFile(join(dir, CACHE)).catch(() => null);
  if (cached) {
    try {
      const t = Tokenizer.fromCompiled(new Uint8Array(cached));
      if (
        t.sourceSha256 === sha &&
        (config === undefined || t.chatTemplate !== undefined || !config.includes("chat_template"))
      )
        return t;
    } catch {
      // a corrupt cache is rebuilt below
    }
  }
  const t = Tokenizer.fromJson(json.toString("utf8"), config);
  const tmp = join(dir, `${CACHE}.${process.pid}`);
  await writeFile(tmp, t.compile())
    .then(() => rename(tmp, join(dir, CACHE)))
    .catch(() => {});
  return t;
}
