// A prefilling process killed with SIGKILL resumes, on the next call, from the last complete chunk
// in the store, and generates exactly what an uninterrupted run generates.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { describe, expect, it } from "vitest";
import type { DriverEvent } from "../core/engine/driver.ts";
import { createSnapshotCache } from "../core/kv/snapshot-cache.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { DirectoryStore } from "../core/node/snapshot-dir.ts";
import { SMALL_VOCAB, scratchDir, testModelDir } from "./support/models.ts";

const CHUNK = 16;
const N = 200; // 12 whole chunks + 8 tokens

/** Runs the child; kills it with SIGKILL after `killAfter` progress events (null: run to the end). */
async function runChild(
  modelDir: string,
  store: string,
  killAfter: number | null,
): Promise<DriverEvent[]> {
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "test/snapshot-resume.child.ts", modelDir, store, String(N), String(CHUNK)],
    { stdio: ["pipe", "pipe", "inherit"] },
  );
  const exited = new Promise<NodeJS.Signals | number | null>((resolve) =>
    child.on("exit", (code, signal) => resolve(signal ?? code)),
  );
  const events: DriverEvent[] = [];
  let progress = 0;
  for await (const line of createInterface({ input: child.stdout! })) {
    const ev = JSON.parse(line) as DriverEvent;
    events.push(ev);
    if (ev.type !== "progress") continue;
    progress++;
    if (killAfter !== null && progress > killAfter) {
      child.kill("SIGKILL");
      break;
    }
    child.stdin!.write("go\n");
  }
  const how = await exited;
  expect(how).toBe(killAfter === null ? 0 : "SIGKILL");
  return events;
}

const tokensOf = (events: DriverEvent[]) =>
  events.flatMap((e) => (e.type === "token" ? [e.id] : []));

describe("prefill killed with SIGKILL", () => {
  it("resumes from the last complete chunk and matches an uninterrupted run", async () => {
    const modelDir = await testModelDir(SMALL_VOCAB);
    const plain = await runChild(modelDir, scratchDir("snap-plain"), null);
    const dir = scratchDir("snap-kill");
    // Progress events: one at the start, then one per chunk. Kill after the 7th chunk's event.
    const killed = await runChild(modelDir, dir, 7);
    expect(killed.some((e) => e.type === "done")).toBe(false);

    // What survived: the longest run of chunk objects from chunk 0 (uploads may have been in flight).
    const store = new DirectoryStore(dir);
    const cache = createSnapshotCache({
      store,
      modelFingerprint: await (await loadModelDir(modelDir)).fingerprint(),
      kvLayout: { layers: 2, kvHeads: 2, headDim: 16, dtype: "f32" },
      tenantSalt: "resume-tenant",
      chunkTokens: CHUNK,
    });
    const prompt = Int32Array.from({ length: N }, (_, i) => (i * 37 + 11) % 500);
    let complete = 0;
    for (const key of await cache.chainKeys(prompt, Math.floor(N / CHUNK))) {
      if ((await store.head(await cache.objectKey(key))) === null) break;
      complete++;
    }
    // 7 chunks were computed and handed to save; at most maxPendingUploads (2) can be lost.
    expect(complete).toBeGreaterThanOrEqual(5);
    expect(complete).toBeLessThanOrEqual(7);

    const resumed = await runChild(modelDir, dir, null);
    const first = resumed.find((e) => e.type === "progress");
    const done = resumed.find((e) => e.type === "done");
    expect(first?.type === "progress" && first.cachedTokens).toBe(complete * CHUNK);
    expect(done?.type === "done" && done.usage.cachedTokens).toBe(complete * CHUNK);
    expect(tokensOf(resumed)).toEqual(tokensOf(plain));
    expect(tokensOf(plain).length).toBe(5);
  });
});
