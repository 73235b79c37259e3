// Node: uploaded files are tokenized in one worker thread (file-tokenizer-thread.ts), so the event
// loop keeps answering while a 50 MB file is encoded. One worker serves every upload of this
// process (uploads interleave chunk by chunk); it holds its own copy of the vocabulary (about
// 15 MB), so it starts at the first upload: a server that never gets one never pays for it.
import { PoolWorker, WorkerCallError } from "../../core/node/worker-pool.ts";
import type { Tokenizer } from "../../core/tokenizer/index.ts";
import type { FileSummary } from "../edge/file-encoding.ts";
import type { FileTokenizer } from "../edge/file-tokenizer.ts";
import { ParamError } from "../http/http-errors.ts";

/** A worker's typed error (bad UTF-8) becomes the same ParamError the in-thread path throws. */
function rethrow(err: unknown): never {
  if (err instanceof WorkerCallError && err.code === "invalid_utf8")
    throw new ParamError("file", err.message, "invalid_utf8");
  throw err;
}

export function workerFileTokenizer(tokenizer: Tokenizer): FileTokenizer {
  let started: Promise<PoolWorker> | null = null;
  const worker = () => {
    started ??= (async () => {
      const w = new PoolWorker(
        new URL("./file-tokenizer-worker.mjs", import.meta.url),
        "file-tokenizer",
      );
      // Copied, not transferred: the main thread's tokenizer may alias these bytes.
      await w.call("init", [tokenizer.compile()]);
      return w;
    })();
    return started;
  };
  let next = 1;
  return {
    open() {
      const handle = next++;
      const opened = worker().then(async (w) => {
        await w.call("open", [handle]);
        return w;
      });
      return {
        push: (bytes) =>
          opened.then((w) => w.call<Int32Array>("push", [handle, bytes])).catch(rethrow),
        end: () =>
          opened
            .then((w) => w.call<{ ids: Int32Array; summary: FileSummary }>("end", [handle]))
            .catch(rethrow),
        abort: () => {
          void opened.then((w) => w.call("abort", [handle])).catch(() => {});
        },
      };
    },
    async close() {
      if (started) await (await started.catch(() => null))?.terminate();
    },
  };
}
