// The compiled vocabulary: everything encode and decode need, in flat typed arrays that a compiled
// file maps without copying or parsing. Built once from tokenizer.json (+ tokenizer_config.json).
//
// Compiled file layout (little-endian; every section starts on a 4-byte boundary):
//   0   magic "ULTOKv1\0"                     8 bytes
//   8   header: 12 x u32 (see HEADER below)
//   56  sha256 of the source files             32 bytes (see `sourceBytes`; load.ts compares it with
//                                              the model directory's files before trusting a cache)
//   88  tokenOffsets   u32 (size + 1)          byte ranges of each id in tokenBytes
//       tokenBytes     u8  (bytesLength)       raw bytes of every token (added tokens: their content)
//       flags          u8  (size)              bit 0: added token, bit 1: special
//       vocabTable     i32 (vocabTableSize)    open addressing: id + 1 of a model token, 0 = empty
//       mergeLeft      i32 (merges)            merge rank r joins mergeLeft[r] + mergeRight[r]
//       mergeRight     i32 (merges)
//       mergeResult    i32 (merges)            ... into mergeResult[r]
//       mergeTable     i32 (mergeTableSize)    open addressing: rank + 1 keyed by (left, right)
//       strings        u32 length + UTF-8, x3  bos token, eos token, chat template ("" if none)
//
// Performance notes: the two hash tables are stored rather than rebuilt at load, so a cold isolate
// does no hashing (rebuilding them measured about 60 ms CPU on the shared 2-core machine); they are
// 3 MB of the 10 MB file. A Map from token string to id was rejected: 10 MB of JS heap for the
// 128k model tokens alone, before the merges, and a string to build for every lookup.

import { assert, FormatError } from "../errors.ts";
import { sha256Sync } from "../hash/sha256.ts";
import { byteLevelToBytes } from "./byte-level.ts";

export const FLAG_ADDED = 1;
export const FLAG_SPECIAL = 2;

export interface Vocabulary {
  /** Number of ids (model vocabulary plus added tokens, up to the highest id + 1). */
  size: number;
  tokenOffsets: Uint32Array; // (size + 1)
  tokenBytes: Uint8Array; // (tokenOffsets[size])
  flags: Uint8Array; // (size)
  vocabTable: Int32Array; // (power of two)
  mergeLeft: Int32Array; // (merges)
  mergeRight: Int32Array; // (merges)
  mergeResult: Int32Array; // (merges)
  mergeTable: Int32Array; // (power of two)
  /** tokenizer.json's BPE `ignore_merges`: a pre-token that is itself a token is emitted whole. */
  ignoreMerges: boolean;
  bosToken: string;
  eosToken: string;
  chatTemplate: string;
  /** SHA-256 of `sourceBytes(tokenizer.json, tokenizer_config.json)` this was compiled from. */
  sourceSha256: Uint8Array;
}

/** The pre-tokenizer pattern of Llama 3 / 3.1 / 3.2 / 3.3, the only one pretokenize.ts implements. */
export const LLAMA3_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const MAGIC = [0x55, 0x4c, 0x54, 0x4f, 0x4b, 0x76, 0x31, 0x00]; // "ULTOKv1\0"
const HEADER_WORDS = 12;
const SHA_OFFSET = 8 + HEADER_WORDS * 4;
const BODY_OFFSET = SHA_OFFSET + 32;

export function hashBytes(bytes: Uint8Array, start: number, end: number): number {
  let h = 0x811c9dc5;
  for (let i = start; i < end; i++) h = Math.imul(h ^ bytes[i], 0x01000193);
  return h >>> 0;
}

export function hashPair(a: number, b: number): number {
  return (Math.imul(a, 0x9e3779b1) ^ Math.imul(b + 0x7f4a7c15, 0x85ebca77)) >>> 0;
}

/** Id of the model token whose bytes are bytes[start, end) in `vocabTable`, or -1. */
export function lookupToken(
  v: Pick<Vocabulary, "vocabTable" | "tokenOffsets" | "tokenBytes">,
  bytes: Uint8Array,
  start: number,
  end: number,
): number {
  const { vocabTable, tokenOffsets, tokenBytes } = v;
  const mask = vocabTable.length - 1;
  const n = end - start;
  let h = hashBytes(bytes, start, end) & mask;
  for (;;) {
    const e = vocabTable[h];
    if (e === 0) return -1;
    const id = e - 1;
    const off = tokenOffsets[id];
    if (tokenOffsets[id + 1] - off === n) {
      let i = 0;
      while (i < n && tokenBytes[off + i] === bytes[start + i]) i++;
      if (i === n) return id;
    }
    h = (h + 1) & mask;
  }
}

function tableSize(entries: number): number {
  let n = 1024;
  while (n < entries * 2) n *= 2;
  return n;
}

type JsonObject = Record<string, unknown>;

function parseJson(text: string, what: string): JsonObject {
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not an object");
    return v as JsonObject;
  } catch (err) {
    throw new FormatError(`${what} is not a JSON object: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

function checkPreTokenizer(pre: unknown): void {
  const p = pre as JsonObject | null;
  const parts = p?.type === "Sequence" ? (p.pretokenizers as JsonObject[]) : [];
  const split = parts.find((x) => x?.type === "Split") as JsonObject | undefined;
  const byteLevel = parts.find((x) => x?.type === "ByteLevel");
  const pattern = (split?.pattern as JsonObject | undefined)?.Regex;
  if (pattern !== LLAMA3_PATTERN || split?.behavior !== "Isolated" || split?.invert || !byteLevel) {
    throw new FormatError(
      "tokenizer.json: unsupported pre_tokenizer (only the Llama 3 Split + ByteLevel sequence is implemented)",
    );
  }
}

function tokenString(v: unknown): string {
  if (typeof v === "string") return v;
  const content = (v as JsonObject | null)?.content;
  return typeof content === "string" ? content : "";
}

/** Build the vocabulary from tokenizer.json text (and optionally tokenizer_config.json text). */
export function vocabularyFromJson(tokenizerJson: string, configJson?: string): Vocabulary {
  const json = parseJson(tokenizerJson, "tokenizer.json");
  const model = json.model as JsonObject | undefined;
  if (model?.type !== "BPE") throw new FormatError("tokenizer.json: model.type must be BPE");
  if (model.byte_fallback || model.continuing_subword_prefix || model.end_of_word_suffix) {
    throw new FormatError("tokenizer.json: BPE options other than Llama 3's are not supported");
  }
  if (json.normalizer != null)
    throw new FormatError("tokenizer.json: normalizers are not supported");
  checkPreTokenizer(json.pre_tokenizer);
  const vocab = model.vocab as Record<string, number>;
  const rawMerges = model.merges as (string | [string, string])[];
  if (typeof vocab !== "object" || !Array.isArray(rawMerges)) {
    throw new FormatError("tokenizer.json: model.vocab / model.merges missing");
  }
  const added = (Array.isArray(json.added_tokens) ? json.added_tokens : []) as JsonObject[];

  let size = 0;
  // for-in, not Object.entries: 128k [key, value] arrays cost more than the rest of this loop.
  for (const token in vocab) size = Math.max(size, vocab[token] + 1);
  for (const t of added) size = Math.max(size, Number(t.id) + 1);
  const pieces: (Uint8Array | undefined)[] = new Array(size);
  const flags = new Uint8Array(size);
  const modelIds = new Map<string, number>();
  for (const token in vocab) {
    const id = vocab[token];
    const bytes = byteLevelToBytes(token);
    if (!bytes || !Number.isInteger(id) || id < 0) {
      throw new FormatError(
        `tokenizer.json: vocabulary entry ${JSON.stringify(token)} is not byte-level`,
      );
    }
    pieces[id] = bytes;
    modelIds.set(token, id);
  }
  const utf8 = new TextEncoder();
  for (const t of added) {
    const id = Number(t.id);
    const content = String(t.content);
    if (pieces[id] === undefined) pieces[id] = byteLevelToBytes(content) ?? utf8.encode(content);
    flags[id] |= FLAG_ADDED | (t.special ? FLAG_SPECIAL : 0);
  }

  // (size + 1) offsets into the concatenated token bytes; a hole in the id space is empty.
  const tokenOffsets = new Uint32Array(size + 1);
  let total = 0;
  for (let id = 0; id < size; id++) {
    tokenOffsets[id] = total;
    total += pieces[id]?.length ?? 0;
  }
  tokenOffsets[size] = total;
  const tokenBytes = new Uint8Array(total);
  for (let id = 0; id < size; id++) if (pieces[id]) tokenBytes.set(pieces[id]!, tokenOffsets[id]);

  const vocabTable = new Int32Array(tableSize(modelIds.size));
  const vmask = vocabTable.length - 1;
  for (const id of modelIds.values()) {
    let h = hashBytes(tokenBytes, tokenOffsets[id], tokenOffsets[id + 1]) & vmask;
    while (vocabTable[h] !== 0) h = (h + 1) & vmask;
    vocabTable[h] = id + 1;
  }

  const m = rawMerges.length;
  const mergeLeft = new Int32Array(m);
  const mergeRight = new Int32Array(m);
  const mergeResult = new Int32Array(m);
  const mergeTable = new Int32Array(tableSize(m));
  const mmask = mergeTable.length - 1;
  const tables = { vocabTable, tokenOffsets, tokenBytes };
  const joined = new Uint8Array(1024);
  for (let r = 0; r < m; r++) {
    const raw = rawMerges[r];
    const [a, b] = typeof raw === "string" ? splitMerge(raw) : raw;
    const l = modelIds.get(a);
    const rt = modelIds.get(b);
    // The merged token, found by its bytes (cheaper than building and hashing the string a + b).
    let res: number | undefined;
    if (l !== undefined && rt !== undefined) {
      const la = tokenOffsets[l + 1] - tokenOffsets[l];
      const lb = tokenOffsets[rt + 1] - tokenOffsets[rt];
      if (la + lb <= joined.length) {
        joined.set(tokenBytes.subarray(tokenOffsets[l], tokenOffsets[l + 1]), 0);
        joined.set(tokenBytes.subarray(tokenOffsets[rt], tokenOffsets[rt + 1]), la);
        const id = lookupToken(tables, joined, 0, la + lb);
        if (id >= 0) res = id;
      }
    }
    if (l === undefined || rt === undefined || res === undefined) {
      throw new FormatError(
        `tokenizer.json: merge ${r} (${JSON.stringify(raw)}) names an unknown token`,
      );
    }
    let h = hashPair(l, rt) & mmask;
    let duplicate = false;
    while (mergeTable[h] !== 0) {
      const other = mergeTable[h] - 1;
      if (mergeLeft[other] === l && mergeRight[other] === rt) duplicate = true;
      h = (h + 1) & mmask;
    }
    mergeLeft[r] = l;
    mergeRight[r] = rt;
    mergeResult[r] = res;
    // The reference's map keeps the LAST rank of a repeated pair; Llama 3 has none, so a file
    // that has one is refused rather than given a rule nobody tested.
    if (duplicate) throw new FormatError(`tokenizer.json: merge ${r} repeats an earlier pair`);
    mergeTable[h] = r + 1;
  }

  let bosToken = "";
  let eosToken = "";
  let chatTemplate = "";
  if (configJson !== undefined) {
    const config = parseJson(configJson, "tokenizer_config.json");
    bosToken = tokenString(config.bos_token);
    eosToken = tokenString(config.eos_token);
    const tpl = config.chat_template;
    if (typeof tpl === "string") chatTemplate = tpl;
    else if (Array.isArray(tpl)) {
      const def = (tpl as JsonObject[]).find((t) => t?.name === "default");
      if (typeof def?.template === "string") chatTemplate = def.template;
    }
  }
  return {
    size,
    tokenOffsets,
    tokenBytes,
    flags,
    vocabTable,
    mergeLeft,
    mergeRight,
    mergeResult,
    mergeTable,
    ignoreMerges: model.ignore_merges === true,
    bosToken,
    eosToken,
    chatTemplate,
    sourceSha256: sha256Sync(
      sourceBytes(
        utf8.encode(tokenizerJson),
        configJson === undefined ? undefined : utf8.encode(configJson),
      ),
    ),
  };
}

/**
 * What `sourceSha256` hashes: tokenizer.json's bytes, a zero byte, tokenizer_config.json's bytes
 * (nothing when absent). The config is included because the compiled file carries its bos, eos and
 * chat template.
 */
export function sourceBytes(
  tokenizerJson: Uint8Array,
  configJson?: Uint8Array,
): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(tokenizerJson.length + 1 + (configJson?.length ?? 0));
  out.set(tokenizerJson, 0);
  if (configJson) out.set(configJson, tokenizerJson.length + 1);
  return out;
}

function splitMerge(s: string): [string, string] {
  const i = s.indexOf(" ", 1);
  if (i < 0) throw new FormatError(`tokenizer.json: merge ${JSON.stringify(s)} has no space`);
  return [s.slice(0, i), s.slice(i + 1)];
}

const pad4 = (n: number) => (n + 3) & ~3;

/** Every entry in [0, most] and at least one 0 (empty slot). */
function checkTable(t: Int32Array, most: number, what: string, bad: (why: string) => Error): void {
  let empty = 0;
  for (let i = 0; i < t.length; i++) {
    const e = t[i];
    if (e < 0 || e > most) throw bad(`${what} entry out of range`);
    if (e === 0) empty++;
  }
  if (empty === 0) throw bad(`${what} has no empty slot`);
}

/** Serialize to the compiled file layout described at the top of this file. */
export function serializeVocabulary(v: Vocabulary): Uint8Array {
  const enc = new TextEncoder();
  const strings = [v.bosToken, v.eosToken, v.chatTemplate].map((s) => enc.encode(s));
  const sections: Uint8Array[] = [
    u8(v.tokenOffsets),
    v.tokenBytes,
    v.flags,
    u8(v.vocabTable),
    u8(v.mergeLeft),
    u8(v.mergeRight),
    u8(v.mergeResult),
    u8(v.mergeTable),
  ];
  let length = BODY_OFFSET;
  for (const s of sections) length += pad4(s.length);
  for (const s of strings) length += 4 + pad4(s.length);
  const out = new Uint8Array(length);
  const dv = new DataView(out.buffer);
  out.set(MAGIC, 0);
  const header = [
    1, // format version
    v.size,
    v.tokenBytes.length,
    v.vocabTable.length,
    v.mergeLeft.length,
    v.mergeTable.length,
    v.ignoreMerges ? 1 : 0,
    length,
    0,
    0,
    0,
    0,
  ];
  for (let i = 0; i < header.length; i++) dv.setUint32(8 + i * 4, header[i], true);
  out.set(v.sourceSha256, SHA_OFFSET);
  let at = BODY_OFFSET;
  for (const s of sections) {
    out.set(s, at);
    at += pad4(s.length);
  }
  for (const s of strings) {
    dv.setUint32(at, s.length, true);
    out.set(s, at + 4);
    at += 4 + pad4(s.length);
  }
  assert(at === length, "compiled vocabulary length");
  return out;
}

function u8(a: Int32Array | Uint32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Map a compiled file. Views alias `bytes` when it is 4-byte aligned (a fresh ArrayBuffer always is),
 * so loading copies nothing; otherwise it is copied once. Always checked: magic, version, section
 * sizes against the length. With `verify` (the default) also every token offset and merge id, so a
 * damaged file fails with FormatError instead of yielding wrong tokens. Those loops are most of a
 * cold load (about 10-20 ms before the JIT has warmed up), so a caller that ships the file as part
 * of its code (an edge bundle built and verified at deploy time) may skip them.
 */
export function parseVocabulary(input: Uint8Array, verify = true): Vocabulary {
  const bytes = input.byteOffset % 4 === 0 ? input : input.slice();
  const bad = (why: string) => new FormatError(`compiled tokenizer: ${why}`);
  if (bytes.length < BODY_OFFSET || MAGIC.some((m, i) => bytes[i] !== m)) throw bad("bad magic");
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const h = (i: number) => dv.getUint32(8 + i * 4, true);
  const [version, size, bytesLength, vocabTableSize, merges, mergeTableSize, ignore, length] = [
    h(0),
    h(1),
    h(2),
    h(3),
    h(4),
    h(5),
    h(6),
    h(7),
  ];
  if (version !== 1) throw bad(`format version ${version} is not supported`);
  if (length !== bytes.length) throw bad(`length ${bytes.length} != header's ${length}`);
  const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
  if (!pow2(vocabTableSize) || !pow2(mergeTableSize)) throw bad("hash table size");
  let at = BODY_OFFSET;
  const take = (n: number) => {
    const start = at;
    at += pad4(n);
    if (at > bytes.length) throw bad("truncated");
    return bytes.byteOffset + start;
  };
  const buf = bytes.buffer;
  const tokenOffsets = new Uint32Array(buf, take((size + 1) * 4), size + 1);
  const tokenBytes = new Uint8Array(buf, take(bytesLength), bytesLength);
  const flags = new Uint8Array(buf, take(size), size);
  const vocabTable = new Int32Array(buf, take(vocabTableSize * 4), vocabTableSize);
  const mergeLeft = new Int32Array(buf, take(merges * 4), merges);
  const mergeRight = new Int32Array(buf, take(merges * 4), merges);
  const mergeResult = new Int32Array(buf, take(merges * 4), merges);
  const mergeTable = new Int32Array(buf, take(mergeTableSize * 4), mergeTableSize);
  const dec = new TextDecoder();
  const str = () => {
    if (at + 4 > bytes.length) throw bad("truncated");
    const n = dv.getUint32(at, true);
    const start = take(4 + n) + 4;
    return dec.decode(new Uint8Array(buf, start, n));
  };
  const bosToken = str();
  const eosToken = str();
  const chatTemplate = str();
  if (at !== bytes.length) throw bad("trailing bytes");
  if (tokenOffsets[0] !== 0 || tokenOffsets[size] !== bytesLength) throw bad("token offsets");
  if (verify) {
    for (let i = 0; i < size; i++) {
      if (tokenOffsets[i] > tokenOffsets[i + 1]) throw bad("token offsets");
    }
    // The three merge arrays are adjacent: one pass, one unsigned compare per id.
    const ids = new Uint32Array(buf, mergeLeft.byteOffset, 3 * merges);
    let worst = 0;
    for (let i = 0; i < ids.length; i++) if (ids[i] > worst) worst = ids[i];
    if (merges > 0 && worst >= size) throw bad("merge id range");
    // Hash tables: entries in range, and at least one empty slot so every probe loop ends.
    checkTable(vocabTable, size, "vocabulary table", bad);
    checkTable(mergeTable, merges, "merge table", bad);
  }
  return {
    size,
    tokenOffsets,
    tokenBytes,
    flags,
    vocabTable,
    mergeLeft,
    mergeRight,
    mergeResult,
    mergeTable,
    ignoreMerges: ignore === 1,
    bosToken,
    eosToken,
    chatTemplate,
    sourceSha256: bytes.slice(SHA_OFFSET, SHA_OFFSET + 32),
  };
}
