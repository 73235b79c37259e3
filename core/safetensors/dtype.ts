// Element types of safetensors checkpoints and the conversions between them.
//
// Conversions (all exact where the target can represent the value):
//   bf16 -> f32   exact (bits << 16).
//   f16  -> f32   exact, subnormals, infinities and NaN payload kept.
//   f32  -> bf16  round to nearest, ties to even; overflow rounds to +-inf as the bits carry.
//   f32  -> f16   round to nearest, ties to even, with f16 subnormals; overflow gives +-inf.
//   f16 <-> bf16  through f32 (f16 -> f32 is exact, so one rounding step).
// NaN: f32 -> bf16 gives 0x7fc0 and f32 -> f16 gives 0x7e00 (the canonical quiet NaN, sign
// dropped), which is what PyTorch's c10::BFloat16 and c10::Half constructors produce. Rounding a NaN
// mantissa instead could turn it into an infinity, which must never happen.

import type { WeightDtype } from "../model/config-types.ts";

/** safetensors dtype string -> our name. Only the float types a Llama checkpoint uses. */
export const SAFETENSORS_DTYPES: Readonly<Record<string, WeightDtype>> = {
  F32: "f32",
  BF16: "bf16",
  F16: "f16",
};

/** Our name -> safetensors dtype string. */
export function safetensorsDtypeName(dtype: WeightDtype): string {
  switch (dtype) {
    case "f32":
      return "F32";
    case "bf16":
      return "BF16";
    case "f16":
      return "F16";
  }
}

export function dtypeBytes(dtype: WeightDtype): number {
  return dtype === "f32" ? 4 : 2;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f32ToBits(x: number): number {
  f32[0] = x;
  return u32[0];
}

export function bitsToF32(bits: number): number {
  u32[0] = bits >>> 0;
  return f32[0];
}

export function bf16ToF32(h: number): number {
  return bitsToF32((h & 0xffff) << 16);
}

/** Bits of an f32 (as uint32) -> bf16 bits, round to nearest even. */
export function f32BitsToBf16(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  const lsb = (bits >>> 16) & 1;
  return ((bits + 0x7fff + lsb) >>> 16) & 0xffff;
}

export function f32ToBf16(x: number): number {
  return f32BitsToBf16(f32ToBits(x));
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24;
  if (exp === 0x1f) {
    if (man === 0) return sign * Number.POSITIVE_INFINITY;
    // Keep the payload: f16 quiet bit 0x200 lands on f32's 0x400000.
    return bitsToF32(((h & 0x8000) << 16) | 0x7f800000 | (man << 13));
  }
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

/** Bits of an f32 (as uint32) -> f16 bits, round to nearest even. */
export function f32BitsToF16(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const abs = bits & 0x7fffffff;
  if (abs > 0x7f800000) return 0x7e00;
  if (abs >= 0x477ff000) return sign | 0x7c00; // >= 65520 rounds to inf (and inf stays inf)
  if (abs >= 0x38800000) {
    // Normal f16: rebias the exponent (127 -> 15) and round 13 mantissa bits away.
    const lsb = (abs >>> 13) & 1;
    return sign | ((abs - 0x38000000 + 0xfff + lsb) >>> 13);
  }
  if (abs < 0x33000000) return sign; // below half the smallest subnormal (2^-25): zero
  // Subnormal f16: value = m * 2^-24 with m = round(abs_value * 2^24).
  const exp = abs >>> 23;
  const man = (abs & 0x7fffff) | 0x800000; // implicit 1
  const shift = 126 - exp; // bits to drop so that the result counts units of 2^-24
  const kept = man >>> shift;
  const rest = man & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  const up = rest > half || (rest === half && (kept & 1) === 1) ? 1 : 0;
  return sign | (kept + up);
}

export function f32ToF16(x: number): number {
  return f32BitsToF16(f32ToBits(x));
}

const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A typed view of `bytes` when aligned (and the host is little-endian), else an aligned copy. */
function aligned(bytes: Uint8Array, align: number): ArrayBuffer {
  if (!littleEndian) throw new Error("assertion failed: big-endian hosts are not supported");
  if (bytes.byteOffset % align === 0 && bytes.buffer instanceof ArrayBuffer) {
    return bytes.buffer;
  }
  return bytes.slice().buffer;
}

function view32(bytes: Uint8Array): Uint32Array {
  const buf = aligned(bytes, 4);
  const off = buf === bytes.buffer ? bytes.byteOffset : 0;
  return new Uint32Array(buf, off, bytes.byteLength / 4);
}

function view16(bytes: Uint8Array): Uint16Array {
  const buf = aligned(bytes, 2);
  const off = buf === bytes.buffer ? bytes.byteOffset : 0;
  return new Uint16Array(buf, off, bytes.byteLength / 2);
}

/**
 * Converts raw little-endian elements of `from` in `bytes` into `out` (f32 values) at `at`.
 * `bytes.byteLength` must be a multiple of the element size.
 */
export function decodeToF32(
  from: WeightDtype,
  bytes: Uint8Array,
  out: Float32Array,
  at: number,
): void {
  if (from === "f32") {
    const src = view32(bytes);
    out.set(new Float32Array(src.buffer, src.byteOffset, src.length), at);
    return;
  }
  const src = view16(bytes);
  const outBits = new Int32Array(out.buffer, out.byteOffset, out.length);
  if (from === "bf16") {
    for (let i = 0; i < src.length; i++) outBits[at + i] = src[i] << 16;
  } else {
    for (let i = 0; i < src.length; i++) out[at + i] = f16ToF32(src[i]);
  }
}

/** Like decodeToF32 but into bf16 or f16 bit patterns. */
export function decodeTo16(
  from: WeightDtype,
  to: "bf16" | "f16",
  bytes: Uint8Array,
  out: Uint16Array,
  at: number,
): void {
  if (from === to) {
    out.set(view16(bytes), at);
    return;
  }
  if (from === "f32") {
    const src = view32(bytes);
    const conv = to === "bf16" ? f32BitsToBf16 : f32BitsToF16;
    for (let i = 0; i < src.length; i++) out[at + i] = conv(src[i]);
    return;
  }
  const src = view16(bytes);
  if (from === "bf16") {
    for (let i = 0; i < src.length; i++) out[at + i] = f32BitsToF16((src[i] << 16) >>> 0);
  } else {
    for (let i = 0; i < src.length; i++) out[at + i] = f32BitsToBf16(f32ToBits(f16ToF32(src[i])));
  }
}

/** Encodes f32 values as little-endian bytes of `to` (used by the writer). */
export function encodeFromF32(values: Float32Array, to: WeightDtype): Uint8Array {
  if (to === "f32") {
    return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  }
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  const conv = to === "bf16" ? f32BitsToBf16 : f32BitsToF16;
  for (let i = 0; i < bits.length; i++) out[i] = conv(bits[i]);
  return new Uint8Array(out.buffer);
}
