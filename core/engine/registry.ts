// Runtimes are picked at start by this registry, not by `if` chains. The composition root
// (functions/runtimes.ts) registers every runtime the build has; core imports none of them.

import { InvalidInputError, NotAvailableError } from "../errors.ts";
import type { KvDtype } from "../kv/layout.ts";
import type { LoadedModel } from "../model/weights.ts";
import type { PagedRuntime, PagedRuntimeOptions } from "./paged-runtime.ts";
import type { Runtime } from "./runtime.ts";

export interface RuntimeOptions {
  model: LoadedModel;
  /** KV cache element type (default: the runtime's own choice, stated in its info). */
  kvDtype?: KvDtype;
  /** Positions to reserve in the KV cache (default: min(config max positions, runtime limit)). */
  maxPositions?: number;
  /** Worker threads for CPU runtimes (default: available cores). */
  threads?: number;
  /** Weight element type held in memory: f32, bf16, or int8 with per-block scales. */
  weightFormat?: "f32" | "bf16" | "int8";
}

export interface RuntimeFactory {
  /** "cuda", "wasm", "native-wasm", "reference". */
  name: string;
  /** Higher wins when the caller asks for "auto". */
  priority: number;
  /** null when usable here, else a sentence naming what is missing. */
  unavailableReason(): Promise<string | null>;
  create(options: RuntimeOptions): Promise<Runtime>;
  /** The batched form (core/engine/paged-runtime.ts), where the runtime has one. */
  createPaged?(options: PagedRuntimeOptions): Promise<PagedRuntime>;
}

export class RuntimeRegistry {
  readonly #factories = new Map<string, RuntimeFactory>();

  register(factory: RuntimeFactory): void {
    if (this.#factories.has(factory.name)) {
      throw new Error(`runtime '${factory.name}' is already registered`);
    }
    this.#factories.set(factory.name, factory);
  }

  names(): string[] {
    return [...this.#factories.keys()];
  }

  /** The named runtime, or with "auto" the highest-priority one that is available here. */
  async pick(name: string): Promise<RuntimeFactory> {
    return (await this.choose(name)).factory;
  }

  /**
   * `pick`, plus why: for "auto", every runtime ranked above the one chosen with the reason it was
   * passed over, so a caller can log that a GPU build was skipped instead of hiding it.
   */
  async choose(name: string): Promise<RuntimeChoice> {
    if (name !== "auto") {
      const factory = this.#factories.get(name);
      if (!factory) {
        throw new InvalidInputError(
          `unknown runtime '${name}' (known: ${this.names().join(", ")})`,
        );
      }
      const reason = await reasonOf(factory);
      if (reason !== null)
        throw new NotAvailableError(`runtime '${name}' is not available: ${reason}`);
      return { factory, skipped: [] };
    }
    const ordered = [...this.#factories.values()].sort((a, b) => b.priority - a.priority);
    const skipped: RuntimeChoice["skipped"] = [];
    for (const factory of ordered) {
      const reason = await reasonOf(factory);
      if (reason === null) return { factory, skipped };
      skipped.push({ name: factory.name, reason });
    }
    throw new NotAvailableError(
      `no runtime is available (${skipped.map((s) => `${s.name}: ${s.reason}`).join("; ")})`,
    );
  }
}

export interface RuntimeChoice {
  factory: RuntimeFactory;
  /** Runtimes ranked above `factory` that are not available here, best first. */
  skipped: { name: string; reason: string }[];
}

/** One line saying what "auto" picked and why each better runtime was passed over. */
export function describeChoice(choice: RuntimeChoice): string {
  const why = choice.skipped.map((s) => `${s.name} skipped: ${s.reason}`);
  return `runtime ${choice.factory.name}${why.length ? ` (${why.join("; ")})` : ""}`;
}

/** A factory's unavailability; a probe that throws is unavailable for the reason it threw. */
async function reasonOf(factory: RuntimeFactory): Promise<string | null> {
  try {
    return await factory.unavailableReason();
  } catch (err) {
    return `its availability check failed: ${(err as Error).message}`;
  }
}
