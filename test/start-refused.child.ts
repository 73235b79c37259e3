// Child process for test/serve-errors.test.ts: startLocal on a port the parent holds, with runtime
// worker threads. It prints the refusal and returns; the process exits only if the refused start
// closed everything it had opened (workers, the model function's socket).
//   node --import tsx test/start-refused.child.ts MODEL_DIR PORT
import { startLocal } from "../functions/entries/local.ts";

const [modelDir, port] = process.argv.slice(2);
try {
  await startLocal({ modelDir, runtime: "wasm", threads: 2, store: null, port: Number(port) });
  console.log("started");
} catch (err) {
  console.log(`refused: ${(err as Error).message}`);
}
