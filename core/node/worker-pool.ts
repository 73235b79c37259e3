// A fixed set of worker_threads speaking a small request/response protocol, for CPU runtimes that
// shard work across cores (wasm/src uses it; nothing here knows about models).
//
// Protocol (the worker side is plain JS, so entries need no TS loader):
//   to worker:   { id: number, method: string, args: unknown[] }
//   from worker: { id, ok: true, result } | { id, ok: false, error: { message, code?, stack? } }
// A result that is a typed array is transferred, not copied. A worker that dies rejects every call
// pending on it and every later call.
import { Worker } from "node:worker_threads";

interface Pending {
  resolve: (value: unknown) => void;
  reject: (reason: unknown) => void;
}

/** An error raised inside a worker, rebuilt on this side with its `code` (if any). */
export class WorkerCallError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
    readonly workerStack: string | undefined,
  ) {
    super(message);
    this.name = "WorkerCallError";
  }
}

export class PoolWorker {
  readonly #worker: Worker;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #dead: Error | null = null;

  constructor(entry: URL, name: string) {
    this.#worker = new Worker(entry, { name });
    this.#worker.on(
      "message",
      (msg: {
        id: number;
        ok: boolean;
        result?: unknown;
        error?: { message: string; code?: string; stack?: string };
      }) => {
        const p = this.#pending.get(msg.id);
        if (!p) return;
        this.#pending.delete(msg.id);
        if (msg.ok) p.resolve(msg.result);
        else
          p.reject(
            new WorkerCallError(
              msg.error?.message ?? "worker error",
              msg.error?.code,
              msg.error?.stack,
            ),
          );
      },
    );
    const fail = (err: Error) => {
      this.#dead ??= err;
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
    };
    this.#worker.on("error", fail);
    this.#worker.on("exit", (code) => fail(new Error(`worker ${name} exited (code ${code})`)));
  }

  call<T>(method: string, args: unknown[], transfer: Transferable[] = []): Promise<T> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#worker.postMessage({ id, method, args }, transfer as never);
    });
  }

  async terminate(): Promise<void> {
    this.#dead ??= new Error("worker pool closed");
    await this.#worker.terminate();
  }
}

export class WorkerPool {
  readonly workers: PoolWorker[];

  constructor(entry: URL, count: number, name = "pool") {
    if (!(count >= 1)) throw new Error(`worker count must be >= 1 (got ${count})`);
    this.workers = Array.from({ length: count }, (_, i) => new PoolWorker(entry, `${name}-${i}`));
  }

  get size(): number {
    return this.workers.length;
  }

  /** The same method on every worker, args chosen per worker; resolves when all have answered. */
  all<T>(method: string, argsFor: (index: number) => unknown[]): Promise<T[]> {
    return Promise.all(this.workers.map((w, i) => w.call<T>(method, argsFor(i))));
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
