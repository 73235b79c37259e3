// Snapshot object format v2 (and v1 objects), chain keys and tenant keys.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { deriveTenantKey, masterKeyId, parseMasterKey } from "../core/crypto/tenant-key.ts";
import { FormatError } from "../core/errors.ts";
import { toHex } from "../core/hash/hex.ts";
import { chainKey, chainKeys, tenantTag } from "../core/kv/chain-key.ts";
import {
  DecryptError,
  decodeSnapshot,
  encodeSnapshot,
  parseSnapshotHeader,
  SNAPSHOT_HEADER_BYTES,
  type SnapshotMeta,
  UnreadableError,
} from "../core/kv/format.ts";
import { fp8PayloadToF32 } from "../core/kv/fp8.ts";
import { type KvLayout, kvPayloadBytes, kvScaleBytes } from "../core/kv/layout.ts";

const FP = "0f".repeat(32);
const layout: KvLayout = { layers: 2, kvHeads: 2, headDim: 8, dtype: "bf16" };
const ctx = { modelFingerprint: FP, dtype: layout.dtype, tenantSalt: "salt" };

function meta(over: Partial<SnapshotMeta> = {}): SnapshotMeta {
  return {
    modelFingerprint: FP,
    layout,
    tokenStart: 8,
    tokenEnd: 12,
    chainKey: new Uint8Array(32).fill(3),
    previousKey: new Uint8Array(32).fill(2),
    ...over,
  };
}

function payload(tokens = 4): Uint8Array {
  const p = new Uint8Array(kvPayloadBytes(layout, tokens));
  for (let i = 0; i < p.length; i++) p[i] = (i * 31 + 7) & 0xff;
  return p;
}

/** Re-seal the header digest after editing header bytes, to test field checks behind it. */
async function resealHeader(obj: Uint8Array): Promise<void> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", obj.slice(0, 224)));
  obj.set(d, 224);
}

describe("snapshot format v2", () => {
  it("round-trips header fields and payload", async () => {
    const obj = await encodeSnapshot(meta(), payload());
    expect(obj.length).toBe(SNAPSHOT_HEADER_BYTES + payload().length);
    const { header, payload: back } = await decodeSnapshot(obj);
    expect(back).toEqual(payload());
    expect(header).toMatchObject({
      version: 2,
      encrypted: false,
      layout,
      tokenStart: 8,
      tokenEnd: 12,
    });
    expect(header.modelFingerprint).toBe(FP);
    expect(header.chainKey).toEqual(new Uint8Array(32).fill(3));
    expect(header.previousKey).toEqual(new Uint8Array(32).fill(2));
    const first = await decodeSnapshot(
      await encodeSnapshot(meta({ previousKey: null }), payload()),
    );
    expect(first.header.previousKey).toBeNull();
  });

  it("detects a flipped bit anywhere in the object", async () => {
    const obj = await encodeSnapshot(meta(), payload());
    for (const at of [0, 9, 17, 21, 45, 100, 130, 200, 230, 256, 300, obj.length - 1]) {
      const bad = obj.slice();
      bad[at] ^= 0x04;
      await expect(decodeSnapshot(bad), `byte ${at}`).rejects.toBeInstanceOf(FormatError);
    }
  });

  it("refuses truncated, extended and foreign objects", async () => {
    const obj = await encodeSnapshot(meta(), payload());
    await expect(decodeSnapshot(obj.subarray(0, obj.length - 1))).rejects.toThrow(
      /bytes, header says/,
    );
    const longer = new Uint8Array(obj.length + 1);
    longer.set(obj);
    await expect(decodeSnapshot(longer)).rejects.toThrow(/bytes, header says/);
    await expect(decodeSnapshot(obj.subarray(0, 100))).rejects.toThrow(
      /shorter than its 256-byte header/,
    );
    await expect(decodeSnapshot(new TextEncoder().encode("x".repeat(400)))).rejects.toThrow(
      /bad magic/,
    );
  });

  it("refuses off fields even when the header digest is re-sealed", async () => {
    const edits: [string, (v: DataView) => void, RegExp][] = [
      ["version", (v) => v.setUint16(8, 3, true), /version 3 is not supported/],
      ["header size", (v) => v.setUint16(10, 128, true), /header size/],
      ["flags", (v) => v.setUint32(12, 6, true), /unknown snapshot flags/],
      ["dtype", (v) => v.setUint8(16, 9), /unknown KV dtype/],
      ["fp8 code on a bf16 payload", (v) => v.setUint8(16, 4), /fp8 scale block/],
      ["payload layout", (v) => v.setUint8(17, 2), /payload layout/],
      ["reserved", (v) => v.setUint16(18, 1, true), /reserved/],
      ["scale block", (v) => v.setUint32(36, 64, true), /carries fp8 scale fields/],
      ["scales", (v) => v.setUint32(32, 64, true), /carries fp8 scale fields/],
      ["layers", (v) => v.setUint32(20, 0, true), /layers 0 is out of range/],
      ["empty range", (v) => v.setBigUint64(48, 8n, true), /token range is empty/],
      ["payload size", (v) => v.setBigUint64(56, 1n, true), /payload size/],
      ["body size", (v) => v.setBigUint64(64, 1n, true), /body size/],
      ["huge", (v) => v.setBigUint64(48, 1n << 60n, true), /too large/],
      ["nonce", (v) => v.setUint8(72, 1), /carries a nonce/],
    ];
    for (const [name, edit, message] of edits) {
      const obj = await encodeSnapshot(meta(), payload());
      edit(new DataView(obj.buffer));
      await resealHeader(obj);
      await expect(parseSnapshotHeader(obj), name).rejects.toThrow(message);
    }
  });

  it("fp8-e4m3: the header states the scale bytes and block inside the payload, and checks them", async () => {
    const fp8: KvLayout = { ...layout, dtype: "fp8-e4m3" };
    const tokens = 70; // two scale blocks, the second partial
    const body = new Uint8Array(kvPayloadBytes(fp8, tokens));
    const view = new DataView(body.buffer);
    // Per layer, K then V: scales (kv_head, block) f32, then values (kv_head, pos, head_dim).
    const sliceBytes = body.length / (2 * fp8.layers);
    const scaleBytes = fp8.kvHeads * 2 * 4;
    expect(sliceBytes).toBe(scaleBytes + fp8.kvHeads * tokens * fp8.headDim);
    for (let s = 0; s < 2 * fp8.layers; s++) {
      for (let i = 0; i < fp8.kvHeads * 2; i++)
        view.setFloat32(s * sliceBytes + 4 * i, i + 1, true);
      body.fill(0x38, s * sliceBytes + scaleBytes, (s + 1) * sliceBytes); // e4m3 0x38 = 1.0
    }
    const obj = await encodeSnapshot(meta({ layout: fp8, tokenStart: 0, tokenEnd: tokens }), body);
    const header = new DataView(obj.buffer);
    expect(header.getUint16(8, true)).toBe(2);
    expect(header.getUint32(32, true)).toBe(kvScaleBytes(fp8, tokens));
    expect(header.getUint32(32, true)).toBe(2 * fp8.layers * scaleBytes);
    expect(header.getUint32(36, true)).toBe(64);
    const back = await decodeSnapshot(obj);
    expect(back.header.layout).toEqual(fp8);
    expect(back.payload).toEqual(body);
    // Dequantised: head h's positions [0, 64) are 1.0 * (2h + 1), [64, 70) are 1.0 * (2h + 2).
    const f32 = new Float32Array(fp8PayloadToF32(fp8, tokens, back.payload).buffer);
    const perHead = tokens * fp8.headDim;
    expect(f32[perHead + 63 * fp8.headDim]).toBe(3);
    expect(f32[perHead + 64 * fp8.headDim]).toBe(4);
    for (const [edit, message] of [
      [(v: DataView) => v.setUint32(36, 128, true), /blocks of 128 positions/],
      [(v: DataView) => v.setUint32(32, 8, true), /scale size/],
      [(v: DataView) => v.setUint16(8, 1, true), /need format v2/],
    ] as const) {
      const bad = obj.slice();
      edit(new DataView(bad.buffer));
      await resealHeader(bad);
      await expect(parseSnapshotHeader(bad)).rejects.toThrow(message);
    }
    await expect(encodeSnapshot(meta({ modelFingerprint: "model-a" }), payload())).rejects.toThrow(
      /64 hex/,
    );
  });

  it("reads a v1 object written by the v1 encoder (test/fixtures/snapshot/v1-bf16.bin)", async () => {
    // Made by core/kv/format.ts before v2 (commit 2094af2) from meta() and payload() above.
    const v1 = new Uint8Array(
      readFileSync(new URL("fixtures/snapshot/v1-bf16.bin", import.meta.url)),
    );
    const { header, payload: back } = await decodeSnapshot(v1);
    expect(header).toMatchObject({
      version: 1,
      encrypted: false,
      layout,
      tokenStart: 8,
      tokenEnd: 12,
    });
    expect(header.chainKey).toEqual(new Uint8Array(32).fill(3));
    expect(back).toEqual(payload());
  });

  it("names the master key that sealed it: unknown keys and plaintext are unreadable, a bad tag under the named key is tampering", async () => {
    const masterA = new Uint8Array(32).fill(1);
    const masterB = new Uint8Array(32).fill(2);
    const keyOf = async (m: Uint8Array) => ({
      id: await masterKeyId(m),
      key: await deriveTenantKey(m, "tenant"),
    });
    const [a, b] = [await keyOf(masterA), await keyOf(masterB)];
    expect(toHex(a.id)).not.toBe(toHex(b.id));
    const sealed = await encodeSnapshot(meta(), payload(), { key: a.key, keyId: a.id });
    expect((await parseSnapshotHeader(sealed)).keyId).toEqual(a.id);
    // Rotation: B seals now, A is still listed and opens what it sealed.
    expect((await decodeSnapshot(sealed, { keys: [b, a] })).payload).toEqual(payload());
    // Not readable here, and not damage: no key, only B, or plaintext where keys are configured.
    await expect(decodeSnapshot(sealed)).rejects.toBeInstanceOf(UnreadableError);
    await expect(decodeSnapshot(sealed, { keys: [b] })).rejects.toThrow(
      new RegExp(`sealed under master key ${toHex(a.id)}, which this server does not hold`),
    );
    const plain = await encodeSnapshot(meta(), payload());
    expect((await parseSnapshotHeader(plain)).keyId).toBeNull();
    await expect(decodeSnapshot(plain, { keys: [a] })).rejects.toBeInstanceOf(UnreadableError);
    // Tampered and re-hashed (both digests valid): the key it names refuses the tag.
    const tampered = sealed.slice();
    tampered[SNAPSHOT_HEADER_BYTES + 5] ^= 1;
    tampered.set(
      createHash("sha256").update(tampered.subarray(SNAPSHOT_HEADER_BYTES)).digest(),
      192,
    );
    await resealHeader(tampered);
    const err = await decodeSnapshot(tampered, { keys: [b, a] }).catch((e) => e);
    expect(err).toBeInstanceOf(DecryptError);
    expect(err).not.toBeInstanceOf(UnreadableError);
    // An object from before key ids (id zeros) is tried under every listed key.
    const legacy = await encodeSnapshot(meta(), payload(), { key: a.key });
    expect((await parseSnapshotHeader(legacy)).keyId).toBeNull();
    expect((await decodeSnapshot(legacy, { keys: [b, a] })).payload).toEqual(payload());
    await expect(decodeSnapshot(legacy, { keys: [b] })).rejects.toBeInstanceOf(UnreadableError);
    // A plaintext object may not carry a key id.
    const forged = plain.slice();
    forged[84] = 1;
    await resealHeader(forged);
    await expect(decodeSnapshot(forged)).rejects.toThrow(/unencrypted snapshot carries a key id/);
  });

  it("what a newer build may write (version, flags, dtype, layout) is unreadable, not damage", async () => {
    const obj = await encodeSnapshot(meta(), payload());
    const edits: [string, (v: DataView) => void][] = [
      ["version 3", (v) => v.setUint16(8, 3, true)],
      ["a new flag", (v) => v.setUint32(12, 2, true)],
      ["dtype code 9", (v) => v.setUint8(16, 9)],
      ["layout code 2", (v) => v.setUint8(17, 2)],
    ];
    for (const [what, edit] of edits) {
      const newer = obj.slice();
      edit(new DataView(newer.buffer));
      await resealHeader(newer);
      await expect(decodeSnapshot(newer), what).rejects.toBeInstanceOf(UnreadableError);
      // The same edit without a valid header digest is damage.
      const damaged = obj.slice();
      edit(new DataView(damaged.buffer));
      const err = await decodeSnapshot(damaged).catch((e) => e);
      expect(err, what).toBeInstanceOf(FormatError);
      expect(err, what).not.toBeInstanceOf(UnreadableError);
    }
  });

  it("encrypts with AES-GCM under the header as AAD", async () => {
    const key = await deriveTenantKey(new Uint8Array(32).fill(1), "tenant");
    const obj = await encodeSnapshot(meta(), payload(), { key });
    const h = await parseSnapshotHeader(obj);
    expect(h.encrypted).toBe(true);
    expect(h.bodyBytes).toBe(payload().length + 16);
    // The payload does not appear in the clear.
    expect(Buffer.from(obj).indexOf(Buffer.from(payload().subarray(0, 32)))).toBe(-1);
    expect((await decodeSnapshot(obj, { key })).payload).toEqual(payload());
    const other = await deriveTenantKey(new Uint8Array(32).fill(1), "another tenant");
    await expect(decodeSnapshot(obj, { key: other })).rejects.toBeInstanceOf(DecryptError);
    await expect(decodeSnapshot(obj)).rejects.toThrow(/encrypted and no key/);
    // Edit an authenticated header field and re-seal both digests: GCM still refuses it.
    const forged = obj.slice();
    new DataView(forged.buffer).setBigUint64(40, 0n, true);
    new DataView(forged.buffer).setBigUint64(48, 4n, true);
    await resealHeader(forged);
    await expect(decodeSnapshot(forged, { key })).rejects.toBeInstanceOf(DecryptError);
  });

  it("parses master keys from hex and base64 and refuses short ones", () => {
    expect(parseMasterKey("ab".repeat(32))).toEqual(new Uint8Array(32).fill(0xab));
    expect(parseMasterKey(Buffer.alloc(32, 7).toString("base64"))).toEqual(
      new Uint8Array(32).fill(7),
    );
    expect(() => parseMasterKey(Buffer.alloc(16).toString("base64"))).toThrow(/at least 32 bytes/);
  });
});

describe("chain keys", () => {
  const t = (...ids: number[]) => Int32Array.from(ids);

  it("match a hand-computed SHA-256 over length-prefixed fields", async () => {
    const fields = ["ultralong-kv-chain", "\x01\x00", FP, "bf16", "salt", "", null];
    const parts: number[] = [];
    for (const f of fields) {
      const bytes =
        f === null ? new Uint8Array(new Int32Array([5, -1]).buffer) : new TextEncoder().encode(f);
      parts.push(bytes.length & 0xff, 0, 0, 0, ...bytes);
    }
    const expected = new Uint8Array(await crypto.subtle.digest("SHA-256", new Uint8Array(parts)));
    expect(toHex(await chainKey(ctx, null, t(5, -1)))).toBe(toHex(expected));
  });

  it("differ with tenant, model, dtype, previous key and tokens; shared prefixes share keys", async () => {
    const tokens = t(1, 2, 3, 4, 5, 6);
    const base = await chainKeys(ctx, tokens, 2, 3);
    const variants = [
      await chainKeys({ ...ctx, tenantSalt: "salt2" }, tokens, 2, 3),
      await chainKeys({ ...ctx, modelFingerprint: "1f".repeat(32) }, tokens, 2, 3),
      await chainKeys({ ...ctx, dtype: "f32" }, tokens, 2, 3),
    ];
    for (const v of variants)
      for (let i = 0; i < 3; i++) expect(toHex(v[i])).not.toBe(toHex(base[i]));
    const changedMiddle = await chainKeys(ctx, t(1, 2, 9, 4, 5, 6), 2, 3);
    expect(toHex(changedMiddle[0])).toBe(toHex(base[0]));
    // Chunk 2 has the same tokens but a different history: a different key.
    expect(toHex(changedMiddle[1])).not.toBe(toHex(base[1]));
    expect(toHex(changedMiddle[2])).not.toBe(toHex(base[2]));
    expect(base.map(toHex)).toEqual((await chainKeys(ctx, tokens, 2, 3)).map(toHex));
  });

  it("length prefixes keep field boundaries apart", async () => {
    const a = await chainKey({ ...ctx, tenantSalt: "ab" }, null, t(1));
    const b = await chainKey({ ...ctx, tenantSalt: "a", modelFingerprint: `${FP}b` }, null, t(1));
    expect(toHex(a)).not.toBe(toHex(b));
    expect(await tenantTag("x")).toMatch(/^[0-9a-f]{16}$/);
    expect(await tenantTag("x")).not.toBe(await tenantTag("y"));
  });

  it("tenant tag: 16 hex of SHA-256 over lp('ultralong-tenant-tag') || lp(salt), as documented", async () => {
    const lp = (s: string) => {
      const b = Buffer.from(s);
      const n = Buffer.alloc(4);
      n.writeUInt32LE(b.length);
      return Buffer.concat([n, b]);
    };
    const digest = createHash("sha256")
      .update(Buffer.concat([lp("ultralong-tenant-tag"), lp("tenant-7")]))
      .digest("hex");
    expect(await tenantTag("tenant-7")).toBe(digest.slice(0, 16));
  });
});
