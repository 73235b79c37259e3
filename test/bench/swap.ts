// `npm run bench -- swap [--tokens 2048,8192] [--reps 2] [--quick]`
//
// What preempting a sequence costs through the scheduler's swap (core/engine/kv-swap.ts), against
// what it saves: recomputing the same KV. For each length N, on the wasm paged runtime (2 threads,
// issue 15's batching model, f32 KV: 16 KiB a position), one sequence's KV of N positions is
//   saved:    exported from the pool, encoded in the snapshot format, sealed with AES-GCM and
//             written piece by piece (512 positions a piece; the writes run in the background, so
//             `stepWaitMs` is what the step that preempts waits: the export; `saveMs` runs until
//             every write has landed), and
//   restored: read, checked (checksums, GCM tag, range, layout, binding) and imported,
// to each of three places: host memory (serve --no-store), a directory store (DirectoryStore: temp
// file + rename), and s3rver over HTTP (S3Store, started by the bench). After each restore the
// pool's KV is compared with what it held before the save (the pool is zeroed in between), so a
// figure is never one of a wrong swap.
//
// Peers, measured in the same run:
//   recompute: a prefill of the same N tokens on the same runtime, what a scheduler without swap
//              pays to bring a preempted sequence back (vLLM's recompute preemption);
//   raw file:  fs.writeFile + readFile of the same byte count in the same directory (the I/O floor
//              of the directory store).
// The host budget (serve --max-swap-bytes) is the KV's size, so every piece is written in the
// background. Ratios: recompute / (save + restore) (> 1: swapping is cheaper than recomputing), and raw file /
// directory store save + restore. Best of --reps for the swaps, one prefill. `--quick`: the 2-layer
// test model, 64 and 256 positions, one rep (test/bench-swap.test.ts).

import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { KvSwap, type PoolKv } from "../../core/engine/kv-swap.ts";
import { InvalidInputError } from "../../core/errors.ts";
import { kvPayloadBytes } from "../../core/kv/layout.ts";
import { S3Store } from "../../core/kv/s3-store.ts";
import type { SnapshotStore } from "../../core/kv/store.ts";
import { loadModelDir } from "../../core/node/load-model-dir.ts";
import { makeModelDir } from "../../core/node/make-model.ts";
import { DirectoryStore } from "../../core/node/snapshot-dir.ts";
import { ensureBuilt } from "../../wasm/build.mjs";
import { createPagedWasmRuntime } from "../../wasm/src/paged-runtime.ts";
import { startS3Process, storeOptions } from "../harness/s3.ts";
import { ISSUE15_MODEL } from "../support/bench-models.ts";
import { TINY } from "../support/models.ts";

const THREADS = 2;

/** One destination's figures for one length. */
interface Place {
  stepWaitMs: number;
  saveMs: number;
  restoreMs: number;
  saveMiBPerSec: number;
  restoreMiBPerSec: number;
  storedBytes: number | null;
  recomputeOverSwap: number;
}
const MiB = 1 << 20;
const round = (x: number, d = 3) => Number(x.toPrecision(d));
const mibPerSec = (bytes: number, ms: number) => round(bytes / MiB / (ms / 1000));

function settings(args: string[]) {
  let parsed: ReturnType<typeof parse>;
  function parse() {
    return parseArgs({
      args,
      options: {
        tokens: { type: "string" },
        reps: { type: "string" },
        quick: { type: "boolean" },
      },
      strict: true,
    });
  }
  try {
    parsed = parse();
  } catch (err) {
    throw new InvalidInputError((err as Error).message);
  }
  const v = parsed.values;
  const quick = v.quick === true;
  const tokens = (v.tokens ?? (quick ? "64,256" : "2048,8192")).split(",").map(Number);
  for (const n of tokens) {
    if (!Number.isInteger(n) || n < 1 || n > 131072) {
      throw new InvalidInputError(`--tokens takes lengths in [1, 131072], not ${v.tokens}`);
    }
  }
  const reps = Number(v.reps ?? (quick ? 1 : 2));
  if (!Number.isInteger(reps) || reps < 1 || reps > 20) {
    throw new InvalidInputError(`--reps takes a count in [1, 20], not ${v.reps}`);
  }
  return { quick, tokens, reps };
}

export default async function main(args: string[]): Promise<void> {
  const s = settings(args);
  await ensureBuilt({ root: join(import.meta.dirname, "..", "..") });
  const dir = await mkdtemp(join(tmpdir(), "ultralong-bench-swap-"));
  const s3 = await startS3Process();
  try {
    const shape = s.quick ? TINY : { ...ISSUE15_MODEL, seed: 15 };
    await makeModelDir(join(dir, "model"), { ...shape, dtype: "f32" });
    const model = await loadModelDir(join(dir, "model"));
    const fingerprint = await model.fingerprint();
    const maxN = Math.max(...s.tokens);
    const rt = await createPagedWasmRuntime({
      model,
      threads: THREADS,
      maxPositions: maxN,
      poolPositions: maxN,
    });
    const stores: Record<string, SnapshotStore | undefined> = {
      hostMemory: undefined,
      directory: new DirectoryStore(join(dir, "store")),
      s3rver: new S3Store({ ...storeOptions(s3), prefix: "bench/" }),
    };
    const results = [];
    try {
      const B = rt.info.blockTokens;
      const layout = rt.info.kv;
      const vocab = model.config.vocabSize;
      // Warm-up: every kernel past V8's baseline tier before the first prefill is timed.
      const w = Math.min(256, maxN);
      await rt.step([
        {
          tokens: Int32Array.from({ length: w }, (_, i) => (i * 31 + 7) % vocab),
          start: 0,
          table: Int32Array.from({ length: Math.ceil(w / B) }, (_, i) => i),
          logits: false,
        },
      ]);
      for (const n of s.tokens) {
        const table = Int32Array.from({ length: Math.ceil(n / B) }, (_, i) => i);
        const tokens = Int32Array.from({ length: n }, (_, i) => (i * 7919 + 13) % vocab);
        const t0 = performance.now();
        await rt.step([{ tokens, start: 0, table, logits: false }]);
        const recomputeMs = performance.now() - t0;
        const kv: PoolKv = {
          export: (a, b) => rt.exportKv(table, a, b),
          import: (a, b, bytes) => rt.importKv(table, a, bytes, b - a, layout.dtype),
        };
        const before = await kv.export(0, n);
        const zeros = new Uint8Array(before.length);
        const bytes = kvPayloadBytes(layout, n);
        const places: Record<string, Place> = {};
        for (const [place, store] of Object.entries(stores)) {
          const swap = new KvSwap(layout, B, {
            store,
            modelFingerprint: fingerprint,
            maxHostBytes: bytes,
          });
          let stepWaitMs = Number.POSITIVE_INFINITY;
          let saveMs = Number.POSITIVE_INFINITY;
          let restoreMs = Number.POSITIVE_INFINITY;
          let storedBytes: number | null = null; // bytes of objects in the store (none in memory)
          for (let r = 0; r < s.reps; r++) {
            const written = swap.stats().storeBytesWritten;
            const a = performance.now();
            const saved = await swap.save("bench", r, 0, n, kv);
            const returned = performance.now();
            await swap.settled(); // every write landed
            const b = performance.now();
            if (store) storedBytes = swap.stats().storeBytesWritten - written;
            await kv.import(0, n, zeros); // the restore must bring the KV back, not find it there
            const c = performance.now();
            await swap.restore(saved, n, kv);
            const d = performance.now();
            const after = await kv.export(0, n);
            if (Buffer.compare(Buffer.from(after), Buffer.from(before)) !== 0) {
              throw new Error(`${place}: the restored KV of ${n} positions differs from the saved`);
            }
            stepWaitMs = Math.min(stepWaitMs, returned - a);
            saveMs = Math.min(saveMs, b - a);
            restoreMs = Math.min(restoreMs, d - c);
          }
          await swap.settled();
          places[place] = {
            stepWaitMs: round(stepWaitMs),
            saveMs: round(saveMs),
            restoreMs: round(restoreMs),
            saveMiBPerSec: mibPerSec(bytes, saveMs),
            restoreMiBPerSec: mibPerSec(bytes, restoreMs),
            storedBytes,
            recomputeOverSwap: round(recomputeMs / (saveMs + restoreMs)),
          };
        }
        // The I/O floor of the directory store: the same bytes written and read back as one file.
        let rawMs = Number.POSITIVE_INFINITY;
        for (let r = 0; r < s.reps; r++) {
          const a = performance.now();
          await writeFile(join(dir, "raw"), before);
          await readFile(join(dir, "raw"));
          rawMs = Math.min(rawMs, performance.now() - a);
        }
        await rm(join(dir, "raw"));
        const { hostMemory, directory, s3rver } = places;
        results.push({
          positions: n,
          kvBytes: bytes,
          ours: places,
          peers: {
            recompute: { prefillMs: round(recomputeMs) },
            rawFile: { writeReadMs: round(rawMs) },
          },
          ratios: {
            recomputeOverHostMemorySwap: hostMemory.recomputeOverSwap,
            recomputeOverDirectorySwap: directory.recomputeOverSwap,
            recomputeOverS3Swap: s3rver.recomputeOverSwap,
            rawFileOverDirectorySwap: round(rawMs / (directory.saveMs + directory.restoreMs)),
          },
        });
        console.error(`swap: ${n} positions done`);
      }
    } finally {
      await rt.close();
    }
    console.log(
      JSON.stringify(
        {
          bench: "swap",
          model: { ...shape, dtype: "f32" },
          runtime: rt.info.name,
          threads: THREADS,
          kvDtype: rt.info.kv.dtype,
          blockTokens: rt.info.blockTokens,
          results,
        },
        null,
        2,
      ),
    );
  } finally {
    await s3.close();
    await rm(dir, { recursive: true, force: true });
  }
}
