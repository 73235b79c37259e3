// Snapshots written by the served function are encrypted when a key is configured, and a deployed
// model function (`serve --role model`) with a store and no key refuses to start unless plaintext
// is chosen on purpose.
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { masterKeyId } from "../core/crypto/tenant-key.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import { decodeSnapshot, parseSnapshotHeader, UnreadableError } from "../core/kv/format.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { type LocalServer, startLocal } from "../functions/entries/local.ts";
import { snapshotKeys } from "../functions/node/snapshot-keys.ts";
import { runUltralong, scratchDir, testModelDir } from "./support/models.ts";

const KEY_HEX = "5a".repeat(32);

describe("the served path encrypts snapshots", () => {
  let server: LocalServer | null = null;
  afterAll(() => server?.close());

  it("after a served request, no KV is on disk in the clear", async () => {
    const dir = scratchDir("served-store");
    const keys = await snapshotKeys({ ULTRALONG_SNAPSHOT_KEY: KEY_HEX });
    server = await startLocal({
      modelDir: await testModelDir(),
      runtime: "reference",
      store: dir,
      snapshotKeys: keys,
      snapshotChunkTokens: 32,
      maxPositions: 256,
      log: () => {},
    });
    const prompt = Array.from({ length: 70 }, (_, i) => (i * 37 + 11) % 500);
    const r = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${server.demoKey}`,
        "content-type": "application/json",
      },
      body: JSON.stringify({ model: server.modelId, prompt, max_tokens: 2, temperature: 0 }),
    });
    expect(r.status).toBe(200);
    await server.close();
    server = null;
    // The KV those tokens make, in the clear, from an independent runtime.
    const rt = await createReferenceRuntime({
      model: await loadModelDir(await testModelDir()),
      maxPositions: 256,
    });
    await rt.prefill(Int32Array.from(prompt));
    const clear = Buffer.from(await rt.exportKv(0, 32));
    await rt.close();
    const objects = (await readdir(join(dir, "kv"), { recursive: true, withFileTypes: true }))
      .filter((e) => e.isFile())
      .map((e) => join(e.parentPath, e.name));
    expect(objects.length).toBe(2); // two whole 32-token chunks of the 70-token prompt
    const id = await masterKeyId(keys[0]);
    for (const f of objects) {
      const bytes = await readFile(f);
      const header = await parseSnapshotHeader(bytes);
      expect(header.encrypted).toBe(true);
      expect([...(header.keyId ?? [])]).toEqual([...id]);
      await expect(decodeSnapshot(bytes)).rejects.toBeInstanceOf(UnreadableError);
      for (const at of [0, 4096, clear.length - 64]) {
        expect(bytes.indexOf(clear.subarray(at, at + 64)), `${f} @${at}`).toBe(-1);
      }
    }
  });
});

describe("serve --role model and the snapshot key", () => {
  const env: NodeJS.ProcessEnv = { ...process.env, ULTRALONG_SIGNING_SECRET: "x".repeat(64) };
  delete env.ULTRALONG_SNAPSHOT_KEY;

  it("refuses to store plaintext snapshots unless told to, in one line", async () => {
    const args = [
      "serve",
      "--role",
      "model",
      "--model",
      await testModelDir(),
      "--port",
      "0",
    ].concat(["--store", scratchDir("plain"), "--runtime", "reference"]);
    const r = await runUltralong(args, env);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split("\n")).toEqual([
      expect.stringMatching(/snapshots would be stored unencrypted: set ULTRALONG_SNAPSHOT_KEY/),
    ]);
    const bad = await runUltralong(args, { ...env, ULTRALONG_SNAPSHOT_KEY: "too-short" });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/ULTRALONG_SNAPSHOT_KEY: key 1: snapshot master key must be/);
  });

  it("reads keys from ULTRALONG_SNAPSHOT_KEY_FILE, first seals, and refuses both at once", async () => {
    const file = join(scratchDir("keyfile"), "keys");
    await writeFile(file, `${"11".repeat(32)}\n${"22".repeat(32)}\n`);
    const keys = await snapshotKeys({ ULTRALONG_SNAPSHOT_KEY_FILE: file });
    expect(keys.map((k) => k[0])).toEqual([0x11, 0x22]);
    expect(
      (await snapshotKeys({ ULTRALONG_SNAPSHOT_KEY: `${"11".repeat(32)},${"33".repeat(32)}` }))
        .length,
    ).toBe(2);
    await expect(
      snapshotKeys({ ULTRALONG_SNAPSHOT_KEY: "11".repeat(32), ULTRALONG_SNAPSHOT_KEY_FILE: file }),
    ).rejects.toThrow(/not both/);
    expect(await snapshotKeys({})).toEqual([]);
  });
});
