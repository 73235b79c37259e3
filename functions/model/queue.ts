// One generation per runtime at a time (a runtime owns one sequence's KV cache), with a bounded
// FIFO of waiters. Past the bound the caller gets RateLimitError (429 + Retry-After) at once rather
// than waiting unboundedly: the edge or client retries, and memory stays bounded under load.
import { CancelledError } from "../../core/errors.ts";
import { RateLimitError } from "../http/http-errors.ts";

export class GenerationQueue {
  #active = 0;
  #waited = 0;
  readonly #waiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];

  constructor(
    /** Generations that may run at once (runtimes in the pool). */
    readonly slots: number,
    /** Requests that may wait for a slot. */
    readonly maxWaiting: number,
    /** Seconds a client is told to wait when the queue is full. */
    readonly retryAfterS = 1,
  ) {}

  get active(): number {
    return this.#active;
  }
  get waiting(): number {
    return this.#waiters.length;
  }
  /** Requests so far that found no free slot and waited (metrics; tests count it). */
  get waited(): number {
    return this.#waited;
  }

  /**
   * Takes a place: resolves with a release function once a slot is free. A full queue throws
   * RateLimitError at once (synchronously, so the caller can still answer 429 before it streams).
   * A signal that has fired, before the call or while waiting, rejects with CancelledError and
   * holds no slot: a listener added to a signal that has already fired never runs, so the state is
   * checked, not only listened to.
   */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted)
      return Promise.reject(new CancelledError("client went away before a slot was free"));
    if (this.#active < this.slots && this.#waiters.length === 0) {
      this.#active++;
      return Promise.resolve(this.#releaser());
    }
    if (this.#waiters.length >= this.maxWaiting) {
      throw new RateLimitError(
        `the model is busy (${this.#active} running, ${this.#waiters.length} waiting); retry later`,
        this.retryAfterS,
      );
    }
    this.#waited++;
    return new Promise<() => void>((resolve, reject) => {
      const onAbort = () => {
        const i = this.#waiters.indexOf(waiter);
        if (i >= 0) {
          this.#waiters.splice(i, 1);
          reject(new CancelledError("client went away while queued"));
        }
      };
      const waiter = {
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve(this.#releaser());
        },
        reject,
      };
      this.#waiters.push(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  #releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiters.shift();
      if (next) next.resolve();
      else this.#active--;
    };
  }
}
