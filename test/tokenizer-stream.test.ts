// Streaming encode and decode: property tests against whole-text encode/decode on random chunk
// boundaries (including inside surrogate pairs, CRLF, whitespace runs and special tokens).
import { beforeAll, describe, expect, it } from "vitest";
import { Tokenizer } from "../core/tokenizer/index.ts";
import { corpus, randomText, rng } from "./fixtures/tokenizer/corpus.ts";
import { root, tokenizerConfigJson, tokenizerJson } from "./fixtures/tokenizer/reference.ts";

let tok: Tokenizer;
beforeAll(() => {
  tok = Tokenizer.fromCompiled(
    Tokenizer.fromJson(tokenizerJson(), tokenizerConfigJson()).compile(),
  );
});

function streamEncode(text: string, cuts: number[], allowSpecial = false): number[] {
  const enc = tok.createEncoder({ allowSpecial });
  const out: number[] = [];
  let at = 0;
  for (const cut of cuts) {
    out.push(...enc.push(text.slice(at, cut)));
    at = cut;
  }
  out.push(...enc.push(text.slice(at)));
  out.push(...enc.end());
  return out;
}

function randomCuts(next: () => number, length: number, maxChunk: number): number[] {
  const cuts: number[] = [];
  for (let at = 0; ; ) {
    at += Math.floor(next() * maxChunk) + (next() < 0.1 ? 0 : 1); // empty chunks too
    if (at >= length) return cuts;
    cuts.push(at);
  }
}

describe("streaming encode equals whole-text encode", () => {
  it("on random chunk boundaries over the corpus", () => {
    const next = rng(21);
    const docs = corpus({ root, seed: 13, randomDocs: 400, fileBytes: 150_000 });
    let checked = 0;
    for (const doc of docs) {
      const whole = Array.from(tok.encode(doc));
      for (const maxChunk of [1, 3, 17, 200]) {
        if (maxChunk === 1 && doc.length > 3000) continue; // one char at a time is O(n) pushes
        const cuts = randomCuts(next, doc.length, maxChunk);
        const streamed = streamEncode(doc, cuts);
        if (streamed.length !== whole.length || streamed.some((id, i) => id !== whole[i])) {
          throw new Error(
            `doc ${JSON.stringify(doc.slice(0, 80))} cuts ${JSON.stringify(cuts.slice(0, 40))}`,
          );
        }
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(1500);
  });

  it("on every single cut point of short tricky texts", () => {
    const texts = [
      "Hello world's  end\r\n\r\n  x",
      "they'll 'LL x'Re '",
      "a  \n  \n  b\t\t c   ",
      "12345 6789 ١٢٣",
      "👨‍👩‍👧‍👦 👍🏽x\ud83d\ude00y",
      "end with high \ud83d",
      "(((\n\n\n)))!!!abc",
    ];
    for (const text of texts) {
      const whole = Array.from(tok.encode(text));
      for (let a = 0; a <= text.length; a++) {
        for (let b = a; b <= text.length; b += 3) {
          expect(streamEncode(text, [a, b])).toEqual(whole);
        }
      }
    }
  });

  it("with special-token matching on, a control token split across chunks is still one token", () => {
    const text = "Hi<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<|eot_id|x <|eot_id|>";
    const whole = Array.from(tok.encode(text, { allowSpecial: true }));
    expect(whole.filter((id) => id === 128009).length).toBe(2);
    for (let a = 0; a <= text.length; a++) {
      expect(streamEncode(text, [a], true)).toEqual(whole);
      expect(streamEncode(text, [a, a + 5, a + 6], true)).toEqual(whole);
    }
  });

  it("holds back only the unfinished tail, not the document", () => {
    const doc = corpus({ root, seed: 2, randomDocs: 0, fileBytes: 400_000 }).join("\n");
    const enc = tok.createEncoder();
    let most = 0;
    let count = 0;
    for (let at = 0; at < doc.length; at += 1024) {
      count += enc.push(doc.slice(at, at + 1024)).length;
      most = Math.max(most, enc.buffered);
    }
    count += enc.end().length;
    expect(count).toBe(tok.encode(doc).length);
    // Longest pre-token in this text is a few thousand characters at most (long runs of '=' or
    // spaces in files); the buffer never approaches the 400 KB document.
    expect(most).toBeLessThan(20_000);
  });
});

describe("streaming encode of very long pre-tokens", () => {
  it("a 100 KB run of one letter, or of spaces, fed in 100-character chunks, equals encode", () => {
    for (const run of ["a".repeat(100_000), " ".repeat(100_000), "\n ".repeat(50_000)]) {
      const doc = `start ${run}b end`;
      const cuts = Array.from({ length: Math.floor(doc.length / 100) }, (_, i) => (i + 1) * 100);
      expect(streamEncode(doc, cuts)).toEqual(Array.from(tok.encode(doc)));
    }
  });
});

describe("streaming decode", () => {
  it("emits exactly decode(ids), never half a character", () => {
    const next = rng(8);
    const docs = [...corpus({ root, seed: 4, randomDocs: 200 }), randomText(next, 5000)];
    for (const doc of docs) {
      const ids = tok.encode(doc, { allowSpecial: true });
      for (const skipSpecialTokens of [false, true]) {
        const dec = tok.createDecoder({ skipSpecialTokens });
        let text = "";
        for (const id of ids) {
          const piece = dec.push(id);
          // A piece never ends inside a surrogate pair, and (below) the pieces add up to decode().
          if (/[\ud800-\udbff]$/.test(piece)) throw new Error(`half a surrogate pair after ${id}`);
          text += piece;
        }
        text += dec.end();
        expect(text).toBe(tok.decode(ids, { skipSpecialTokens }));
      }
    }
  });

  it("holds bytes of an incomplete character until the rest arrives", () => {
    const ids = Array.from(tok.encode("🫠")); // one emoji, several byte tokens
    expect(ids.length).toBeGreaterThan(1);
    const dec = tok.createDecoder();
    const pieces = ids.map((id) => dec.push(id));
    expect(pieces.slice(0, -1).every((p) => p === "")).toBe(true);
    expect(pieces.at(-1)).toBe("🫠");
    // Ending mid-character yields U+FFFD, as decode does.
    const cut = tok.createDecoder();
    cut.push(ids[0]);
    expect(cut.end()).toBe(tok.decode([ids[0]]));
  });
});
