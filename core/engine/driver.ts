// The sequence driver: runs one request on a Runtime, written once for every runtime.
//
//   1. reuse: if the runtime already holds a prefix of the prompt (an earlier request on this
//      driver, same isolation key), truncate to the common prefix instead of recomputing;
//      otherwise, with a PrefixCache, restore the longest stored chain of chunks.
//   2. chunked prefill of the rest, chunks never straddling a snapshot boundary, each finished
//      snapshot chunk handed to the cache; a progress event after every chunk.
//   3. decode: sample, detokenize, check stop conditions (EOS ids, stop token ids, stop strings
//      with holdback, max tokens, context full), stream a token event, forward the token.
//   4. a done event with the finish reason, usage and timings.
//
// It is an async iterator of events, so the CLI and the HTTP model function consume the same
// thing. Breaking out of the loop (or an AbortSignal) stops the work; the driver then still knows
// exactly which tokens the runtime's KV cache holds, so the next request can reuse them.
//
// One generation at a time per driver (the runtime holds one sequence); callers queue.

import { assert, CancelledError, InvalidInputError, LimitError } from "../errors.ts";
import type { LoadedModel } from "../model/weights.ts";
import type { PrefixCache } from "./prefix-cache.ts";
import type { Runtime } from "./runtime.ts";
import { type Rng, Sampler, type SamplingOptions, type TokenLogprob } from "./sampling.ts";
import { StopStringMatcher } from "./stop.ts";

/**
 * Prefill chunk when neither the request nor the runtime (RuntimeInfo.preferredChunkTokens) names
 * one. Chosen by `npm run bench -- prefill-chunk` (docs/driver.md): throughput stops improving
 * beyond it while the per-chunk activation memory and the latency of progress and cancellation
 * keep growing.
 */
export const DEFAULT_CHUNK_TOKENS = 512;

/** Streaming detokenizer; `tokenTextDecoder` adapts core/tokenizer's `createDecoder()`. */
export interface TokenTextDecoder {
  /** The text this token completes ("" while a UTF-8 character is still incomplete). */
  push(id: number): string;
  /** End of stream: whatever is left (an incomplete character becomes U+FFFD). */
  flush(): string;
}

/** core/tokenizer's stream decoder (whose end of stream is `end()`) as a TokenTextDecoder. */
export function tokenTextDecoder(d: { push(id: number): string; end(): string }): TokenTextDecoder {
  return { push: (id) => d.push(id), flush: () => d.end() };
}

export interface GenerateRequest {
  /** Prompt token IDs (BOS included when the model wants one). */
  prompt: Int32Array | readonly number[];
  /** Most tokens to generate; default: until the context is full. */
  maxTokens?: number;
  sampling?: SamplingOptions;
  /** Replaces the seeded RNG (tests, replays). */
  rng?: Rng;
  /** Stop strings, matched on the decoded text; never emitted, not even in part. */
  stop?: readonly string[];
  /** Extra token IDs that end the generation (like EOS; their text is not emitted). */
  stopTokenIds?: readonly number[];
  /** Generate past EOS (benchmarks). */
  ignoreEos?: boolean;
  /** Detokenizer for token text and stop strings; without one, token text is "". */
  decoder?: TokenTextDecoder;
  signal?: AbortSignal;
  /** Snapshot restore and save (tenant-specific: it carries the tenant's salt). */
  prefixCache?: PrefixCache;
  /** Prefill chunk in tokens (default: the runtime's preference, else DEFAULT_CHUNK_TOKENS). */
  chunkTokens?: number;
  /**
   * KV left in the runtime by an earlier request is reused only when both requests carry the same
   * key (the tenant), so one tenant's prompt never speeds up, or times, another's.
   */
  isolationKey?: string;
}

export interface ProgressEvent {
  type: "progress";
  /** Prompt tokens whose KV is in the runtime now (cached ones included). */
  doneTokens: number;
  totalTokens: number;
  /** Prompt tokens that were not computed: reused from the runtime or restored from snapshots. */
  cachedTokens: number;
  /** Computed prompt tokens per second in this request so far (0 before the first chunk). */
  tokensPerSecond: number;
  elapsedMs: number;
}

export interface TokenEvent {
  type: "token";
  id: number;
  /** Text released with this token (may be "" while held back or mid-character). */
  text: string;
  /** Raw logprob of this token, when `sampling.logprobs` was set. */
  logprob?: number;
  /** The `sampling.logprobs` most likely alternatives, when set. */
  top?: TokenLogprob[];
}

export type FinishReason = "stop" | "length";

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
}

export interface Timings {
  prefillMs: number;
  /** Prompt tokens computed (not cached). */
  prefillTokens: number;
  decodeMs: number;
  decodeTokens: number;
}

export interface DoneEvent {
  type: "done";
  finishReason: FinishReason;
  /** What stopped it: the stop string, or the EOS / stop token ID. */
  stop?: string | number;
  usage: Usage;
  timings: Timings;
}

export type DriverEvent = ProgressEvent | TokenEvent | DoneEvent;

export interface DriverOptions {
  /** Token IDs that end a generation; see `eosTokenIds(model)`. */
  eosTokenIds: readonly number[];
  /** Prefill chunk default for this driver (else the runtime's preference, else 512). */
  chunkTokens?: number;
  /** Milliseconds; injectable for tests. */
  clock?: () => number;
}

/** EOS ids from config.json and generation_config.json, deduplicated. */
export function eosTokenIds(model: Pick<LoadedModel, "config" | "generation">): number[] {
  return [...new Set([...model.config.eosTokenIds, ...model.generation.eosTokenIds])];
}

function commonPrefix(a: readonly number[], b: Int32Array): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

function positiveInt(name: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isSafeInteger(v) && v >= 1)) {
    throw new InvalidInputError(`${name} must be a positive integer, got ${v}`);
  }
}

export class SequenceDriver {
  readonly runtime: Runtime;
  readonly #eos: ReadonlySet<number>;
  readonly #chunkTokens: number;
  readonly #clock: () => number;
  /** Token IDs whose KV the runtime holds: always runtime.position long between requests. */
  #held: number[] = [];
  #heldKey: string | undefined;
  #busy = false;

  constructor(runtime: Runtime, options: DriverOptions) {
    positiveInt("chunkTokens", options.chunkTokens);
    this.runtime = runtime;
    this.#eos = new Set(options.eosTokenIds);
    this.#chunkTokens =
      options.chunkTokens ?? runtime.info.preferredChunkTokens ?? DEFAULT_CHUNK_TOKENS;
    this.#clock = options.clock ?? (() => performance.now());
  }

  /** The token IDs whose KV the runtime holds (a copy). */
  get heldTokens(): number[] {
    return this.#held.slice();
  }

  /** Runs one request. Throws InvalidInputError / LimitError before any work for a bad request. */
  generate(request: GenerateRequest): AsyncGenerator<DriverEvent, void, undefined> {
    const prompt = Int32Array.from(request.prompt);
    const rt = this.runtime;
    const vocab = rt.config.vocabSize;
    if (prompt.length === 0) throw new InvalidInputError("the prompt has no tokens");
    for (const id of prompt) {
      if (id < 0 || id >= vocab) {
        throw new InvalidInputError(`prompt token id ${id} is outside [0, ${vocab})`);
      }
    }
    if (prompt.length >= rt.info.maxPositions) {
      throw new LimitError(
        `the prompt has ${prompt.length} tokens; this runtime's context holds ${rt.info.maxPositions} ` +
          "including at least one generated token",
      );
    }
    positiveInt("max_tokens", request.maxTokens);
    positiveInt("chunkTokens", request.chunkTokens);
    if (request.stop?.length && !request.decoder) {
      throw new InvalidInputError("stop strings need a decoder to match against");
    }
    // Validates the sampling options now, before the generator starts.
    const sampler = new Sampler(request.sampling ?? {}, vocab, request.rng);
    sampler.addPrompt(prompt);
    return this.#run(request, prompt, sampler);
  }

  async *#run(
    request: GenerateRequest,
    prompt: Int32Array,
    sampler: Sampler,
  ): AsyncGenerator<DriverEvent, void, undefined> {
    const rt = this.runtime;
    const { signal, prefixCache: cache, decoder } = request;
    const n = prompt.length;
    const maxPositions = rt.info.maxPositions;
    const chunk = request.chunkTokens ?? this.#chunkTokens;
    const clock = this.#clock;
    // The sequence fed to the runtime so far: the prompt, then generated tokens. Whatever happens,
    // the runtime then holds its first runtime.position tokens.
    const sequence: number[] = Array.from(prompt);
    // Checked here, at the first next(), so a generator that is never iterated holds nothing.
    if (this.#busy) throw new Error("assertion failed: one generation at a time per driver");
    this.#busy = true;
    try {
      if (signal?.aborted) throw new CancelledError();
      const started = clock();

      // 1. Reuse what the runtime holds, or restore snapshots.
      if (rt.position !== this.#held.length) this.#held = []; // someone else used the runtime
      let reuse = request.isolationKey === this.#heldKey ? commonPrefix(this.#held, prompt) : 0;
      reuse = Math.min(reuse, n - 1); // the last prompt token is always run: its logits are needed
      this.#held.length = 0; // from here on, `sequence` is the truth
      this.#heldKey = request.isolationKey;
      rt.truncate(Math.min(reuse, rt.position));
      if (cache) {
        // Restoring needs an empty runtime; worth it only if it can cover more than we hold. A
        // held prefix was saved chunk by chunk when it was computed with this cache, so at worst
        // the part of one chunk past the last boundary is recomputed.
        const restorable = Math.floor((n - 1) / cache.chunkTokens) * cache.chunkTokens;
        if (reuse < restorable) {
          rt.truncate(0);
          const { restoredTokens } = await cache.restore(rt, prompt.subarray(0, n - 1), signal);
          assert(rt.position === restoredTokens, "restore left the runtime at restoredTokens");
          assert(restoredTokens % cache.chunkTokens === 0, "restore gave whole chunks");
        }
      }
      const cached = rt.position;
      const prefillStart = clock();
      const progress = (done: number, now: number): ProgressEvent => {
        const seconds = (now - prefillStart) / 1000;
        return {
          type: "progress",
          doneTokens: done,
          totalTokens: n,
          cachedTokens: cached,
          tokensPerSecond: seconds > 0 ? (done - cached) / seconds : 0,
          elapsedMs: now - started,
        };
      };
      yield progress(cached, prefillStart);

      // 2. Chunked prefill; the last chunk runs forward() for the last position's logits.
      let logits: Float32Array | undefined;
      let pos = cached;
      while (pos < n) {
        if (signal?.aborted) throw new CancelledError();
        let end = Math.min(pos + chunk, n);
        if (cache) {
          const boundary = (Math.floor(pos / cache.chunkTokens) + 1) * cache.chunkTokens;
          end = Math.min(end, boundary);
        }
        const span = prompt.subarray(pos, end);
        if (end === n) logits = await rt.forward(span, signal);
        else await rt.prefill(span, signal);
        pos = end;
        if (cache && pos % cache.chunkTokens === 0) {
          await cache.save(rt, prompt, pos - cache.chunkTokens, pos);
        }
        yield progress(pos, clock());
      }
      assert(logits !== undefined, "the prefill ran the last prompt token");
      const prefillEnd = clock();

      // 3. Decode.
      const stopper = new StopStringMatcher(request.stop ?? []);
      const stopIds = new Set(request.stopTokenIds ?? []);
      const maxTokens = request.maxTokens ?? maxPositions - n;
      let generated = 0;
      for (;;) {
        if (signal?.aborted) throw new CancelledError();
        const sampled = sampler.sample(logits);
        const id = sampled.id;
        generated++;
        let finishReason: FinishReason | undefined;
        let stop: string | number | undefined;
        let text = "";
        if ((!request.ignoreEos && this.#eos.has(id)) || stopIds.has(id)) {
          finishReason = "stop";
          stop = id;
        } else {
          const match = stopper.push(decoder ? decoder.push(id) : "");
          text = match.text;
          if (match.stop !== undefined) {
            finishReason = "stop";
            stop = match.stop;
          } else if (generated >= maxTokens || n + generated >= maxPositions) {
            // Context full as vLLM counts it: prompt + output <= the runtime's positions.
            finishReason = "length";
          }
        }
        if (finishReason !== undefined && typeof stop !== "string") {
          // Ending without a stop string: release the decoder's tail and what was held back
          // (the tail can still complete a stop string).
          const match = stopper.push(decoder ? decoder.flush() : "");
          text += match.text;
          if (match.stop !== undefined) {
            finishReason = "stop";
            stop = match.stop;
          } else {
            text += stopper.flush();
          }
        }
        const event: TokenEvent = { type: "token", id, text };
        if (sampled.logprob !== undefined) event.logprob = sampled.logprob;
        if (sampled.top !== undefined) event.top = sampled.top;
        yield event;

        if (finishReason !== undefined) {
          const now = clock();
          const done: DoneEvent = {
            type: "done",
            finishReason,
            usage: { promptTokens: n, completionTokens: generated, cachedTokens: cached },
            timings: {
              prefillMs: prefillEnd - prefillStart,
              prefillTokens: n - cached,
              decodeMs: now - prefillEnd,
              decodeTokens: generated,
            },
          };
          if (stop !== undefined) done.stop = stop;
          yield done;
          return;
        }
        sequence.push(id);
        logits = await rt.forward(Int32Array.of(id), signal);
      }
    } finally {
      this.#held = sequence.slice(0, rt.position);
      this.#busy = false;
    }
  }
}
