// Runtimes are picked at start by this registry, not by `if` chains. The composition root
// (functions/runtimes.ts) registers every runtime the build has; core imports none of them.

import { InvalidInputError, NotAvailableError } from "../errors.ts";
import type { KvDtype } from "../kv/layout.ts";
import type { LoadedModel } from "../model/weights.ts";
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
    if (name !== "auto") {
      const factory = this.#factories.get(name);
      if (!factory) {
        throw new InvalidInputError(
          `unknown runtime '${name}' (known: ${this.names().join(", ")})`,
        );
      }
      const reason = await factory.unavailableReason();
      if (reason !== null)
        throw new NotAvailableError(`runtime '${name}' is not available: ${reason}`);
      return factory;
    }
    const ordered = [...this.#factories.values()].sort((a, b) => b.priority - a.priority);
    const reasons: string[] = [];
    for (const factory of ordered) {
      const reason = await factory.unavailableReason();
      if (reason === null) return factory;
      reasons.push(`${factory.name}: ${reason}`);
    }
    throw new NotAvailableError(`no runtime is available (${reasons.join("; ")})`);
  }
}
