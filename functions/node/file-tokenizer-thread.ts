// The worker thread's side of worker-file-tokenizer.ts, in core/node/worker-pool.ts's protocol:
//   init(vocabulary bytes)                   the compiled tokenizer (core/tokenizer compile())
//   open(handle) / push(handle, bytes) -> ids / end(handle) -> {ids, summary} / abort(handle)
// Ids are transferred, not copied. Errors carry their code (invalid_utf8) back to the caller.
import { parentPort } from "node:worker_threads";
import { Tokenizer } from "../../core/tokenizer/index.ts";
import { FileEncoding } from "../edge/file-encoding.ts";

let tokenizer: Tokenizer | null = null;
const open = new Map<number, FileEncoding>();

function encoding(handle: number): FileEncoding {
  const e = open.get(handle);
  if (!e) throw new Error(`file tokenizer: no open file ${handle}`);
  return e;
}

const methods: Record<string, (...args: never[]) => unknown> = {
  init(bytes: Uint8Array) {
    // The bytes were verified when the main thread loaded them.
    tokenizer = Tokenizer.fromCompiled(bytes, { verify: false });
  },
  open(handle: number) {
    if (!tokenizer) throw new Error("file tokenizer: init first");
    open.set(handle, new FileEncoding(tokenizer.createEncoder()));
  },
  push(handle: number, bytes: Uint8Array) {
    return encoding(handle).push(bytes);
  },
  end(handle: number) {
    try {
      return encoding(handle).end();
    } finally {
      open.delete(handle);
    }
  },
  abort(handle: number) {
    open.delete(handle);
  },
};

parentPort!.on("message", (msg: { id: number; method: string; args: never[] }) => {
  try {
    const result = methods[msg.method](...msg.args);
    const ids =
      result instanceof Int32Array ? result : (result as { ids?: Int32Array } | undefined)?.ids;
    parentPort!.postMessage(
      { id: msg.id, ok: true, result },
      ids ? [ids.buffer as ArrayBuffer] : [],
    );
  } catch (err) {
    const e = err as { message?: string; code?: string; stack?: string };
    parentPort!.postMessage({
      id: msg.id,
      ok: false,
      error: { message: String(e.message ?? err), code: e.code, stack: e.stack },
    });
  }
});
