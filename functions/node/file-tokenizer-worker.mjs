// Worker entry for uploaded-file tokenization (worker-file-tokenizer.ts). Plain JS, as
// core/node/worker-pool.ts requires, that registers tsx's loader (as functions/cli/bin.js does) and
// runs the TypeScript side.
import { register } from "tsx/esm/api";

register();
await import("./file-tokenizer-thread.ts");
