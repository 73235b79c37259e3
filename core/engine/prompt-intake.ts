// The prompt as the driver receives it: all at once (an array) or as chunks that arrive while the
// client is still uploading (an async iterable, e.g. the model function's verified frames). Each
// token id is checked once, when it arrives; the tokens so far live in one growing buffer, so
// nothing is copied per chunk of prefill.
//
// Waiting for the next chunk races the AbortSignal: a client that goes away while its upload is
// stalled cancels at once, not when (if ever) the next frame comes.

import { CancelledError, InvalidInputError, LimitError } from "../errors.ts";
import { isTokenId } from "../tokenizer/token-id.ts";

export type PromptSource =
  | Int32Array
  | readonly number[]
  | AsyncIterable<Int32Array | readonly number[]>;

export interface PromptLimits {
  vocabSize: number;
  /** The runtime's positions: the prompt must leave room for one generated token. */
  maxPositions: number;
}

function isWhole(p: PromptSource): p is Int32Array | readonly number[] {
  return p instanceof Int32Array || Array.isArray(p);
}

/** Rejects with CancelledError when `signal` fires first; `p`'s own outcome is then ignored. */
export function raceAbort<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) {
    p.catch(() => {});
    return Promise.reject(new CancelledError());
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      p.catch(() => {});
      reject(new CancelledError());
    };
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

export class PromptIntake {
  /** (capacity) token ids; the first `length` are the prompt so far. */
  #buf: Int32Array;
  #length = 0;
  #ended: boolean;
  readonly #limits: PromptLimits;
  readonly #it: AsyncIterator<Int32Array | readonly number[]> | null;
  /** Called with every chunk once it has been checked (the sampler's prompt penalties). */
  readonly #onTokens: (tokens: Int32Array) => void;

  /**
   * A whole prompt is checked here, so a bad one throws before any work; a streamed one is
   * checked chunk by chunk in pull().
   */
  constructor(
    source: PromptSource,
    limits: PromptLimits,
    onTokens: (tokens: Int32Array) => void = () => {},
  ) {
    this.#limits = limits;
    this.#onTokens = onTokens;
    if (isWhole(source)) {
      this.#buf = new Int32Array(0);
      this.#it = null;
      this.#ended = false;
      this.#append(source);
      this.#end();
    } else {
      this.#buf = new Int32Array(4096);
      this.#it = source[Symbol.asyncIterator]();
      this.#ended = false;
    }
  }

  get length(): number {
    return this.#length;
  }

  /** True once the last chunk has arrived: `length` is the prompt's length. */
  get ended(): boolean {
    return this.#ended;
  }

  /** tokens[start, end) of the prompt so far (a view, valid until the next pull()). */
  view(start = 0, end = this.#length): Int32Array {
    return this.#buf.subarray(start, end);
  }

  at(i: number): number {
    return this.#buf[i];
  }

  /** Waits for the next chunk (or the end). CancelledError when `signal` fires meanwhile. */
  async pull(signal?: AbortSignal): Promise<void> {
    if (this.#ended || !this.#it) return;
    const r = await raceAbort(this.#it.next(), signal);
    if (r.done) this.#end();
    else this.#append(r.value);
  }

  /** Stops a source that has not ended (not awaited: its pending read may never settle). */
  close(): void {
    if (this.#ended || !this.#it?.return) return;
    this.#ended = true;
    this.#it.return().catch(() => {});
  }

  #append(chunk: Int32Array | readonly number[]): void {
    const { vocabSize, maxPositions } = this.#limits;
    const start = this.#length;
    const need = start + chunk.length;
    if (need > this.#buf.length) {
      const grown = new Int32Array(Math.max(need, this.#buf.length * 2));
      grown.set(this.#buf.subarray(0, start));
      this.#buf = grown;
    }
    const buf = this.#buf;
    for (let i = 0; i < chunk.length; i++) {
      buf[start + i] = chunk[i]; // stored as int32, as Int32Array.from would
      const id = buf[start + i];
      if (!isTokenId(id, vocabSize)) {
        throw new InvalidInputError(`prompt token id ${id} is outside [0, ${vocabSize})`);
      }
    }
    this.#length = need;
    if (need >= maxPositions) {
      throw new LimitError(
        `the prompt has ${need}${this.#it ? " or more" : ""} tokens; this runtime's context ` +
          `holds ${maxPositions} including at least one generated token`,
      );
    }
    if (chunk.length > 0) this.#onTokens(this.#buf.subarray(start, need));
  }

  #end(): void {
    this.#ended = true;
    if (this.#length === 0) throw new InvalidInputError("the prompt has no tokens");
  }
}
