import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadModel } from "../core/model/load.ts";
import { DirectoryModelFiles, FileByteSource } from "../core/node/model-files.ts";
import { Checkpoint } from "../core/safetensors/checkpoint.ts";
import {
  bf16ToF32,
  bitsToF32,
  decodeTo16,
  decodeToF32,
  encodeFromF32,
  f16ToF32,
  f32BitsToBf16,
  f32BitsToF16,
  f32ToBf16,
  f32ToBits,
  f32ToF16,
} from "../core/safetensors/dtype.ts";
import { readSafetensorsHeader } from "../core/safetensors/header.ts";
import { encodeHeader, fileOrder, planShards } from "../core/safetensors/writer.ts";
import { SMALL_VOCAB, testModelDir } from "./support/models.ts";

const isNaN16 = (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
const isNaNBf16 = (h: number) => (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;

// An independent reference for rounding to a 16-bit float: every finite value of the format, sorted,
// and the nearest one found by binary search, ties to the even bit pattern. Overflow follows IEEE:
// values at or beyond max + half an ulp round to infinity.
function nearestTable(decode: (h: number) => number, isNotANumber: (h: number) => boolean) {
  const vals: { v: number; h: number }[] = [];
  for (let h = 0; h < 0x8000; h++) {
    const v = decode(h);
    if (!isNotANumber(h) && Number.isFinite(v)) vals.push({ v, h });
  }
  vals.sort((a, b) => a.v - b.v);
  const max = vals[vals.length - 1];
  const ulp = max.v - vals[vals.length - 2].v;
  return (x: number): number => {
    const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
    const a = Math.abs(x);
    if (a >= max.v + ulp / 2) return sign | (decode(0x7c00) === Infinity ? 0x7c00 : 0x7f80);
    let lo = 0;
    let hi = vals.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (vals[mid].v <= a) lo = mid;
      else hi = mid;
    }
    const dl = a - vals[lo].v;
    const dh = vals[hi].v - a;
    const pick =
      dl < dh ? vals[lo] : dh < dl ? vals[hi] : vals[lo].h % 2 === 0 ? vals[lo] : vals[hi];
    return sign | pick.h;
  };
}

function randomF32Bits(n: number, seed: number): Uint32Array {
  const out = new Uint32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    let t = s ^ (s >>> 15);
    t = Math.imul(t, 0x2c1b3c6d) >>> 0;
    out[i] = (t ^ (t >>> 12)) >>> 0;
  }
  return out;
}

describe("bf16 and f16 conversion", () => {
  it("bf16 -> f32 -> bf16 is the identity for every non-NaN bit pattern", () => {
    for (let h = 0; h < 0x10000; h++) {
      const back = f32ToBf16(bf16ToF32(h));
      if (isNaNBf16(h)) expect(back).toBe(0x7fc0);
      else if (back !== h) expect(back).toBe(h);
    }
  });

  it("f16 -> f32 -> f16 is the identity for every non-NaN bit pattern, subnormals included", () => {
    for (let h = 0; h < 0x10000; h++) {
      const back = f32ToF16(f16ToF32(h));
      if (isNaN16(h)) expect(back).toBe(0x7e00);
      else if (back !== h) expect(back).toBe(h);
    }
  });

  it("f16 -> f32 decodes the edge values exactly", () => {
    expect(f16ToF32(0x0001)).toBe(2 ** -24); // smallest subnormal
    expect(f16ToF32(0x03ff)).toBe(1023 * 2 ** -24); // largest subnormal
    expect(f16ToF32(0x0400)).toBe(2 ** -14); // smallest normal
    expect(f16ToF32(0x7bff)).toBe(65504);
    expect(f16ToF32(0x7c00)).toBe(Infinity);
    expect(f16ToF32(0xfc00)).toBe(-Infinity);
    expect(Object.is(f16ToF32(0x8000), -0)).toBe(true);
    expect(f16ToF32(0x3c00)).toBe(1);
    expect(f16ToF32(0x3555)).toBe(0.333251953125);
  });

  it("f32 -> bf16 rounds to nearest even, overflows to inf, and gives 0x7fc0 for NaN", () => {
    expect(f32ToBf16(1)).toBe(0x3f80);
    expect(f32ToBf16(1 + 2 ** -8)).toBe(0x3f80); // tie, even below
    expect(f32ToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie, even above
    expect(f32ToBf16(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81); // just above the tie
    expect(f32BitsToBf16(0x7f7fffff)).toBe(0x7f80); // f32 max rounds to inf
    expect(f32BitsToBf16(0x7f7f7fff)).toBe(0x7f7f); // just below the tie stays finite
    expect(f32ToBf16(Infinity)).toBe(0x7f80);
    expect(f32ToBf16(-Infinity)).toBe(0xff80);
    expect(f32ToBf16(-0)).toBe(0x8000);
    expect(f32BitsToBf16(0x00000001)).toBe(0x0000); // f32 subnormal below half a bf16 ulp
    expect(f32BitsToBf16(0x00018000)).toBe(0x0002); // subnormal tie, even above
    expect(f32BitsToBf16(0x7f800001)).toBe(0x7fc0); // signalling NaN whose mantissa would round away
    expect(f32BitsToBf16(0xffc00000)).toBe(0x7fc0);
  });

  it("f32 -> bf16 agrees with a nearest-value search on random and boundary values", () => {
    const ref = nearestTable(bf16ToF32, isNaNBf16);
    const random = randomF32Bits(20000, 7);
    // Half of them made exact ties (low 16 bits 0x8000), which random bits almost never are.
    const bits = random.map((b, i) => (i % 2 ? ((b & 0xffff0000) | 0x8000) >>> 0 : b));
    for (const b of bits) {
      const x = bitsToF32(b);
      if (Number.isNaN(x)) continue;
      const got = f32BitsToBf16(b);
      if (got !== ref(x)) expect([b.toString(16), got]).toEqual([b.toString(16), ref(x)]);
    }
  });

  it("f32 -> f16 rounds to nearest even with subnormals and overflow", () => {
    expect(f32ToF16(65504)).toBe(0x7bff);
    expect(f32ToF16(65519.99)).toBe(0x7bff);
    expect(f32ToF16(65520)).toBe(0x7c00); // the tie rounds to even, which is inf
    expect(f32ToF16(2 ** -24)).toBe(0x0001);
    expect(f32ToF16(2 ** -25)).toBe(0x0000); // tie with 0, even
    expect(f32ToF16(1.5 * 2 ** -25)).toBe(0x0001);
    expect(f32ToF16(3 * 2 ** -25)).toBe(0x0002); // tie between 1 and 2 units, even
    expect(f32ToF16(2 ** -14)).toBe(0x0400);
    expect(f32ToF16(2 ** -14 - 2 ** -25)).toBe(0x0400); // largest subnormal + half rounds up to normal
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00); // tie, even below
    expect(f32ToF16(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie, even above
    expect(f32ToF16(-0)).toBe(0x8000);
    expect(f32ToF16(Number.NaN)).toBe(0x7e00);
    expect(f32ToF16(-Infinity)).toBe(0xfc00);
  });

  it("f32 -> f16 agrees with a nearest-value search on random values across the f16 range", () => {
    const ref = nearestTable(f16ToF32, isNaN16);
    const bits = randomF32Bits(20000, 11);
    for (const b0 of bits) {
      // Exponents 100..145 cover f16 underflow, subnormals, normals and overflow.
      let b = (b0 & 0x807fffff) | ((100 + ((b0 >>> 23) % 46)) << 23);
      if (b0 & 1) b = (b & ~0x1fff) | 0x1000; // an exact tie for normal f16 results
      const x = bitsToF32(b >>> 0);
      const got = f32BitsToF16(b >>> 0);
      if (got !== ref(x)) expect([b.toString(16), got]).toEqual([b.toString(16), ref(x)]);
    }
  });

  it("bulk decode and encode agree with the scalar conversions, from unaligned buffers too", () => {
    const values = new Float32Array([1, -2.5, Math.PI, 1e-7, 65536, -0, 1e30]);
    for (const to of ["bf16", "f16"] as const) {
      const bytes = encodeFromF32(values, to);
      const unaligned = new Uint8Array(bytes.length + 1).subarray(1);
      unaligned.set(bytes);
      const asF32 = new Float32Array(values.length);
      decodeToF32(to, unaligned, asF32, 0);
      const scalar = to === "bf16" ? f32ToBf16 : f32ToF16;
      const back = to === "bf16" ? bf16ToF32 : f16ToF32;
      for (let i = 0; i < values.length; i++) {
        expect(Object.is(asF32[i], back(scalar(values[i])))).toBe(true);
      }
      const cross = new Uint16Array(values.length);
      const other = to === "bf16" ? "f16" : "bf16";
      decodeTo16(to, other, unaligned, cross, 0);
      const otherScalar = other === "bf16" ? f32ToBf16 : f32ToF16;
      for (let i = 0; i < values.length; i++) expect(cross[i]).toBe(otherScalar(asF32[i]));
    }
    const raw = encodeFromF32(values, "f32");
    const fromF32 = new Uint16Array(values.length);
    decodeTo16("f32", "bf16", raw, fromF32, 0);
    for (let i = 0; i < values.length; i++)
      expect(fromF32[i]).toBe(f32BitsToBf16(f32ToBits(values[i])));
  });
});

describe("safetensors writer", () => {
  it("lays files out as Hugging Face does: metadata first, dtype then name order, space padding", async () => {
    const tensors = [
      { name: "b", dtype: "bf16" as const, shape: [3] },
      { name: "a", dtype: "bf16" as const, shape: [2, 1] },
      { name: "z", dtype: "f32" as const, shape: [1] },
    ];
    const ordered = fileOrder(tensors);
    expect(ordered.map((t) => t.name)).toEqual(["z", "a", "b"]);
    const bytes = encodeHeader(ordered);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(n % 8).toBe(0);
    expect(bytes.length).toBe(8 + n);
    const text = new TextDecoder().decode(bytes.subarray(8));
    const end = text.lastIndexOf("}") + 1;
    expect(text.slice(end)).toMatch(/^ {0,7}$/);
    expect(text.slice(end).length).toBe((8 - (end % 8)) % 8);
    const json = JSON.parse(text);
    expect(Object.keys(json)).toEqual(["__metadata__", "z", "a", "b"]);
    expect(json.__metadata__).toEqual({ format: "pt" });
    expect(json.z).toEqual({ dtype: "F32", shape: [1], data_offsets: [0, 4] });
    expect(json.a).toEqual({ dtype: "BF16", shape: [2, 1], data_offsets: [4, 8] });
    expect(json.b).toEqual({ dtype: "BF16", shape: [3], data_offsets: [8, 14] });
  });

  it("splits into contiguous non-empty shards in state-dict order", () => {
    const tensors = Array.from({ length: 10 }, (_, i) => ({
      name: `t${i}`,
      dtype: "f32" as const,
      shape: [i === 0 ? 1000 : 10],
    }));
    for (const n of [1, 2, 3, 10]) {
      const plans = planShards(tensors, n);
      expect(plans.length).toBe(n);
      expect(plans.every((p) => p.tensors.length > 0)).toBe(true);
      const flat = plans.flatMap((p) =>
        p.tensors.map((t) => t.name).sort((a, b) => Number(a.slice(1)) - Number(b.slice(1))),
      );
      expect(flat).toEqual(tensors.map((t) => t.name));
    }
    expect(() => planShards(tensors, 11)).toThrow(RangeError);
  });
});

describe("reading checkpoints", () => {
  it("reads the header of a generated file without reading weights", async () => {
    const dir = await testModelDir(SMALL_VOCAB);
    const header = await readSafetensorsHeader(new FileByteSource(join(dir, "model.safetensors")));
    expect(header.metadata).toEqual({ format: "pt" });
    const embed = header.tensors.find((t) => t.name === "model.embed_tokens.weight")!;
    expect(embed.shape).toEqual([512, 64]);
    expect(embed.byteLength).toBe(512 * 64 * 4);
    const last = header.tensors[header.tensors.length - 1];
    expect(last.begin + last.byteLength).toBe(header.fileSize);
  });

  it("a sharded BF16 checkpoint holds exactly the RNE-rounded values of the single F32 one", async () => {
    const single = await loadModel(new DirectoryModelFiles(await testModelDir(SMALL_VOCAB)));
    const sharded = await loadModel(
      new DirectoryModelFiles(await testModelDir({ ...SMALL_VOCAB, shards: 3, dtype: "bf16" })),
    );
    const shardedF32 = await loadModel(
      new DirectoryModelFiles(await testModelDir({ ...SMALL_VOCAB, shards: 3 })),
    );
    expect(
      sharded.weights
        .tensors()
        .map((t) => t.name)
        .sort(),
    ).toEqual(
      single.weights
        .tensors()
        .map((t) => t.name)
        .sort(),
    );
    for (const t of single.weights.tensors()) {
      const a = await single.weights.read(t.name, "f32");
      const b = await shardedF32.weights.read(t.name, "f32");
      expect(b).toEqual(a);
      const asBf16 = await single.weights.read(t.name, "bf16");
      const stored = await sharded.weights.read(t.name, "bf16");
      expect(stored).toEqual(asBf16);
    }
    expect(await shardedF32.fingerprint()).toBe(await single.fingerprint());
    expect(await sharded.fingerprint()).not.toBe(await single.fingerprint());
  });

  it("the sharded index matches transformers' format", async () => {
    const dir = await testModelDir({ ...SMALL_VOCAB, shards: 3 });
    const text = await readFile(join(dir, "model.safetensors.index.json"), "utf8");
    const index = JSON.parse(text);
    expect(Object.keys(index)).toEqual(["metadata", "weight_map"]);
    const names = Object.keys(index.weight_map);
    expect(names).toEqual([...names].sort());
    const cp = await Checkpoint.open(new DirectoryModelFiles(dir));
    expect(cp.files).toHaveLength(3);
    const total = cp.entries().reduce((a, t) => a + t.byteLength, 0);
    expect(index.metadata.total_size).toBe(total);
    expect(text).toBe(`${JSON.stringify(index, null, 2)}\n`);
    for (const t of cp.entries()) expect(index.weight_map[t.name]).toBe(t.file);
  });

  it("reads a tensor in chunks smaller than the tensor with the same bytes", async () => {
    const cp = await Checkpoint.open(new DirectoryModelFiles(await testModelDir(SMALL_VOCAB)));
    const name = "model.embed_tokens.weight";
    const parts: Uint8Array[] = [];
    for await (const c of cp.rawChunks(name, 4096)) parts.push(c);
    expect(parts.length).toBe((512 * 64 * 4) / 4096);
    const joined = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
    let at = 0;
    for (const p of parts) {
      joined.set(p, at);
      at += p.length;
    }
    const whole = await cp.read(name, "f32");
    expect(new Float32Array(joined.buffer)).toEqual(whole);
  });
});
