// Loading a model directory's tokenizer fast on Node: core's loadTokenizer uses the compiled
// vocabulary beside tokenizer.json when its source hash matches (about 0.1 s instead of seconds of
// JSON parsing). When there is none, we write it after the first load so the next start is fast; a
// read-only model directory just means no cache.
import { readdir, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { ModelFiles } from "../../core/io/byte-source.ts";
import type { Tokenizer } from "../../core/tokenizer/index.ts";
import { COMPILED_TOKENIZER_FILE, loadTokenizer } from "../../core/tokenizer/load.ts";

export async function loadDirTokenizer(dir: string, files: ModelFiles): Promise<Tokenizer> {
  const had = (await readdir(dir)).includes(COMPILED_TOKENIZER_FILE);
  const tokenizer = await loadTokenizer(files);
  // A stale compiled file is ignored by loadTokenizer (and then costs a JSON parse per start);
  // only a missing one is written here, never one that someone else made.
  if (!had) {
    const tmp = join(dir, `${COMPILED_TOKENIZER_FILE}.${process.pid}.tmp`);
    await writeFile(tmp, tokenizer.compile())
      .then(() => rename(tmp, join(dir, COMPILED_TOKENIZER_FILE)))
      .catch(() => {});
  }
  return tokenizer;
}
