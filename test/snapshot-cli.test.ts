// `ultralong snapshots ls|rm|gc` on a directory store and on s3rver, through the CLI's main(); and
// through bin.js, an S3 command says nothing on stderr (no AWS SDK Node-version notice).
import { writeFileSync } from "node:fs";
import { utimes } from "node:fs/promises";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeSnapshot } from "../core/kv/format.ts";
import { kvPayloadBytes } from "../core/kv/layout.ts";
import type { SnapshotStore } from "../core/kv/store.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { openStore } from "../core/node/snapshot-dir.ts";
import { COMPILED_TOKENIZER_FILE, loadTokenizer } from "../core/tokenizer/load.ts";
import { main } from "../functions/cli/main.ts";
import { type S3Server, startS3 } from "./harness/s3.ts";
import { runUltralong, scratchDir, testModelDir } from "./support/models.ts";

async function cli(args: string[], env: Record<string, string> = {}) {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = "";
  let err = "";
  stdout.on("data", (d) => (out += d));
  stderr.on("data", (d) => (err += d));
  const code = await main(args, {
    stdin: new PassThrough(),
    stdout,
    stderr,
    env: { ...process.env, ...env },
  });
  return { code, out, err };
}

const layout = { layers: 1, kvHeads: 1, headDim: 4, dtype: "f32" as const };
const key = (i: number) => new Uint8Array(32).fill(i);
const FP = "aa".repeat(32);
const DIR = "kv/v1/aaaaaaaaaaaaaaaa/0123456789abcdef/";

/** Chunks 1..3 of a chain (chunk 2's predecessor is chunk 1, ...), and chunk 5 whose chunk 4 is absent. */
async function fill(store: SnapshotStore) {
  const payload = new Uint8Array(kvPayloadBytes(layout, 2));
  for (const i of [1, 2, 3, 5]) {
    const obj = await encodeSnapshot(
      {
        modelFingerprint: FP,
        layout,
        tokenStart: (i - 1) * 2,
        tokenEnd: i * 2,
        chainKey: key(i),
        previousKey: i === 1 ? null : key(i - 1),
      },
      payload,
    );
    await store.put(`${DIR}${Buffer.from(key(i)).toString("hex")}`, obj);
  }
  await store.put("quarantine/kv/v1/x", new Uint8Array(3));
}

describe("ultralong snapshots on a directory", () => {
  it("gc removes replay nonces older than --older-than, and nothing else of them", async () => {
    const dir = scratchDir("cli-nonces");
    const store = openStore(dir);
    const [fresh, stale] = ["aa".repeat(16), "bb".repeat(16)];
    for (const n of [fresh, stale])
      expect(await store.create(`nonces/${n}`, new Uint8Array(8))).toBe(true);
    const old = new Date(Date.now() - 2 * 3600e3);
    await utimes(join(dir, "nonces", stale), old, old);
    const gc = await cli(["snapshots", "gc", "--store", dir, "--older-than", "1h"]);
    expect(gc.code).toBe(0);
    expect(gc.out).toMatch(/deleted 1 objects/);
    expect(await store.head(`nonces/${stale}`)).toBeNull();
    expect(await store.head(`nonces/${fresh}`)).not.toBeNull();
  });

  it("lists, garbage-collects by age and orphans, and removes by prefix", async () => {
    const dir = scratchDir("cli");
    const store = openStore(dir);
    await fill(store);
    const ls = await cli(["snapshots", "ls", "--store", dir]);
    expect(ls.code).toBe(0);
    expect(ls.out).toMatch(/5 objects/);

    // Age the quarantined object and chunk 3 by ten days.
    const old = new Date(Date.now() - 10 * 86400e3);
    await utimes(join(dir, "quarantine/kv/v1/x"), old, old);
    await utimes(join(dir, `${DIR}${Buffer.from(key(3)).toString("hex")}`), old, old);
    const dry = await cli(["snapshots", "gc", "--store", dir, "--dry-run"]);
    expect(dry.out).toMatch(/would delete 2 objects/);
    expect((await cli(["snapshots", "ls", "--store", dir])).out).toMatch(/5 objects/);
    const gc = await cli(["snapshots", "gc", "--store", dir, "--older-than", "7d", "--orphans"]);
    expect(gc.code).toBe(0);
    // Old: quarantine/x and chunk 3; orphan: chunk 5 (chunk 4 never existed).
    expect(gc.out).toMatch(/deleted 3 objects/);
    const left = (await cli(["snapshots", "ls", "--store", dir, "--json"])).out.trim().split("\n");
    expect(left.map((l) => JSON.parse(l).key.slice(DIR.length, DIR.length + 2)).sort()).toEqual([
      "01",
      "02",
    ]);

    expect((await cli(["snapshots", "rm", "--store", dir])).code).toBe(1);
    const rm = await cli(["snapshots", "rm", "--store", dir, "--prefix", "kv/"]);
    expect(rm.out).toMatch(/deleted 2 objects/);
    expect((await cli(["snapshots", "ls", "--store", dir])).out).toMatch(/^0 objects/);
    expect((await cli(["snapshots", "gc", "--store", dir, "--older-than", "7x"])).err).toMatch(
      /bad duration/,
    );
  });
});

describe("ultralong generate --store", () => {
  // Cold (nothing stored: every chunk computed, as without --store) and warm runs print the same.
  // The cache suite checks snapshot runs against runs without a cache on the driver directly.
  it("a warm run restores whole chunks from the store and prints what the cold run printed", async () => {
    const model = await testModelDir();
    // Both runs then load the compiled vocabulary instead of parsing tokenizer.json (seconds each).
    const tokenizer = await loadTokenizer((await loadModelDir(model)).files);
    writeFileSync(join(model, COMPILED_TOKENIZER_FILE), tokenizer.compile());
    const dir = scratchDir("gen-store");
    const prompt = "the quick brown fox jumps over the lazy dog ".repeat(12);
    const base = ["generate", "--model", model, "--prompt", prompt, "--max-tokens", "6"];
    const args = [
      ...base,
      "--temperature",
      "0",
      "--chunk",
      "32",
      "--runtime",
      "reference",
      "--progress",
    ];
    const cold = await cli([...args, "--store", dir]);
    const warm = await cli([...args, "--store", dir]);
    expect(cold.code).toBe(0);
    expect(cold.out.length).toBeGreaterThan(1);
    expect(warm.out).toBe(cold.out);
    expect(cold.err).toMatch(/\(0 cached\)/);
    const cached = Number(/\((\d+) cached\)/.exec(warm.err)?.[1]);
    expect(cached).toBeGreaterThanOrEqual(64);
    expect(cached % 32).toBe(0);
    expect((await cli(["snapshots", "ls", "--store", dir])).out).toMatch(
      new RegExp(`^${cached / 32} objects`, "m"),
    );
  });
});

describe("ultralong snapshots on s3rver", () => {
  let s3: S3Server;
  beforeAll(async () => {
    s3 = await startS3();
  });
  afterAll(async () => {
    await s3?.close();
  });

  it("ls, gc and rm work the same on S3", async () => {
    const spec = `s3://${s3.bucket}/cli`;
    const store = openStore(spec, { env: s3.env });
    await fill(store);
    const ls = await cli(["snapshots", "ls", "--store", spec], s3.env);
    expect(ls.out).toMatch(/5 objects/);
    // Nothing is 7 days old; only the orphan goes.
    const gc = await cli(["snapshots", "gc", "--store", spec, "--orphans"], s3.env);
    expect(gc.out).toMatch(/deleted 1 objects/);
    // Endpoint by flag instead of environment.
    const { ULTRALONG_S3_ENDPOINT: endpoint, ...noEndpoint } = s3.env;
    const flagged = await cli(
      ["snapshots", "ls", "--store", spec, "--s3-endpoint", endpoint, "--s3-path-style"],
      {
        ...noEndpoint,
        ULTRALONG_S3_ENDPOINT: "",
      },
    );
    expect(flagged.out).toMatch(/4 objects/);
    const all = await cli(["snapshots", "gc", "--store", spec, "--older-than", "0s"], s3.env);
    expect(all.out).toMatch(/deleted 4 objects/);
    expect((await cli(["snapshots", "ls", "--store", spec], s3.env)).out).toMatch(/^0 objects/);
  });

  it("is quiet through bin.js: the AWS SDK's Node-version notice is switched off", async () => {
    const spec = `s3://${s3.bucket}/quiet`;
    const { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: _, ...env } = process.env;
    const ls = await runUltralong(["snapshots", "ls", "--store", spec], { ...env, ...s3.env });
    expect(ls.stderr).toBe("");
    expect(ls.stdout).toMatch(/^0 objects/);
    // The SDK's own switch set the other way: the notice is there, on the Node versions it names.
    const noisy = await runUltralong(["snapshots", "ls", "--store", spec], {
      ...env,
      ...s3.env,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "false",
    });
    if (Number(process.versions.node.split(".")[0]) < 22)
      expect(noisy.stderr).toMatch(/NodeVersionSupportWarning/);
    else expect(noisy.stderr).toBe("");
  });
});
