// Retries with capped exponential backoff and full jitter (the AWS architecture blog's
// recommendation) for store operations that the SDK's own retry cannot cover: a response body cut
// off or short after the headers arrived. Clock and randomness are injected so tests are exact.

import { CancelledError } from "../errors.ts";

export interface RetryPolicy {
  /** Total attempts including the first (default 5). */
  attempts: number;
  /** First backoff ceiling in ms (default 50); doubles per attempt up to maxDelayMs (2000). */
  baseDelayMs: number;
  maxDelayMs: number;
}

export const defaultRetryPolicy: RetryPolicy = { attempts: 5, baseDelayMs: 50, maxDelayMs: 2000 };

export type Sleep = (ms: number, signal?: AbortSignal) => Promise<void>;

export const realSleep: Sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new CancelledError());
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(new CancelledError());
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });

/** Delay before attempt `attempt` (1 = first retry). */
export function backoffMs(policy: RetryPolicy, attempt: number, random: () => number): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  return Math.floor(random() * ceiling);
}

/**
 * Run `op` until it succeeds, `retryable(err)` is false, or attempts run out (the last error is
 * thrown). `onRetry` sees each retried error.
 */
export async function withRetry<T>(
  op: (attempt: number) => Promise<T>,
  opts: {
    policy: RetryPolicy;
    retryable: (err: unknown) => boolean;
    sleep: Sleep;
    random: () => number;
    signal?: AbortSignal;
    onRetry?: (err: unknown, attempt: number, delayMs: number) => void;
  },
): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await op(attempt);
    } catch (err) {
      if (attempt + 1 >= opts.policy.attempts || !opts.retryable(err) || opts.signal?.aborted) {
        throw err;
      }
      const delay = backoffMs(opts.policy, attempt + 1, opts.random);
      opts.onRetry?.(err, attempt + 1, delay);
      await opts.sleep(delay, opts.signal);
    }
  }
}
