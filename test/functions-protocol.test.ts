// The edge-to-model wire: signatures (stale, replayed, forged refused) and authenticated frames
// (tampered, reordered, truncated refused), over real byte streams split at random boundaries.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NotAvailableError } from "../core/errors.ts";
import { S3Store } from "../core/kv/s3-store.ts";
import type { SnapshotStore } from "../core/kv/store.ts";
import { DirectoryStore } from "../core/node/snapshot-dir.ts";
import { parseSse, sseComment, sseEvent } from "../core/protocol/events.ts";
import {
  FRAME_END,
  FRAME_HEADER,
  FRAME_TOKENS,
  frameStream,
  readFrames,
} from "../core/protocol/frames.ts";
import {
  MemoryNonceLedger,
  NONCE_PREFIX,
  StoreNonceLedger,
} from "../core/protocol/nonce-ledger.ts";
import { importSigningKey, RequestVerifier, signRequest } from "../core/protocol/signing.ts";
import { startS3BehindProxy } from "./harness/fault-proxy.ts";
import { type S3Server, startS3, storeOptions } from "./harness/s3.ts";
import { scratchDir } from "./support/models.ts";

const SECRET = "test-secret-0123456789abcdef";

async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const p of stream as unknown as AsyncIterable<Uint8Array>) parts.push(p);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Re-chunks bytes at pseudo-random boundaries (seeded), as a network would. */
function chunked(bytes: Uint8Array, seed: number): ReadableStream<Uint8Array> {
  let s = seed;
  let at = 0;
  return new ReadableStream({
    pull(c) {
      if (at >= bytes.length) return c.close();
      s = (s * 1103515245 + 12345) >>> 0;
      const n = 1 + (s % 97);
      c.enqueue(bytes.slice(at, at + n));
      at += n;
    },
  });
}

async function readAll(body: ReadableStream<Uint8Array>, key: CryptoKey, sig: Uint8Array) {
  const frames = [];
  for await (const f of readFrames(body, key, sig)) frames.push(f);
  return frames;
}

describe("request signatures", () => {
  it("accepts a fresh signature once and refuses the replay", async () => {
    const key = await importSigningKey(SECRET);
    const v = new RequestVerifier(key);
    const { headers } = await signRequest(key, "POST", "/v1/generate");
    await v.verify("POST", "/v1/generate", new Headers({ ...headers }));
    await expect(v.verify("POST", "/v1/generate", new Headers({ ...headers }))).rejects.toThrow(
      /replayed/,
    );
  });

  it("refuses unsigned, stale, forged and wrong-path requests", async () => {
    const key = await importSigningKey(SECRET);
    const other = await importSigningKey("another-secret-0123456789");
    let now = 1_000_000;
    const v = new RequestVerifier(key, { clock: () => now, windowMs: 1000 });
    await expect(v.verify("POST", "/x", new Headers())).rejects.toThrow(/not signed/);
    const stale = await signRequest(key, "POST", "/x", { clock: () => now - 5000 });
    await expect(v.verify("POST", "/x", new Headers({ ...stale.headers }))).rejects.toThrow(
      /stale/,
    );
    const forged = await signRequest(other, "POST", "/x", { clock: () => now });
    await expect(v.verify("POST", "/x", new Headers({ ...forged.headers }))).rejects.toThrow(
      /bad signature/,
    );
    const good = await signRequest(key, "POST", "/x", { clock: () => now });
    await expect(v.verify("POST", "/y", new Headers({ ...good.headers }))).rejects.toThrow(
      /bad signature/,
    );
    now += 500;
    await v.verify("POST", "/x", new Headers({ ...good.headers }));
  });

  it("forgets nonces after the window but still refuses their replay as stale", async () => {
    const key = await importSigningKey(SECRET);
    let now = 5_000_000;
    const ledger = new MemoryNonceLedger({ clock: () => now, windowMs: 1000 });
    const v = new RequestVerifier(key, { clock: () => now, windowMs: 1000, ledger });
    const a = await signRequest(key, "POST", "/x", { clock: () => now });
    await v.verify("POST", "/x", new Headers({ ...a.headers }));
    now += 2000;
    const b = await signRequest(key, "POST", "/x", { clock: () => now });
    await v.verify("POST", "/x", new Headers({ ...b.headers }));
    expect(ledger.size).toBe(1);
    await expect(v.verify("POST", "/x", new Headers({ ...a.headers }))).rejects.toThrow(/stale/);
  });
});

describe("nonce ledgers: a nonce is served once across instances and restarts", () => {
  let s3: S3Server;
  beforeAll(async () => {
    s3 = await startS3();
  });
  afterAll(() => s3?.close());
  const stores = (): [string, SnapshotStore][] => [
    ["directory", new DirectoryStore(scratchDir("ledger"))],
    ["s3rver", new S3Store({ ...storeOptions(s3), prefix: `ledger-${Math.random()}` })],
  ];

  it("a request signed before the verifier started is refused, one signed after is served", async () => {
    const key = await importSigningKey(SECRET);
    let now = 9_000_000;
    const before = await signRequest(key, "POST", "/x", { clock: () => now });
    now += 10;
    const v = new RequestVerifier(key, { clock: () => now, windowMs: 60_000 });
    await expect(v.verify("POST", "/x", new Headers({ ...before.headers }))).rejects.toThrow(
      /signed before this server started/,
    );
    const after = await signRequest(key, "POST", "/x", { clock: () => now });
    await v.verify("POST", "/x", new Headers({ ...after.headers }));
  });

  it("create() makes an object only where none is: of racing writers exactly one wins", async () => {
    for (const [name, store] of stores()) {
      expect(await store.create("nonces/a", new Uint8Array([1])), name).toBe(true);
      expect(await store.create("nonces/a", new Uint8Array([2])), name).toBe(false);
      expect([...(await store.get("nonces/a"))], name).toEqual([1]);
      const wins = await Promise.all(
        Array.from({ length: 12 }, (_, i) => store.create("nonces/race", new Uint8Array([i]))),
      );
      expect(wins.filter(Boolean).length, name).toBe(1);
    }
  });

  it("two verifiers (instances) sharing a store serve a signed request once, a restart too", async () => {
    const key = await importSigningKey(SECRET);
    for (const [name, store] of stores()) {
      const start = Date.now() - 1000;
      const instance = () =>
        new RequestVerifier(key, { ledger: new StoreNonceLedger(store), notBefore: start });
      const [a, b] = [instance(), instance()];
      const signed = await signRequest(key, "POST", "/v1/generate");
      const headers = () => new Headers({ ...signed.headers });
      const results = await Promise.allSettled([
        a.verify("POST", "/v1/generate", headers()),
        b.verify("POST", "/v1/generate", headers()),
      ]);
      expect(results.map((r) => r.status).sort(), name).toEqual(["fulfilled", "rejected"]);
      const restarted = instance();
      await expect(restarted.verify("POST", "/v1/generate", headers()), name).rejects.toThrow(
        /replayed/,
      );
      const keys: string[] = [];
      for await (const o of store.list(NONCE_PREFIX)) keys.push(o.key);
      expect(keys, name).toEqual([`${NONCE_PREFIX}${signed.headers["x-ul-nonce"]}`]);
    }
  });

  it("a store that ignores If-None-Match is refused as a ledger; one that honours it is accepted", async () => {
    const plain = await startS3({ conditionalWrites: false });
    try {
      const ignoring = new StoreNonceLedger(new S3Store({ ...storeOptions(plain), prefix: "l" }));
      await expect(ignoring.checkExclusive()).rejects.toBeInstanceOf(NotAvailableError);
      await expect(ignoring.checkExclusive()).rejects.toThrow(/does not refuse a second create/);
    } finally {
      await plain.close();
    }
    for (const [name, store] of stores()) {
      await expect(new StoreNonceLedger(store).checkExclusive(), name).resolves.toBeUndefined();
    }
  });

  it("a ledger that cannot answer is a 503-class error naming no bucket, not a replay", async () => {
    const { s3: behind, proxy, close } = await startS3BehindProxy();
    try {
      const key = await importSigningKey(SECRET);
      const store = new S3Store({
        ...storeOptions(behind, proxy.endpoint),
        prefix: "down",
        retry: { attempts: 2, baseDelayMs: 1, maxDelayMs: 2 },
      });
      const signed = await signRequest(key, "POST", "/x");
      // Another instance claimed it; then every GET of the store fails: the second claimant cannot
      // tell its own retried claim from a replay, and says the ledger is unavailable.
      expect(await new StoreNonceLedger(store).claim(signed.headers["x-ul-nonce"], 1)).toBe(true);
      proxy.setSchedule((r) => (r.method === "GET" ? { kind: "status", status: 500 } : null));
      const v = new RequestVerifier(key, { ledger: new StoreNonceLedger(store), notBefore: 0 });
      const err = await v.verify("POST", "/x", new Headers({ ...signed.headers })).catch((e) => e);
      expect(err).toBeInstanceOf(NotAvailableError);
      expect(err.message).toBe("the replay ledger is unavailable; retry the request");
      expect(err.message).not.toMatch(new RegExp(behind.bucket));
      // Down entirely (PUTs too): the same, not "replayed".
      proxy.setSchedule(() => ({ kind: "status", status: 500 }));
      const fresh = await signRequest(key, "POST", "/x");
      await expect(
        v.verify("POST", "/x", new Headers({ ...fresh.headers })),
      ).rejects.toBeInstanceOf(NotAvailableError);
    } finally {
      await close();
    }
  });

  it("a claim whose first create landed (a retried PUT) is its own, another claimant's is not", async () => {
    for (const [name, store] of stores()) {
      const fixed = (b: Uint8Array) => b.fill(7);
      const mine = new StoreNonceLedger(store, { random: fixed });
      const body = new TextEncoder().encode(JSON.stringify({ ts: 42, token: "07".repeat(16) }));
      expect(await store.create(`${NONCE_PREFIX}${"ab".repeat(16)}`, body)).toBe(true);
      expect(await mine.claim("ab".repeat(16), 42), name).toBe(true);
      const other = new StoreNonceLedger(store);
      expect(await other.claim("ab".repeat(16), 42), name).toBe(false);
    }
  });
});

describe("frames", () => {
  it("round-trips header, tokens and end over random chunk boundaries", async () => {
    const key = await importSigningKey(SECRET);
    const { signature } = await signRequest(key, "POST", "/g");
    const parts = [
      Int32Array.from([1, 2, 3]),
      new Int32Array(0),
      Int32Array.from({ length: 300_000 }, (_, i) => i * 7 - 5),
    ];
    const bytes = await collect(frameStream(key, signature, { hello: "wörld" }, parts));
    for (const seed of [1, 2, 3]) {
      const frames = await readAll(chunked(bytes, seed), key, signature);
      expect(frames[0]).toEqual({ type: FRAME_HEADER, json: { hello: "wörld" } });
      const tokens = frames
        .filter((f) => f.type === FRAME_TOKENS)
        .flatMap((f) => [...(f as { tokens: Int32Array }).tokens]);
      expect(tokens).toEqual(parts.flatMap((p) => [...p]));
      expect(frames.at(-1)).toEqual({ type: FRAME_END, total: 300_003 });
    }
  });

  it("refuses a flipped bit, a truncated body, and frames under another request's signature", async () => {
    const key = await importSigningKey(SECRET);
    const { signature } = await signRequest(key, "POST", "/g");
    const bytes = await collect(
      frameStream(key, signature, { a: 1 }, [Int32Array.from([5, 6, 7, 8])]),
    );
    const flipped = bytes.slice();
    flipped[52] ^= 1; // inside the TOKENS payload (HEADER frame is 5 + 7 + 32 bytes)
    await expect(readAll(chunked(flipped, 9), key, signature)).rejects.toThrow(/bad tag/);
    await expect(
      readAll(chunked(bytes.slice(0, bytes.length - 37), 9), key, signature),
    ).rejects.toThrow(/before END/);
    const otherSig = (await signRequest(key, "POST", "/g")).signature;
    await expect(readAll(chunked(bytes, 9), key, otherSig)).rejects.toThrow(/bad tag/);
  });
});

describe("server-sent events", () => {
  it("parses events, multi-line data and skips comments", async () => {
    const enc = new TextEncoder();
    const bytes = new Uint8Array([
      ...sseComment("keep-alive"),
      ...sseEvent("token", { id: 1, text: "a" }),
      ...enc.encode("data: x\r\ndata: y\r\n\r\n"),
      ...sseEvent(null, "[DONE]"),
    ]);
    const msgs = [];
    for await (const m of parseSse(chunked(bytes, 4))) msgs.push(m);
    expect(msgs).toEqual([
      { event: "token", data: '{"id":1,"text":"a"}' },
      { event: "message", data: "x\ny" },
      { event: "message", data: "[DONE]" },
    ]);
  });
});
