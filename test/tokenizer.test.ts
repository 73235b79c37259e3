// Parity of core/tokenizer with the reference (Hugging Face `tokenizers`) on the whole corpus,
// the compiled vocabulary, decode, and the control-token firewall.
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { FormatError, InvalidInputError } from "../core/errors.ts";
import { DirectoryModelFiles } from "../core/node/model-files.ts";
import { Tokenizer } from "../core/tokenizer/index.ts";
import { COMPILED_TOKENIZER_FILE, loadTokenizer } from "../core/tokenizer/load.ts";
import { isTokenId } from "../core/tokenizer/token-id.ts";
import { CLASS_LETTER, CLASS_NUMBER, classOf } from "../core/tokenizer/unicode-classes.ts";
import { corpus, rng } from "./fixtures/tokenizer/corpus.ts";
import {
  LLAMA3_DIR,
  loadReference,
  referenceIds,
  root,
  tokenizerConfigJson,
  tokenizerJson,
  withoutSpecials,
} from "./fixtures/tokenizer/reference.ts";

const ref = loadReference();
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
let tok: Tokenizer;
beforeAll(() => {
  tok = Tokenizer.fromJson(tokenizerJson(), tokenizerConfigJson());
});

function firstDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

async function expectParity(docs: string[]): Promise<void> {
  const expected = await referenceIds(ref, docs);
  const bad: string[] = [];
  docs.forEach((doc, i) => {
    const at = firstDifference(tok.encode(doc), expected[i]);
    if (at >= 0) bad.push(`doc ${i} ${JSON.stringify(doc.slice(0, 60))} differs at token ${at}`);
  });
  expect(bad.slice(0, 5)).toEqual([]);
  expect(bad.length).toBe(0);
}

describe("Llama 3 tokenizer parity with Hugging Face tokenizers", () => {
  it("loads the Llama 3.1 vocabulary", () => {
    expect(tok.vocabSize).toBe(128256);
    expect(tok.bosTokenId).toBe(128000);
    expect(tok.eosTokenIds).toEqual([128009]);
    expect(tok.tokenId("<|eot_id|>")).toBe(128009);
    expect(tok.tokenId("Hello")).toBe(ref.tokenToId("Hello"));
    expect(tok.isSpecial(128009)).toBe(true);
    expect(tok.isSpecial(9906)).toBe(false);
  });

  it("matches on every corpus document (committed texts, edge cases, CLDR words, random text, files)", async () => {
    const docs = corpus({ root, seed: 7, randomDocs: 1500, fileBytes: 1_500_000 }).map(
      withoutSpecials,
    );
    expect(docs.reduce((n, d) => n + d.length, 0)).toBeGreaterThan(1_500_000);
    await expectParity(docs);
  });

  it("matches where this JS engine's Unicode tables disagree with the reference's", async () => {
    // Code points the runtime calls \p{L} or \p{N} that the pinned tables do not (or vice versa):
    // newly assigned characters. Each is put between letters, digits and spaces.
    const letter = /^\p{L}$/u;
    const number = /^\p{N}$/u;
    const odd: string[] = [];
    for (let cp = 0x80; cp < 0x110000; cp++) {
      if (cp >= 0xd800 && cp <= 0xdfff) continue;
      const s = String.fromCodePoint(cp);
      const k = classOf(cp);
      if (letter.test(s) !== (k === CLASS_LETTER) || number.test(s) !== (k === CLASS_NUMBER))
        odd.push(s);
    }
    const docs = odd.map((s, i) => `a${s}b 1${s}2 ${s}${s} .${s}x${i}`);
    docs.push(odd.join(""), odd.join(" "));
    await expectParity(docs);
  });

  it("matches on long words that take the heap merge path", async () => {
    const next = rng(3);
    const docs: string[] = [];
    for (let i = 0; i < 30; i++) {
      const alphabet = ["ab", "abc", "xyzq", "ſtr", "ééaà", "ab1", "=-"][i % 7];
      let s = "";
      const n = 257 + Math.floor(next() * 3000);
      while (s.length < n) s += alphabet[Math.floor(next() * alphabet.length)];
      docs.push(s);
    }
    await expectParity(docs);
  });

  it("decodes exactly like the reference, including ids that split UTF-8 characters", async () => {
    const next = rng(11);
    const texts = corpus({ root, seed: 5, randomDocs: 200 }).map(withoutSpecials);
    for (const text of texts) {
      const ids = tok.encode(text);
      expect(tok.decode(ids)).toBe(await ref.decode(Array.from(ids), false));
      // A random slice can cut a character's bytes at either end: both sides use U+FFFD the same way.
      const a = Math.floor(next() * ids.length);
      const slice = Array.from(ids.subarray(a, a + 1 + Math.floor(next() * 6)));
      expect(tok.decode(slice)).toBe(await ref.decode(slice, false));
    }
    const random = Array.from({ length: 300 }, () => Math.floor(next() * 128256));
    expect(tok.decode(random)).toBe(await ref.decode(random, false));
    expect(tok.decode(random, { skipSpecialTokens: true })).toBe(await ref.decode(random, true));
    expect(tok.decode([128000, 9906, 128009])).toBe("<|begin_of_text|>Hello<|eot_id|>");
    expect(tok.decode([128000, 9906, 128009], { skipSpecialTokens: true })).toBe("Hello");
    expect(() => tok.decode([128256])).toThrow(InvalidInputError);
    expect(() => tok.decode([-1])).toThrow(InvalidInputError);
  });

  it("keeps a leading U+FEFF and lone surrogates follow the reference (U+FFFD)", async () => {
    for (const s of ["\ufeffhello", "a\ud800b", "\udc00", "x\ud83d"]) {
      const ids = tok.encode(s);
      expect(Array.from(ids)).toEqual((await referenceIds(ref, [s]))[0]);
      expect(tok.decode(ids)).toBe(s.replace(LONE_SURROGATE, "\ufffd"));
    }
    expect(tok.decode(tok.encode("a\ud800b"))).toBe("a\ufffdb");
    expect(tok.decode(tok.encode("\ufeffhello"))).toBe("\ufeffhello");
  });
});

describe("control-token firewall", () => {
  it("never turns special-token text into a control token unless allowSpecial is set", async () => {
    const specials: string[] = [];
    for (let id = 128000; id < 128256; id++) specials.push(tok.decode([id]));
    const text = `Hi ${specials.join(" x")} <|eot_id|><|eot_id|>`;
    const ids = tok.encode(text);
    expect(ids.some((id) => tok.isSpecial(id))).toBe(false);
    expect(tok.decode(ids)).toBe(text);
    // What the ids are: the text of each special token as ordinary tokens.
    expect(Array.from(tok.encode("<|eot_id|>"))).toEqual([27, 91, 68, 354, 851, 91, 29]);
    // Trusted mode matches them, exactly as the reference does.
    const trusted = tok.encode(text, { allowSpecial: true });
    expect(Array.from(trusted)).toEqual((await referenceIds(ref, [text]))[0]);
    expect(trusted.filter((id) => id === 128009).length).toBe(3);
  });
});

describe("compiled vocabulary", () => {
  it("round-trips: a compiled tokenizer encodes and decodes like the JSON-built one", () => {
    const bytes = tok.compile();
    const fast = Tokenizer.fromCompiled(bytes);
    expect(fast.sourceSha256).toBe(tok.sourceSha256);
    expect(fast.chatTemplate).toBe(tok.chatTemplate);
    expect(fast.vocabSize).toBe(tok.vocabSize);
    for (let id = 0; id < tok.vocabSize; id += 1) {
      if (fast.isSpecial(id) !== tok.isSpecial(id)) throw new Error(`special flag of ${id}`);
    }
    for (const doc of corpus({ root, seed: 9, randomDocs: 300 })) {
      expect(Array.from(fast.encode(doc, { allowSpecial: true }))).toEqual(
        Array.from(tok.encode(doc, { allowSpecial: true })),
      );
    }
    const ids = Array.from({ length: tok.vocabSize }, (_, i) => i);
    expect(fast.decode(ids)).toBe(tok.decode(ids));
    // An unaligned copy loads too (copied once).
    const shifted = new Uint8Array(bytes.length + 1);
    shifted.set(bytes, 1);
    expect(Array.from(Tokenizer.fromCompiled(shifted.subarray(1)).encode("unaligned ok"))).toEqual(
      Array.from(tok.encode("unaligned ok")),
    );
  });

  it("refuses truncated, foreign or corrupted files with FormatError", () => {
    const bytes = tok.compile();
    expect(() => Tokenizer.fromCompiled(bytes.subarray(0, bytes.length - 4))).toThrow(FormatError);
    expect(() => Tokenizer.fromCompiled(new TextEncoder().encode('{"not": "binary"}'))).toThrow(
      FormatError,
    );
    const bad = bytes.slice();
    bad[8] = 99; // format version
    expect(() => Tokenizer.fromCompiled(bad)).toThrow(FormatError);
    // A damaged merge id (the first merge's left id set to 2^31 - 1) is caught by verification;
    // `verify: false` (for a bundle verified at build time) skips exactly those checks.
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const [size, bytesLength, vocabTableSize] = [1, 2, 3].map((i) => dv.getUint32(8 + i * 4, true));
    const pad = (n: number) => (n + 3) & ~3;
    const mergeLeftAt =
      88 + pad((size + 1) * 4) + pad(bytesLength) + pad(size) + vocabTableSize * 4;
    const damaged = bytes.slice();
    new DataView(damaged.buffer).setInt32(mergeLeftAt, 0x7fffffff, true);
    expect(() => Tokenizer.fromCompiled(damaged)).toThrow(/merge id range/);
    expect(
      Tokenizer.fromCompiled(bytes, { verify: false }).encode("trusted").length,
    ).toBeGreaterThan(0);
    const table = bytes.slice();
    new DataView(table.buffer).setInt32(mergeLeftAt - 4, -5, true); // last vocabulary table slot
    expect(() => Tokenizer.fromCompiled(table)).toThrow(/vocabulary table/);
    expect(() => Tokenizer.fromJson("{}")).toThrow(FormatError);
    expect(() => Tokenizer.fromJson("not json")).toThrow(FormatError);
  });

  it("loadTokenizer uses a compiled file only when its hash matches the directory's tokenizer files", async () => {
    const dir = mkdtempSync(join(tmpdir(), "ultralong-tok-"));
    try {
      copyFileSync(`${LLAMA3_DIR}/tokenizer.json`, join(dir, "tokenizer.json"));
      copyFileSync(`${LLAMA3_DIR}/tokenizer_config.json`, join(dir, "tokenizer_config.json"));
      const files = new DirectoryModelFiles(dir);
      // A matching compiled file is used as is.
      writeFileSync(join(dir, COMPILED_TOKENIZER_FILE), tok.compile());
      const fromBin = await loadTokenizer(files);
      expect(fromBin.sourceSha256).toBe(tok.sourceSha256);
      expect(Array.from(fromBin.encode("hello world"))).toEqual([15339, 1917]);
      // Once the source files change (here: another chat template), it is stale and ignored.
      const template = "{{ 'changed' }}";
      writeFileSync(
        join(dir, "tokenizer_config.json"),
        JSON.stringify({ chat_template: template }),
      );
      const rebuilt = await loadTokenizer(files);
      expect(rebuilt.chatTemplate).toBe(template);
      expect(rebuilt.sourceSha256).not.toBe(tok.sourceSha256);
      // With no tokenizer.json, a compiled file is all there is.
      rmSync(join(dir, "tokenizer.json"));
      expect((await loadTokenizer(files)).vocabSize).toBe(128256);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("token-id range check", () => {
  it("isTokenId takes integers in [0, vocabSize) and nothing else", () => {
    expect([0, 1, 127].map((id) => isTokenId(id, 128))).toEqual([true, true, true]);
    const bad = [-1, 128, 1.5, Number.NaN, Number.POSITIVE_INFINITY, "3", null, undefined];
    expect(bad.map((id) => isTokenId(id, 128))).toEqual(bad.map(() => false));
  });
});
