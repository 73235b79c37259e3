// Worker entry for uploaded-file tokenization (worker-file-tokenizer.ts) when the sources run as
// TypeScript (tests, a CLI whose build is stale and cannot be rebuilt): plain JS, as
// core/node/worker-pool.ts requires, that registers tsx's loader and runs the TypeScript side. The
// built CLI starts file-tokenizer-thread.ts's bundle instead (functions/cli/build.mjs WORKERS).
import { register } from "tsx/esm/api";

register();
await import("./file-tokenizer-thread.ts");
