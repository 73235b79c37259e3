// The Llama 3 tokenizer: byte-level BPE with the Llama 3 pre-tokenizer, loaded from tokenizer.json
// or from the compiled vocabulary (vocabulary.ts), with exact parity with Hugging Face `tokenizers`.
//
// Control tokens: `encode` never turns text into a special token unless the caller passes
// `allowSpecial: true` (trusted text only). User text that spells "<|eot_id|>" is encoded as the
// ten characters it is. Chat prompts get their control tokens from core/chat, structurally.
//
// Lone UTF-16 surrogates are encoded as U+FFFD (bytes EF BF BD), which is what the reference does
// (JS strings reach Rust as UTF-8 with the same replacement) and what TextEncoder does.

import { InvalidInputError } from "../errors.ts";
import { toHex } from "../hash/hex.ts";
import { BpeModel, IdList } from "./bpe.ts";
import { PieceCache } from "./piece-cache.ts";
import { pretokenEnd, stableLimit } from "./pretokenize.ts";
import { isTokenId } from "./token-id.ts";
import {
  FLAG_ADDED,
  FLAG_SPECIAL,
  parseVocabulary,
  serializeVocabulary,
  type Vocabulary,
  vocabularyFromJson,
} from "./vocabulary.ts";

export interface EncodeOptions {
  /** Match special-token strings ("<|eot_id|>") in the text. Only for trusted text. Default false. */
  allowSpecial?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (<|begin_of_text|>, <|eot_id|>, ...) from the output. Default false. */
  skipSpecialTokens?: boolean;
}

/** Streaming encode: each call returns the ids that no later text can change. */
export interface StreamEncoder {
  /** Append text; returns the ids that are now final (possibly none). */
  push(chunk: string): Int32Array;
  /** End of text: returns the remaining ids. The encoder can be reused afterwards. */
  end(): Int32Array;
  /** UTF-16 code units held back (the unfinished last pre-token): what bounds its memory. */
  readonly buffered: number;
}

/** Streaming decode: text that is safe to emit, never half a UTF-8 character. */
export interface StreamDecoder {
  push(id: number): string;
  /** Flush: an incomplete trailing UTF-8 sequence becomes U+FFFD, as in `decode`. */
  end(): string;
}

export class Tokenizer {
  readonly vocabSize: number;
  /** Id of tokenizer_config.json's bos_token, if any. */
  readonly bosTokenId: number | undefined;
  /** Id of tokenizer_config.json's eos_token (generation_config.json may name more stop ids). */
  readonly eosTokenIds: readonly number[];
  /** tokenizer_config.json's chat_template ("default" entry when it is a list), if any. */
  readonly chatTemplate: string | undefined;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  /** SHA-256 (hex) of the tokenizer.json + tokenizer_config.json it was built from (`sourceBytes`). */
  readonly sourceSha256: string;

  private readonly bpe: BpeModel;
  private readonly cache = new PieceCache();
  private scratch = new Uint8Array(256);
  private readonly word = new IdList();
  /** Added-token content -> id, for `tokenId` and special matching. */
  private readonly added = new Map<string, number>();
  private readonly longestAdded: number;
  private readonly specialPattern: RegExp | undefined; // every added token
  private readonly alwaysPattern: RegExp | undefined; // added tokens that are not special
  private readonly utf8 = new TextDecoder("utf-8", { ignoreBOM: true });

  private constructor(private readonly v: Vocabulary) {
    this.vocabSize = v.size;
    this.bpe = new BpeModel(v);
    const dec = new TextDecoder("utf-8", { ignoreBOM: true });
    const always: string[] = [];
    for (let id = 0; id < v.size; id++) {
      if (!(v.flags[id] & FLAG_ADDED)) continue;
      const content = dec.decode(this.tokenBytes(id));
      this.added.set(content, id);
      if (!(v.flags[id] & FLAG_SPECIAL)) always.push(content);
    }
    this.longestAdded = Math.max(0, ...[...this.added.keys()].map((s) => s.length));
    this.specialPattern = alternation([...this.added.keys()]);
    this.alwaysPattern = alternation(always);
    this.bosToken = v.bosToken || undefined;
    this.eosToken = v.eosToken || undefined;
    this.bosTokenId = v.bosToken ? this.added.get(v.bosToken) : undefined;
    const eos = v.eosToken ? this.added.get(v.eosToken) : undefined;
    this.eosTokenIds = eos === undefined ? [] : [eos];
    this.chatTemplate = v.chatTemplate || undefined;
    this.sourceSha256 = toHex(v.sourceSha256);
  }

  /** Build from tokenizer.json text (and tokenizer_config.json text for bos/eos/chat template). */
  static fromJson(tokenizerJson: string, tokenizerConfigJson?: string): Tokenizer {
    return new Tokenizer(vocabularyFromJson(tokenizerJson, tokenizerConfigJson));
  }

  /**
   * Load a file made by `compile()`. No JSON parsing; the arrays alias `bytes`. `verify: false`
   * skips the per-entry range checks (see parseVocabulary): only for a file that ships with the code
   * and was verified when it was built.
   */
  static fromCompiled(bytes: Uint8Array, opts?: { verify?: boolean }): Tokenizer {
    return new Tokenizer(parseVocabulary(bytes, opts?.verify ?? true));
  }

  /** The compiled vocabulary (binary); see core/tokenizer/vocabulary.ts for the layout. */
  compile(): Uint8Array {
    return serializeVocabulary(this.v);
  }

  isSpecial(id: number): boolean {
    return isTokenId(id, this.vocabSize) && (this.v.flags[id] & FLAG_SPECIAL) !== 0;
  }

  /** Id of an added token's content ("<|eot_id|>") or of the model token whose text is `str`. */
  tokenId(str: string): number | undefined {
    const added = this.added.get(str);
    if (added !== undefined) return added;
    const n = this.toUtf8(str, 0, str.length);
    const id = n > 0 ? this.bpe.lookupIn(this.scratch, 0, n) : -1;
    return id >= 0 ? id : undefined;
  }

  /** Every added token's content -> id (for Llama 3: the 256 special tokens). */
  get addedTokens(): ReadonlyMap<string, number> {
    return this.added;
  }

  /** Raw bytes of one token (a view; do not modify). */
  tokenBytes(id: number): Uint8Array {
    const { tokenOffsets, tokenBytes } = this.v;
    return tokenBytes.subarray(tokenOffsets[id], tokenOffsets[id + 1]);
  }

  encode(text: string, opts?: EncodeOptions): Int32Array {
    const out = new IdList();
    this.encodeText(text, text.length, true, opts?.allowSpecial === true, out);
    return out.take();
  }

  decode(ids: ArrayLike<number>, opts?: DecodeOptions): string {
    const skip = opts?.skipSpecialTokens === true;
    const { tokenOffsets, tokenBytes } = this.v;
    let total = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = this.checkId(ids[i]);
      if (!(skip && this.isSpecial(id))) total += tokenOffsets[id + 1] - tokenOffsets[id];
    }
    const bytes = new Uint8Array(total);
    let at = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (skip && this.isSpecial(id)) continue;
      bytes.set(tokenBytes.subarray(tokenOffsets[id], tokenOffsets[id + 1]), at);
      at += tokenOffsets[id + 1] - tokenOffsets[id];
    }
    return this.utf8.decode(bytes);
  }

  createEncoder(opts?: EncodeOptions): StreamEncoder {
    const allowSpecial = opts?.allowSpecial === true;
    let carry = "";
    // When a large unfinished pre-token is held (a megabyte of one letter, or of spaces), rescanning
    // it on every small push would be quadratic; instead wait until the buffer has doubled. Ids are
    // never late by more than the text already held, and total scanning stays linear.
    let scanAt = 0;
    const out = new IdList();
    return {
      get buffered() {
        return carry.length;
      },
      push: (chunk: string) => {
        const text = carry + chunk;
        if (text.length < scanAt) {
          carry = text;
          return new Int32Array(0);
        }
        // A chunk may end between the two halves of a surrogate pair: hold the high half back.
        const last = text.charCodeAt(text.length - 1);
        const end = last >= 0xd800 && last <= 0xdbff ? text.length - 1 : text.length;
        out.length = 0;
        const done = this.encodeText(text, end, false, allowSpecial, out);
        carry = text.slice(done);
        scanAt = carry.length > 65536 ? 2 * carry.length : 0;
        return out.take();
      },
      end: () => {
        out.length = 0;
        this.encodeText(carry, carry.length, true, allowSpecial, out);
        carry = "";
        scanAt = 0;
        return out.take();
      },
    };
  }

  createDecoder(opts?: DecodeOptions): StreamDecoder {
    const skip = opts?.skipSpecialTokens === true;
    const dec = new TextDecoder("utf-8", { ignoreBOM: true });
    return {
      push: (id: number) => {
        this.checkId(id);
        if (skip && this.isSpecial(id)) return "";
        return dec.decode(this.tokenBytes(id), { stream: true });
      },
      end: () => dec.decode(),
    };
  }

  private checkId(id: number): number {
    if (!isTokenId(id, this.vocabSize)) {
      throw new InvalidInputError(
        `token id ${id} is outside the vocabulary [0, ${this.vocabSize})`,
      );
    }
    return id;
  }

  /**
   * Encode text[0, end) into `out`. With `final` false, stop where later text could still change the
   * ids (a partial pre-token or a partial special token) and return that index; else return end.
   */
  private encodeText(
    text: string,
    end: number,
    final: boolean,
    allowSpecial: boolean,
    out: IdList,
  ): number {
    const pattern = allowSpecial ? this.specialPattern : this.alwaysPattern;
    let pos = 0;
    if (pattern) {
      pattern.lastIndex = 0;
      for (let m = pattern.exec(text); m && m.index + m[0].length <= end; m = pattern.exec(text)) {
        this.encodeRange(text, pos, m.index, out);
        out.push(this.added.get(m[0])!);
        pos = m.index + m[0].length;
      }
    }
    if (final) {
      this.encodeRange(text, pos, end, out);
      return end;
    }
    let limit = Math.max(pos, stableLimit(text, end));
    if (pattern) limit = Math.min(limit, this.partialSpecialStart(text, pos, end, allowSpecial));
    let i = pos;
    while (i < limit) {
      const e = pretokenEnd(text, i, end);
      if (e > limit) break;
      this.encodePiece(text, i, e, out);
      i = e;
    }
    return i;
  }

  /** Earliest index in [pos, end) from which the rest of the text is a proper prefix of an added token. */
  private partialSpecialStart(
    text: string,
    pos: number,
    end: number,
    allowSpecial: boolean,
  ): number {
    // Only the last (longest added token - 1) characters can start an unfinished one.
    for (let k = Math.max(pos, end - this.longestAdded + 1); k < end; k++) {
      const tail = text.slice(k, end);
      for (const [content, id] of this.added) {
        if (!allowSpecial && this.isSpecial(id)) continue;
        if (content.length > tail.length && content.startsWith(tail)) return k;
      }
    }
    return end;
  }

  private encodeRange(text: string, start: number, end: number, out: IdList): void {
    let i = start;
    while (i < end) {
      const e = pretokenEnd(text, i, end);
      this.encodePiece(text, i, e, out);
      i = e;
    }
  }

  private encodePiece(text: string, start: number, end: number, out: IdList): void {
    if (end - start === 1) {
      const c = text.charCodeAt(start);
      if (c < 0x80) {
        out.push(this.bpe.byteIds[c]);
        return;
      }
    }
    const cache = this.cache;
    const h = PieceCache.hash(text, start, end);
    const slot = cache.find(text, start, end, h);
    if (slot >= 0) {
      const at = cache.idStartOf(slot);
      const count = cache.idCountOf(slot);
      if (count === 1) out.push(cache.ids[at]);
      else out.pushAll(cache.ids.subarray(at, at + count));
      return;
    }
    const n = this.toUtf8(text, start, end);
    const word = this.word;
    word.length = 0;
    this.bpe.encodeWord(this.scratch, n, word);
    cache.insert(text, start, end, h, word.ids, word.length);
    out.pushAll(word.ids.subarray(0, word.length));
  }

  /** UTF-8 of text[start, end) into this.scratch (lone surrogates as U+FFFD); returns the length. */
  private toUtf8(text: string, start: number, end: number): number {
    if (this.scratch.length < (end - start) * 3)
      this.scratch = new Uint8Array((end - start) * 3 + 64);
    const b = this.scratch;
    let n = 0;
    for (let i = start; i < end; i++) {
      let c = text.charCodeAt(i);
      if (c < 0x80) {
        b[n++] = c;
        continue;
      }
      if (c < 0x800) {
        b[n++] = 0xc0 | (c >> 6);
        b[n++] = 0x80 | (c & 63);
        continue;
      }
      if (c >= 0xd800 && c <= 0xdfff) {
        const d = i + 1 < end ? text.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
          const cp = ((c - 0xd800) << 10) + (d - 0xdc00) + 0x10000;
          b[n++] = 0xf0 | (cp >> 18);
          b[n++] = 0x80 | ((cp >> 12) & 63);
          b[n++] = 0x80 | ((cp >> 6) & 63);
          b[n++] = 0x80 | (cp & 63);
          i++;
          continue;
        }
        c = 0xfffd;
      }
      b[n++] = 0xe0 | (c >> 12);
      b[n++] = 0x80 | ((c >> 6) & 63);
      b[n++] = 0x80 | (c & 63);
    }
    return n;
  }
}

/** A global RegExp matching any of `strings`, longest first (leftmost-longest, as the reference). */
function alternation(strings: string[]): RegExp | undefined {
  if (strings.length === 0) return undefined;
  const sorted = [...strings].sort((a, b) => b.length - a.length);
  return new RegExp(sorted.map((s) => s.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&")).join("|"), "gu");
}
