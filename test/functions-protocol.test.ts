// The edge-to-model wire: signatures (stale, replayed, forged refused) and authenticated frames
// (tampered, reordered, truncated refused), over real byte streams split at random boundaries.
import { describe, expect, it } from "vitest";
import { parseSse, sseComment, sseEvent } from "../core/protocol/events.ts";
import {
  FRAME_END,
  FRAME_HEADER,
  FRAME_TOKENS,
  frameStream,
  readFrames,
} from "../core/protocol/frames.ts";
import { importSigningKey, RequestVerifier, signRequest } from "../core/protocol/signing.ts";

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
    const v = new RequestVerifier(key, { clock: () => now, windowMs: 1000 });
    const a = await signRequest(key, "POST", "/x", { clock: () => now });
    await v.verify("POST", "/x", new Headers({ ...a.headers }));
    now += 2000;
    const b = await signRequest(key, "POST", "/x", { clock: () => now });
    await v.verify("POST", "/x", new Headers({ ...b.headers }));
    expect(v.rememberedNonces).toBe(1);
    await expect(v.verify("POST", "/x", new Headers({ ...a.headers }))).rejects.toThrow(/stale/);
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
