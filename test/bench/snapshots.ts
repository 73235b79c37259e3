// `npm run bench -- snapshots [--mib 32] [--reps 3] [--tokens 1024,2048,4096,8192] [--runtime auto]`
//
// Prints one JSON object:
//   s3:     snapshot save (encode + SHA-256 + S3Store.put, multipart) and restore (S3Store.get with
//           parallel ranged GETs + verify) against one raw PutObject / GetObject of the same bytes
//           to the same s3rver, in the same run; ratio = our throughput / raw throughput.
//   local:  DirectoryStore put (temp file + rename; and with fsync) and get against
//           fs.writeFile/readFile.
//   restoreVsRecompute: per prompt length, prefill time on the runtime against restoring the same
//           KV from a directory store into a fresh runtime (chunks of 512 tokens).

import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { sha256 as subtleSha256 } from "../../core/hash/sha256.ts";
import { decodeSnapshot, encodeSnapshot, snapshotObjectBytes } from "../../core/kv/format.ts";
import type { KvLayout } from "../../core/kv/layout.ts";
import { S3Store } from "../../core/kv/s3-store.ts";
import { createSnapshotCache } from "../../core/kv/snapshot-cache.ts";
import { nodeSha256 } from "../../core/node/hasher.ts";
import { DirectoryStore } from "../../core/node/snapshot-dir.ts";
import { runtimes } from "../../functions/runtimes.ts";
import { startS3Process, storeOptions } from "../harness/s3.ts";
import { loadTestModel, SMALL_VOCAB } from "../support/models.ts";

const MiB = 1 << 20;

async function best(reps: number, fn: () => Promise<void>): Promise<number> {
  let min = Number.POSITIVE_INFINITY;
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    await fn();
    min = Math.min(min, performance.now() - t);
  }
  return min;
}

const mbps = (bytes: number, ms: number) => Math.round((bytes / MiB / (ms / 1000)) * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

/** Our save/restore against the raw peer's, for `bytes` moved each way: MB/s and ratios. */
function compare(
  bytes: number,
  raw: { save: number; restore: number },
  ours: { save: number; restore: number },
) {
  return {
    rawSaveMBps: mbps(bytes, raw.save),
    rawRestoreMBps: mbps(bytes, raw.restore),
    saveMBps: mbps(bytes, ours.save),
    restoreMBps: mbps(bytes, ours.restore),
    saveRatio: r3(raw.save / ours.save),
    restoreRatio: r3(raw.restore / ours.restore),
  };
}

export default async function bench(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      mib: { type: "string", default: "32" },
      reps: { type: "string", default: "3" },
      tokens: { type: "string", default: "1024,2048,4096,8192" },
      runtime: { type: "string", default: "auto" },
    },
  });
  const reps = Number(values.reps);
  // A snapshot chunk with Llama-3.1-8B's per-token KV size (bf16: 128 KiB / token).
  const layout: KvLayout = { layers: 32, kvHeads: 8, headDim: 128, dtype: "bf16" };
  const tokens = Math.max(1, Math.round((Number(values.mib) * MiB) / (128 * 1024)));
  const payload = new Uint8Array(tokens * 128 * 1024);
  for (let i = 0; i < payload.length; i += 65536)
    crypto.getRandomValues(payload.subarray(i, i + 65536));
  const meta = {
    modelFingerprint: "ab".repeat(32),
    layout,
    tokenStart: 0,
    tokenEnd: tokens,
    chainKey: new Uint8Array(32).fill(1),
    previousKey: null,
  };
  // Object buffers reused across saves, as the snapshot cache reuses them.
  const scratch = [0, 1, 2].map(() => new Uint8Array(snapshotObjectBytes(payload.length, false)));
  const result: Record<string, unknown> = {
    payloadBytes: payload.length,
  };

  // --- S3 (s3rver on loopback) ---
  const s3 = await startS3Process();
  try {
    const { bucket: _, ...clientOptions } = storeOptions(s3);
    const raw = new S3Client({
      ...clientOptions,
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
    });
    const store = new S3Store(storeOptions(s3));
    const object = await encodeSnapshot(meta, payload, { sha256: nodeSha256 });
    const rawPut = await best(reps, async () => {
      await raw.send(new PutObjectCommand({ Bucket: s3.bucket, Key: "raw", Body: object }));
    });
    const rawGet = await best(reps, async () => {
      const out = await raw.send(new GetObjectCommand({ Bucket: s3.bucket, Key: "raw" }));
      await out.Body!.transformToByteArray();
    });
    const s3Figures = (sha: typeof nodeSha256) => ({
      save: () =>
        best(reps, async () => {
          await store.put(
            "kv/x",
            await encodeSnapshot(meta, payload, { sha256: sha, into: scratch[0] }),
          );
        }),
      restore: () =>
        best(reps, async () => {
          await decodeSnapshot(await store.get("kv/x"), { sha256: sha });
        }),
    });
    const single = new S3Store({
      ...storeOptions(s3),
      multipartThresholdBytes: Number.MAX_SAFE_INTEGER,
    });
    const saveSingle = await best(reps, async () => {
      await single.put(
        "kv/y",
        await encodeSnapshot(meta, payload, { sha256: nodeSha256, into: scratch[0] }),
      );
    });
    single.client.destroy();
    const node = s3Figures(nodeSha256);
    const saveNode = await node.save();
    const restoreNode = await node.restore();
    const subtle = s3Figures(subtleSha256);
    const saveSubtle = await subtle.save();
    const restoreSubtle = await subtle.restore();
    const n = object.length;
    result.s3 = {
      ...compare(n, { save: rawPut, restore: rawGet }, { save: saveNode, restore: restoreNode }),
      singlePutSaveMBps: mbps(n, saveSingle),
      singlePutSaveRatio: r3(rawPut / saveSingle),
      withSubtleSha256: compare(
        n,
        { save: rawPut, restore: rawGet },
        { save: saveSubtle, restore: restoreSubtle },
      ),
    };
    // Pipelined, as the cache runs: K chunks, 2 uploads in flight while the next chunk encodes;
    // restore with 3 chunks fetched ahead while the current one verifies. The peer gets the same
    // concurrency with raw PUT/GET of the already-encoded bytes.
    const K = 4;
    const pool = async (count: number, width: number, job: (i: number) => Promise<void>) => {
      let next = 0;
      await Promise.all(
        Array.from({ length: width }, async () => {
          while (next < count) await job(next++);
        }),
      );
    };
    const rawPipePut = await best(reps, () =>
      pool(K, 2, async (i) => {
        await raw.send(new PutObjectCommand({ Bucket: s3.bucket, Key: `raw${i}`, Body: object }));
      }),
    );
    const rawPipeGet = await best(reps, () =>
      pool(K, 3, async (i) => {
        const out = await raw.send(new GetObjectCommand({ Bucket: s3.bucket, Key: `raw${i}` }));
        await out.Body!.transformToByteArray();
      }),
    );
    const pipeSave = await best(reps, async () => {
      const pending = new Set<Promise<void>>();
      for (let i = 0; i < K; i++) {
        while (pending.size >= 2) await Promise.race(pending);
        const obj = await encodeSnapshot(meta, payload, {
          sha256: nodeSha256,
          into: scratch[i % 3],
        });
        const p: Promise<void> = store.put(`kv/p${i}`, obj).finally(() => pending.delete(p));
        pending.add(p);
      }
      await Promise.all(pending);
    });
    const pipeRestore = await best(reps, async () => {
      const got: Promise<Uint8Array>[] = [];
      for (let i = 0; i < K; i++) {
        for (let j = i; j < Math.min(K, i + 3); j++) got[j] ??= store.get(`kv/p${j}`);
        await decodeSnapshot(await got[i], { sha256: nodeSha256 });
      }
    });
    (result.s3 as Record<string, unknown>).pipelined = {
      chunks: K,
      ...compare(
        K * n,
        { save: rawPipePut, restore: rawPipeGet },
        { save: pipeSave, restore: pipeRestore },
      ),
    };
    raw.destroy();
    store.client.destroy();
  } finally {
    await s3.close();
  }

  // --- local directory ---
  const dir = await mkdtemp(join(tmpdir(), "ultralong-bench-"));
  try {
    const store = new DirectoryStore(join(dir, "store"));
    const object = await encodeSnapshot(meta, payload, { sha256: nodeSha256 });
    const rawWrite = await best(reps, () => writeFile(join(dir, "raw"), object));
    const rawRead = await best(reps, async () => {
      await readFile(join(dir, "raw"));
    });
    const put = await best(reps, async () => {
      await store.put(
        "kv/x",
        await encodeSnapshot(meta, payload, { sha256: nodeSha256, into: scratch[0] }),
      );
    });
    const durable = new DirectoryStore(join(dir, "durable"), { fsync: true });
    const putFsync = await best(reps, async () => {
      await durable.put(
        "kv/x",
        await encodeSnapshot(meta, payload, { sha256: nodeSha256, into: scratch[0] }),
      );
    });
    const get = await best(reps, async () => {
      await decodeSnapshot(await store.get("kv/x"), { sha256: nodeSha256 });
    });
    const n = object.length;
    result.local = {
      ...compare(n, { save: rawWrite, restore: rawRead }, { save: put, restore: get }),
      fsyncSaveMBps: mbps(n, putFsync),
      fsyncSaveRatio: r3(rawWrite / putFsync),
      note: "save = encode + SHA-256 + temp file + rename; raw = one writeFile / readFile",
    };

    // --- restore vs recompute on a runtime ---
    const model = await loadTestModel(SMALL_VOCAB);
    const factory = await runtimes.pick(values.runtime!);
    const lengths = values.tokens!.split(",").map(Number);
    const maxPositions = Math.max(...lengths) + 1;
    const rows = [];
    for (const len of lengths) {
      const prompt = Int32Array.from({ length: len }, (_, i) => (i * 7 + 3) % 500);
      const rt = await factory.create({ model, maxPositions });
      const chunk = Math.min(512, len);
      const cache = createSnapshotCache({
        store: new DirectoryStore(join(dir, `rr-${len}`)),
        modelFingerprint: await model.fingerprint(),
        kvLayout: rt.info.kv,
        tenantSalt: "bench",
        chunkTokens: chunk,
        sha256: nodeSha256,
      });
      let t = performance.now();
      for (let p = 0; p < len; p += chunk) {
        await rt.prefill(prompt.subarray(p, p + chunk));
      }
      const recomputeMs = performance.now() - t;
      for (let p = 0; p < len; p += chunk) await cache.save(rt, prompt, p, p + chunk);
      await cache.flush();
      rt.truncate(0);
      t = performance.now();
      const { restoredTokens } = await cache.restore(rt, prompt);
      const restoreMs = performance.now() - t;
      await rt.close();
      rows.push({
        tokens: len,
        restoredTokens,
        kvBytes: cache.stats().bytesUploaded,
        recomputeMs: Math.round(recomputeMs),
        restoreMs: Math.round(restoreMs),
        speedup: r3(recomputeMs / restoreMs),
      });
    }
    result.restoreVsRecompute = {
      runtime: factory.name,
      model: "SMALL_VOCAB (2 layers, hidden 64, 2 KV heads x 16, f32 KV)",
      rows,
      restoreWinsFrom: rows.find((r) => r.speedup > 1)?.tokens ?? null,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  console.log(JSON.stringify(result, null, 2));
}
