// API keys -> tenants. Keys are configured only as SHA-256 hashes (a leaked config file leaks no
// key); a presented key is hashed and compared against every configured hash in constant time, so
// neither which key matched nor how much of it matched shows in the timing.
//
// Key file (JSON), `ultralong serve --api-keys FILE`:
//   { "tenants": { "acme": { "maxPromptTokens": 1000000, "maxOutputTokens": 4096, "rpm": 60 } },
//     "keys": [ { "sha256": "<hex>", "tenant": "acme" } ],
//     "metricsKeySha256": "<hex>" }

import { InvalidInputError } from "../../core/errors.ts";
import { bytesEqual, fromHex } from "../../core/hash/hex.ts";
import { sha256 } from "../../core/hash/sha256.ts";

export interface TenantLimits {
  /** Most prompt tokens in one request. */
  maxPromptTokens: number;
  /** Most generated tokens in one request (a larger max_tokens is refused). */
  maxOutputTokens: number;
  /** Requests per minute (sliding window); 0 = unlimited. */
  rpm: number;
}

export interface Tenant extends TenantLimits {
  id: string;
  /** A disabled tenant's keys authenticate but every request is 403. */
  disabled?: boolean;
}

export interface KeyConfig {
  tenants: Record<string, Partial<TenantLimits> & { disabled?: boolean }>;
  keys: Array<{ sha256: string; tenant: string }>;
  metricsKeySha256?: string;
}

export const DEFAULT_LIMITS: TenantLimits = {
  maxPromptTokens: 131_072,
  maxOutputTokens: 4096,
  rpm: 600,
};

export class KeyRing {
  readonly #entries: Array<{ hash: Uint8Array; tenant: Tenant }>;
  readonly metricsKeySha256?: string;

  constructor(config: KeyConfig) {
    if (!config || typeof config !== "object" || !Array.isArray(config.keys) || !config.tenants) {
      throw new InvalidInputError("key config needs 'tenants' and 'keys'");
    }
    const tenants = new Map<string, Tenant>();
    for (const [id, t] of Object.entries(config.tenants)) {
      if (!t || typeof t !== "object" || Array.isArray(t))
        throw new InvalidInputError(`tenants.${id} is not an object`);
      for (const limit of Object.keys(DEFAULT_LIMITS) as Array<keyof TenantLimits>) {
        const v = t[limit];
        if (v !== undefined && !(Number.isSafeInteger(v) && v >= 0))
          throw new InvalidInputError(
            `tenants.${id}.${limit} must be a non-negative integer, got ${JSON.stringify(v)}`,
          );
      }
      if (t.disabled !== undefined && typeof t.disabled !== "boolean")
        throw new InvalidInputError(`tenants.${id}.disabled must be true or false`);
      tenants.set(id, { id, ...DEFAULT_LIMITS, ...t });
    }
    this.#entries = config.keys.map((k, i) => {
      const hash = typeof k.sha256 === "string" ? fromHex(k.sha256) : null;
      if (hash?.length !== 32)
        throw new InvalidInputError(`keys[${i}].sha256 is not 64 hex digits`);
      const tenant = tenants.get(k.tenant);
      if (!tenant) throw new InvalidInputError(`keys[${i}] names unknown tenant '${k.tenant}'`);
      return { hash, tenant };
    });
    this.metricsKeySha256 = config.metricsKeySha256;
  }

  /** The tenant whose key this is, or null. Always compares against every entry. */
  async lookup(key: string): Promise<Tenant | null> {
    const hash = await sha256(new TextEncoder().encode(key));
    let found: Tenant | null = null;
    for (const e of this.#entries) {
      if (bytesEqual(e.hash, hash)) found = e.tenant;
    }
    return found;
  }
}

/** Sliding one-minute window per tenant. Memory: one timestamp per request in the last minute. */
export class RateLimiter {
  readonly #hits = new Map<string, number[]>();
  constructor(private readonly clock: () => number = Date.now) {}

  /** null when allowed (and counted), else seconds until a slot frees. */
  take(tenant: Tenant): number | null {
    if (tenant.rpm <= 0) return null;
    const now = this.clock();
    const hits = (this.#hits.get(tenant.id) ?? []).filter((t) => t > now - 60_000);
    if (hits.length >= tenant.rpm) {
      this.#hits.set(tenant.id, hits);
      return Math.max(1, Math.ceil((hits[0] + 60_000 - now) / 1000));
    }
    hits.push(now);
    this.#hits.set(tenant.id, hits);
    return null;
  }
}
