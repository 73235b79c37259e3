// The edge-to-model request body: a stream of authenticated frames, so the model function can
// start prefill on the first tokens while the rest of a long prompt is still being tokenized or
// uploaded.
//
// Frame: [type u8][length u32 LE][payload: length bytes][tag: 32 bytes]
//   tag_i = HMAC-SHA256(secret, tag_{i-1} || type || length || payload), tag_{-1} = the request
//   signature (signing.ts). Chaining binds every frame to its request and its position, so frames
//   cannot be dropped, reordered, replayed from another request, or truncated (END is required).
// Order: exactly one HEADER (JSON, first), any number of TOKENS, exactly one END (last).
//   HEADER  UTF-8 JSON: GenerateHeader (header.ts)
//   TOKENS  token IDs, int32 LE, (n,)
//   END     u32 LE total prompt tokens sent (a check against lost frames)

import { InvalidInputError } from "../errors.ts";
import { bytesEqual } from "../hash/hex.ts";
import { hmac, SignatureError } from "./signing.ts";

/** The model function's route and body type for a framed generate request. */
export const GENERATE_PATH = "/v1/generate";
export const FRAMES_CONTENT_TYPE = "application/x-ultralong-frames";

export const FRAME_HEADER = 1;
export const FRAME_TOKENS = 2;
export const FRAME_END = 3;

const PREFIX_BYTES = 5;
const TAG_BYTES = 32;
/** Largest payload accepted: 1 MiB (262,144 token IDs). Writers split bigger arrays. */
export const MAX_FRAME_PAYLOAD = 1 << 20;
const MAX_TOKENS_PER_FRAME = MAX_FRAME_PAYLOAD / 4;

export type Frame =
  | { type: typeof FRAME_HEADER; json: unknown }
  | { type: typeof FRAME_TOKENS; tokens: Int32Array }
  | { type: typeof FRAME_END; total: number };

async function encodeFrame(
  key: CryptoKey,
  prevTag: Uint8Array,
  type: number,
  payload: Uint8Array,
): Promise<{ bytes: Uint8Array; tag: Uint8Array }> {
  const prefix = new Uint8Array(PREFIX_BYTES);
  prefix[0] = type;
  new DataView(prefix.buffer).setUint32(1, payload.length, true);
  const tag = await hmac(key, prevTag, prefix, payload);
  const bytes = new Uint8Array(PREFIX_BYTES + payload.length + TAG_BYTES);
  bytes.set(prefix, 0);
  bytes.set(payload, PREFIX_BYTES);
  bytes.set(tag, PREFIX_BYTES + payload.length);
  return { bytes, tag };
}

function tokenBytes(tokens: Int32Array): Uint8Array {
  const out = new Uint8Array(tokens.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < tokens.length; i++) view.setInt32(i * 4, tokens[i], true);
  return out;
}

/**
 * The framed body for one request: HEADER, then TOKENS as `prompt` yields them, then END. Pulled
 * by the fetch that sends it, so a slow model function slows the producer (backpressure).
 */
export function frameStream(
  key: CryptoKey,
  signature: Uint8Array,
  header: unknown,
  prompt: AsyncIterable<Int32Array> | Iterable<Int32Array>,
): ReadableStream<Uint8Array> {
  let tag = signature;
  let total = 0;
  let iterator: AsyncIterator<Int32Array> | Iterator<Int32Array> | null = null;
  let pending: Int32Array | null = null;
  let done = false;
  const emit = async (type: number, payload: Uint8Array) => {
    const frame = await encodeFrame(key, tag, type, payload);
    tag = frame.tag;
    return frame.bytes;
  };
  return new ReadableStream<Uint8Array>({
    async start(controller) {
      controller.enqueue(
        await emit(FRAME_HEADER, new TextEncoder().encode(JSON.stringify(header))),
      );
      iterator =
        Symbol.asyncIterator in prompt
          ? (prompt as AsyncIterable<Int32Array>)[Symbol.asyncIterator]()
          : (prompt as Iterable<Int32Array>)[Symbol.iterator]();
    },
    async pull(controller) {
      if (done) return;
      for (;;) {
        if (pending && pending.length > 0) {
          const part = pending.subarray(0, MAX_TOKENS_PER_FRAME);
          pending = pending.subarray(part.length);
          total += part.length;
          controller.enqueue(await emit(FRAME_TOKENS, tokenBytes(part)));
          return;
        }
        const next = await iterator!.next();
        if (next.done) {
          const end = new Uint8Array(4);
          new DataView(end.buffer).setUint32(0, total, true);
          controller.enqueue(await emit(FRAME_END, end));
          done = true;
          controller.close();
          return;
        }
        pending = next.value;
      }
    },
    async cancel(reason) {
      done = true;
      await iterator?.return?.(reason);
    },
  });
}

/** Growable byte queue for parsing frames out of arbitrary body chunks. */
class ByteQueue {
  #buf = new Uint8Array(0);
  #start = 0;
  #end = 0;
  get length(): number {
    return this.#end - this.#start;
  }
  push(chunk: Uint8Array): void {
    if (this.#end + chunk.length > this.#buf.length) {
      const live = this.length;
      if (live + chunk.length <= this.#buf.length) {
        this.#buf.copyWithin(0, this.#start, this.#end);
      } else {
        const next = new Uint8Array(Math.max(live + chunk.length, this.#buf.length * 2, 4096));
        next.set(this.#buf.subarray(this.#start, this.#end), 0);
        this.#buf = next;
      }
      this.#start = 0;
      this.#end = live;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }
  peek(n: number): Uint8Array {
    return this.#buf.subarray(this.#start, this.#start + n);
  }
  take(n: number): Uint8Array {
    const out = this.#buf.slice(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }
}

/**
 * Reads and verifies frames from a request body. Throws SignatureError on a bad tag and
 * InvalidInputError on bad framing (wrong order, oversized frame, truncated body, count mismatch).
 */
export async function* readFrames(
  body: ReadableStream<Uint8Array>,
  key: CryptoKey,
  signature: Uint8Array,
): AsyncGenerator<Frame> {
  const reader = body.getReader();
  const queue = new ByteQueue();
  let tag = signature;
  let index = 0;
  let total = 0;
  let ended = false;
  try {
    for (;;) {
      if (queue.length >= PREFIX_BYTES) {
        const prefix = queue.peek(PREFIX_BYTES);
        const type = prefix[0];
        const length = new DataView(prefix.buffer, prefix.byteOffset, PREFIX_BYTES).getUint32(
          1,
          true,
        );
        if (length > MAX_FRAME_PAYLOAD) {
          throw new InvalidInputError(
            `frame ${index} is ${length} bytes (limit ${MAX_FRAME_PAYLOAD})`,
          );
        }
        if (queue.length >= PREFIX_BYTES + length + TAG_BYTES) {
          const head = queue.take(PREFIX_BYTES);
          const payload = queue.take(length);
          const got = queue.take(TAG_BYTES);
          const want = await hmac(key, tag, head, payload);
          if (!bytesEqual(want, got)) throw new SignatureError(`frame ${index} has a bad tag`);
          tag = want;
          if (ended) throw new InvalidInputError("frame after END");
          if (index === 0 && type !== FRAME_HEADER)
            throw new InvalidInputError("first frame is not HEADER");
          if (type === FRAME_HEADER) {
            if (index !== 0) throw new InvalidInputError("second HEADER frame");
            let json: unknown;
            try {
              json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload));
            } catch (err) {
              throw new InvalidInputError("HEADER frame is not UTF-8 JSON", { cause: err });
            }
            yield { type: FRAME_HEADER, json };
          } else if (type === FRAME_TOKENS) {
            if (length % 4 !== 0)
              throw new InvalidInputError("TOKENS frame length is not a multiple of 4");
            const tokens = new Int32Array(length / 4);
            const view = new DataView(payload.buffer, payload.byteOffset, length);
            for (let i = 0; i < tokens.length; i++) tokens[i] = view.getInt32(i * 4, true);
            total += tokens.length;
            yield { type: FRAME_TOKENS, tokens };
          } else if (type === FRAME_END) {
            if (length !== 4) throw new InvalidInputError("END frame is not 4 bytes");
            const sent = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true);
            if (sent !== total)
              throw new InvalidInputError(`END says ${sent} tokens, got ${total}`);
            ended = true;
            yield { type: FRAME_END, total };
          } else {
            throw new InvalidInputError(`unknown frame type ${type}`);
          }
          index++;
          continue;
        }
      }
      const { value, done } = await reader.read();
      if (done) break;
      queue.push(value);
    }
    if (!ended || queue.length !== 0)
      throw new InvalidInputError("request body ended before END frame");
  } finally {
    // An abandoned or failed read stops the upload rather than buffering the rest of it.
    if (!ended) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
