// Child process for test/snapshot-resume.test.ts: prefills a prompt on the reference runtime with a
// snapshot cache, printing one JSON line per driver event and, after each progress event, waiting
// for a line on stdin before going on, so the parent can SIGKILL it at an exact chunk.
//   node --import tsx test/snapshot-resume.child.ts MODEL_DIR STORE PROMPT_TOKENS CHUNK
import { createInterface } from "node:readline";
import { SequenceDriver } from "../core/engine/driver.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import { createSnapshotCache } from "../core/kv/snapshot-cache.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { openStore } from "../core/node/snapshot-dir.ts";

const [modelDir, storeSpec, n, chunk] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const model = await loadModelDir(modelDir);
const rt = await createReferenceRuntime({ model, maxPositions: 1024 });
const cache = createSnapshotCache({
  store: openStore(storeSpec),
  modelFingerprint: await model.fingerprint(),
  kvLayout: rt.info.kv,
  tenantSalt: "resume-tenant",
  chunkTokens: Number(chunk),
  logger: { debug() {}, warn() {} },
});
const prompt = Int32Array.from({ length: Number(n) }, (_, i) => (i * 37 + 11) % 500);
const driver = new SequenceDriver(rt, { eosTokenIds: [] });
for await (const ev of driver.generate({
  prompt,
  maxTokens: 5,
  ignoreEos: true,
  sampling: { temperature: 0 },
  prefixCache: cache,
})) {
  process.stdout.write(`${JSON.stringify(ev)}\n`);
  if (ev.type === "progress") await lines.next();
}
await cache.flush();
process.exit(0);
