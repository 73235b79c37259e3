// `npm run bench -- replay [--n 200]`: what the replay ledger adds to a request's latency.
//
// Prints one JSON object. For each ledger, RequestVerifier.verify() of n freshly signed requests,
// one at a time (p50/p99 ms): "memory" (one process, the old behaviour), "directory" (link(2) in a
// DirectoryStore), "s3rver" (a conditional PutObject to s3rver in a child process, as a deployed
// model function pays against S3). The peer is one plain PutObject of the same ~80-byte body to the
// same s3rver in the same run: the ledger's claim IS one such request, so addedMs is what a request
// pays over the memory ledger and ratio is that against the bare round trip.
import { parseArgs } from "node:util";
import { PutObjectCommand } from "@aws-sdk/client-s3";
import { S3Store } from "../../core/kv/s3-store.ts";
import { DirectoryStore } from "../../core/node/snapshot-dir.ts";
import {
  MemoryNonceLedger,
  type NonceLedger,
  StoreNonceLedger,
} from "../../core/protocol/nonce-ledger.ts";
import { importSigningKey, RequestVerifier, signRequest } from "../../core/protocol/signing.ts";
import { startS3Process, storeOptions } from "../harness/s3.ts";
import { scratchDir } from "../support/models.ts";

const SECRET = "bench-replay-secret-0123456789abcdef";

function percentiles(ms: number[]) {
  const s = [...ms].sort((a, b) => a - b);
  const at = (q: number) =>
    Math.round(s[Math.min(s.length - 1, Math.floor(q * s.length))] * 1000) / 1000;
  return { p50: at(0.5), p99: at(0.99) };
}

async function timeVerify(ledger: NonceLedger, n: number) {
  const key = await importSigningKey(SECRET);
  const v = new RequestVerifier(key, { ledger, notBefore: 0 });
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const { headers } = await signRequest(key, "POST", "/v1/generate");
    const h = new Headers({ ...headers });
    const t = performance.now();
    await v.verify("POST", "/v1/generate", h);
    ms.push(performance.now() - t);
  }
  return percentiles(ms);
}

export default async function bench(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { n: { type: "string", default: "200" } } });
  const n = Number(values.n);
  const s3 = await startS3Process();
  try {
    const store = new S3Store({ ...storeOptions(s3), prefix: "bench-replay" });
    const body = new Uint8Array(80);
    const raw: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      await store.client.send(
        new PutObjectCommand({ Bucket: s3.bucket, Key: `bench-raw/${i}`, Body: body }),
      );
      raw.push(performance.now() - t);
    }
    const memory = await timeVerify(new MemoryNonceLedger(), n);
    const directory = await timeVerify(
      new StoreNonceLedger(new DirectoryStore(scratchDir("bench"))),
      n,
    );
    const s3rver = await timeVerify(new StoreNonceLedger(store), n);
    const peer = percentiles(raw);
    const added = Math.round((s3rver.p50 - memory.p50) * 1000) / 1000;
    console.log(
      JSON.stringify(
        {
          n,
          verifyMs: { memory, directory, s3rver },
          peer: { rawPutObjectMs: peer },
          addedMsP50: {
            directory: Math.round((directory.p50 - memory.p50) * 1000) / 1000,
            s3rver: added,
          },
          ratioS3ClaimToRawPut: Math.round((added / peer.p50) * 1000) / 1000,
        },
        null,
        2,
      ),
    );
  } finally {
    await s3.close();
  }
}
