// Where an uploaded file is tokenized, off the request path's CPU: a port with two implementations.
// On Node, a worker thread (functions/node/worker-file-tokenizer.ts). Here, for Workers and
// Lambda (no worker threads there; Lambda serves one request per instance anyway): the same
// FileEncoding on this thread, in slices with a return to the event loop between them, so a
// /healthz that arrives meanwhile waits for one slice (about 1 ms at 15 MB/s), not the file.
import { FileEncoding, type FileSummary } from "./file-encoding.ts";
import type { EdgeText } from "./text.ts";
import { joinParts } from "./typed-parts.ts";

/** One file being tokenized: bytes in order, ids out (each call's ids follow the last call's). */
export interface FileTokenizing {
  push(bytes: Uint8Array): Promise<Int32Array>;
  end(): Promise<{ ids: Int32Array; summary: FileSummary }>;
  /** Drop the file (an upload that failed). */
  abort(): void;
}

export interface FileTokenizer {
  open(): FileTokenizing;
  close(): Promise<void>;
}

/** Bytes encoded between two returns to the event loop. */
const SLICE_BYTES = 16 << 10;

const yieldToLoop: () => Promise<void> =
  typeof (globalThis as { setImmediate?: unknown }).setImmediate === "function"
    ? () => new Promise((resolve) => setImmediate(resolve))
    : () => new Promise((resolve) => setTimeout(resolve, 0));

export function inThreadFileTokenizer(text: EdgeText): FileTokenizer {
  return {
    open() {
      const encoding = new FileEncoding(text.createEncoder());
      return {
        async push(bytes) {
          const parts: Int32Array[] = [];
          for (let at = 0; at < bytes.length; at += SLICE_BYTES) {
            parts.push(encoding.push(bytes.subarray(at, at + SLICE_BYTES)));
            await yieldToLoop();
          }
          return joinParts(parts, (n) => new Int32Array(n));
        },
        async end() {
          return encoding.end();
        },
        abort() {},
      };
    },
    async close() {},
  };
}
