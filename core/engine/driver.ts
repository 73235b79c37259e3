// The sequence driver: runs one request on a Runtime, written once for every runtime.
//
// The prompt comes whole or as chunks while it is still being uploaded (prompt-intake.ts); both
// take the same steps on the same spans, so they end with the same KV, tokens and usage.
//   1. reuse: if the runtime already holds a prefix of the prompt (an earlier request on this
//      driver, same isolation key), keep the common prefix instead of recomputing it;
//   2. restore: with a PrefixCache that could cover more, continue the stored chain of chunks from
//      the last snapshot boundary inside the reused part, chunk by chunk as the prompt arrives;
//   3. chunked prefill of the rest as its tokens arrive, chunks never straddling a snapshot
//      boundary, each finished snapshot chunk handed to the cache; a progress event after each.
//   4. decode: sample, detokenize, check stop conditions (EOS ids, stop token ids, stop strings
//      with holdback, max tokens, context full), stream a token event, forward the token; then a
//      done event with the finish reason, usage and timings.
//
// It is an async iterator of events, so the CLI and the HTTP model function consume the same
// thing. Breaking out of the loop (or an AbortSignal) stops the work; the driver then still knows
// exactly which tokens the runtime's KV cache holds, so the next request can reuse them.
//
// One generation at a time per driver (the runtime holds one sequence); callers queue.

import { assert, CancelledError, InvalidInputError } from "../errors.ts";
import type { LoadedModel } from "../model/weights.ts";
import type { PrefixCache } from "./prefix-cache.ts";
import { PromptIntake, type PromptSource } from "./prompt-intake.ts";
import type { Runtime } from "./runtime.ts";
import {
  type Rng,
  type SampledToken,
  Sampler,
  type SamplingOptions,
  type TokenLogprob,
} from "./sampling.ts";
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
  /**
   * Prompt token IDs (BOS included when the model wants one): all of them, or chunks as they
   * arrive (an upload): each snapshot-aligned chunk is prefilled as soon as its tokens are there.
   */
  prompt: PromptSource;
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
  /** Prompt tokens received so far: the prompt's length once `promptComplete`. */
  totalTokens: number;
  /** False while a streamed prompt is still arriving. */
  promptComplete: boolean;
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
  #held = new Int32Array(0);
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
    return Array.from(this.#held);
  }

  /**
   * Runs one request. A whole prompt that is bad throws InvalidInputError / LimitError here, before
   * any work; a streamed one throws them from the iteration, at the chunk that breaks the rule.
   */
  generate(request: GenerateRequest): AsyncGenerator<DriverEvent, void, undefined> {
    const rt = this.runtime;
    positiveInt("max_tokens", request.maxTokens);
    positiveInt("chunkTokens", request.chunkTokens);
    if (request.stop?.length && !request.decoder) {
      throw new InvalidInputError("stop strings need a decoder to match against");
    }
    // Validates the sampling options now, before the generator starts.
    const sampler = new Sampler(request.sampling ?? {}, rt.config.vocabSize, request.rng);
    const prompt = new PromptIntake(
      request.prompt,
      { vocabSize: rt.config.vocabSize, maxPositions: rt.info.maxPositions },
      (tokens) => sampler.addPrompt(tokens),
    );
    return this.#run(request, prompt, sampler);
  }

  async *#run(
    request: GenerateRequest,
    prompt: PromptIntake,
    sampler: Sampler,
  ): AsyncGenerator<DriverEvent, void, undefined> {
    const rt = this.runtime;
    const { signal, prefixCache: cache, decoder } = request;
    const maxPositions = rt.info.maxPositions;
    const chunk = request.chunkTokens ?? this.#chunkTokens;
    const clock = this.#clock;
    // Tokens generated and fed back. The runtime holds the first runtime.position tokens of
    // prompt + output once `truncated` is set; before that it still holds this.#held.
    const output: number[] = [];
    let truncated = false;
    // The next token: its forward started before the token it follows is handed out, sampled
    // as its logits come back (below).
    let ahead: Promise<SampledToken> | null = null;
    // Checked here, at the first next(), so a generator that is never iterated holds nothing.
    if (this.#busy) throw new Error("assertion failed: one generation at a time per driver");
    this.#busy = true;
    try {
      if (signal?.aborted) throw new CancelledError();
      const started = clock();
      let cached = 0;
      let prefillStart = started;
      const progress = (done: number, now: number): ProgressEvent => {
        const seconds = (now - prefillStart) / 1000;
        return {
          type: "progress",
          doneTokens: done,
          totalTokens: prompt.length,
          promptComplete: prompt.ended,
          cachedTokens: cached,
          tokensPerSecond: seconds > 0 && done > cached ? (done - cached) / seconds : 0,
          elapsedMs: now - started,
        };
      };
      // While the prompt is still arriving, progress is reported before each wait for more of it
      // whenever the KV it can keep has grown; a whole prompt never waits.
      let reported = -1;
      const more = async function* (kept: number) {
        if (kept > reported) {
          reported = kept;
          cached = kept;
          yield progress(kept, clock());
        }
        await prompt.pull(signal);
      };

      // 1. Reuse: the longest common prefix of what the runtime holds (same isolation key) and the
      //    prompt, never the last prompt token (its logits are needed). Decided as soon as the
      //    prompt leaves the held tokens or ends; meanwhile nothing needs computing.
      if (rt.position !== this.#held.length) this.#held = new Int32Array(0); // someone else ran
      const held = request.isolationKey === this.#heldKey ? this.#held : new Int32Array(0);
      // Held KV a later truncation to a snapshot boundary cannot drop (progress stays monotonic).
      const keepable = (m: number) =>
        cache ? Math.floor(m / cache.chunkTokens) * cache.chunkTokens : m;
      let match = 0;
      let reuse: number;
      for (;;) {
        while (match < prompt.length && match < held.length && prompt.at(match) === held[match])
          match++;
        if (match < prompt.length) {
          reuse = match;
          break;
        }
        if (prompt.ended) {
          reuse = Math.min(match, prompt.length - 1);
          break;
        }
        yield* more(Math.min(keepable(match), prompt.length - 1));
      }

      // 2. Restore. With a PrefixCache, when its whole chunks could cover more than is reused
      //    (whole chunks of the prompt minus its last token: chunk i is known to qualify once the
      //    prompt is past its end), truncate to the last snapshot boundary within the reused part
      //    and continue the stored chain from there, chunk by chunk as the prompt arrives, until it
      //    breaks or the prompt ends. Nothing is computed while the chain may still continue, so a
      //    streamed prompt and a whole one end with the same KV and the same cachedTokens.
      const restorable = () =>
        cache ? Math.floor((prompt.length - 1) / cache.chunkTokens) * cache.chunkTokens : 0;
      while (cache && restorable() <= reuse && !prompt.ended) yield* more(keepable(reuse));
      this.#heldKey = request.isolationKey;
      truncated = true;
      if (cache && restorable() > reuse) {
        rt.truncate(keepable(reuse));
        for (;;) {
          const limit = restorable();
          if (limit > rt.position) {
            const from = rt.position;
            const { restoredTokens } = await cache.restore(rt, prompt.view(0, limit), signal);
            assert(rt.position === from + restoredTokens, "restore left the runtime at its end");
            assert(restoredTokens % cache.chunkTokens === 0, "restore gave whole chunks");
            if (rt.position < limit) break; // the stored chain ends here
          } else if (prompt.ended) break;
          else yield* more(rt.position);
        }
      } else {
        rt.truncate(reuse);
      }
      cached = rt.position;
      prefillStart = clock();
      if (reported !== cached) yield progress(cached, prefillStart);

      // 3. Chunked prefill as the prompt arrives, chunks never straddling a snapshot boundary. A
      //    chunk that ends where the received prompt ends runs forward() (the prompt may end there:
      //    its last logits cost one position of lm_head); the others prefill().
      let logits: Float32Array | undefined;
      let pos = cached;
      while (!(prompt.ended && pos === prompt.length)) {
        if (signal?.aborted) throw new CancelledError();
        let end = pos + chunk;
        if (cache)
          end = Math.min(end, (Math.floor(pos / cache.chunkTokens) + 1) * cache.chunkTokens);
        if (end > prompt.length) {
          if (!prompt.ended) {
            await prompt.pull(signal);
            continue;
          }
          end = prompt.length;
        }
        const span = prompt.view(pos, end);
        if (end === prompt.length) logits = await rt.forward(span, signal);
        else {
          await rt.prefill(span, signal);
          logits = undefined;
        }
        pos = end;
        if (cache && pos % cache.chunkTokens === 0) {
          await cache.save(rt, prompt.view(0, pos), pos - cache.chunkTokens, pos);
        }
        yield progress(pos, clock());
      }
      assert(logits !== undefined, "the prefill ran the last prompt token");
      const n = prompt.length;
      const prefillEnd = clock();

      // 4. Decode.
      const stopper = new StopStringMatcher(request.stop ?? []);
      const stopIds = new Set(request.stopTokenIds ?? []);
      const maxTokens = request.maxTokens ?? maxPositions - n;
      let generated = 0;
      let sampled: SampledToken | undefined;
      for (;;) {
        if (signal?.aborted) throw new CancelledError();
        sampled ??= sampler.sample(logits);
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
        if (finishReason === undefined) {
          // The next token's forward starts before this one is handed out, so the runtime's
          // next step does not wait for the consumer (streaming the token out, over a socket):
          // with many sequences batched, a step starts once every one of them has sampled. Its
          // logits are sampled in the forward's own continuation, before anything is awaited:
          // they may be a view of a buffer the runtime's next step (any sequence's) overwrites,
          // and the consumer may take longer than that to ask for the next token. A consumer that
          // stops here leaves one token computed and unused (the finally below waits for it).
          output.push(id);
          ahead = rt
            .forward(Int32Array.of(id), signal, { transientLogits: true })
            .then((next) => sampler.sample(next));
          // Settled in the finally or below; until then a rejection is not unhandled.
          ahead.catch(() => {});
        }
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
        const next = ahead;
        assert(next !== null, "a token without a finish reason started the next forward");
        ahead = null;
        sampled = await next;
      }
    } finally {
      prompt.close();
      // A forward started ahead of a consumer that stopped: the runtime is used by nobody else
      // until it settles (its token counts in the position if it ran: output holds it).
      if (ahead) await ahead.catch(() => {});
      if (truncated) {
        const pos = rt.position;
        const fromPrompt = Math.min(pos, prompt.length);
        const held = new Int32Array(pos);
        held.set(prompt.view(0, fromPrompt));
        held.set(output.slice(0, pos - fromPrompt), fromPrompt);
        this.#held = held;
      }
      this.#busy = false;
    }
  }
}
