// Request signing between the edge and the model function (ARCHITECTURE.md "Wire protocol").
//
// The edge and the model function share a secret. A request carries three headers:
//   x-ul-timestamp  milliseconds since the epoch when the edge signed it
//   x-ul-nonce      16 random bytes, hex; accepted once (nonce-ledger.ts: across instances and
//                   restarts when the ledger is the deployment's store)
//   x-ul-signature  hex HMAC-SHA256(secret, "ul1\n" METHOD "\n" PATH "\n" timestamp "\n" nonce)
// The body is a stream of frames (frames.ts) whose tags chain from this signature, so the body is
// authenticated frame by frame as it arrives: prefill starts on verified tokens before the upload
// ends, which a whole-body MAC would forbid. WebCrypto only, so it runs on Workers and Lambda too.
//
// Rejected: signing a hash of the whole body (needs the whole body first); mutual TLS (not
// available on function URLs and Workers without extra products).

import { NotAvailableError, UltralongError } from "../errors.ts";
import { bytesEqual, fromHex, toHex } from "../hash/hex.ts";
import { MemoryNonceLedger, type NonceLedger } from "./nonce-ledger.ts";

/** The signature is missing, wrong, stale or replayed. The HTTP layer maps this to 401. */
export class SignatureError extends UltralongError {
  constructor(message: string) {
    super("bad_signature", message);
  }
}

export const SIGNATURE_VERSION = "ul1";
export const HEADER_TIMESTAMP = "x-ul-timestamp";
export const HEADER_NONCE = "x-ul-nonce";
export const HEADER_SIGNATURE = "x-ul-signature";

const encoder = new TextEncoder();

/** HMAC-SHA256 key from a shared secret (at least 32 bytes of entropy is the operator's job). */
export async function importSigningKey(secret: string | Uint8Array): Promise<CryptoKey> {
  const raw = typeof secret === "string" ? encoder.encode(secret) : secret;
  if (raw.length < 16)
    throw new SignatureError("the shared signing secret is shorter than 16 bytes");
  return crypto.subtle.importKey(
    "raw",
    raw as BufferSource,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
}

export async function hmac(key: CryptoKey, ...parts: Uint8Array[]): Promise<Uint8Array> {
  let total = 0;
  for (const p of parts) total += p.length;
  const data = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    data.set(p, at);
    at += p.length;
  }
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, data));
}

function canonical(method: string, path: string, timestamp: string, nonce: string): Uint8Array {
  return encoder.encode(
    `${SIGNATURE_VERSION}\n${method.toUpperCase()}\n${path}\n${timestamp}\n${nonce}`,
  );
}

export interface SignedHeaders {
  [HEADER_TIMESTAMP]: string;
  [HEADER_NONCE]: string;
  [HEADER_SIGNATURE]: string;
}

export interface SignOptions {
  clock?: () => number;
  /** Random bytes source (default crypto.getRandomValues). */
  random?: (bytes: Uint8Array) => void;
}

/** Signs a request line; returns the headers and the raw signature the body's frame tags chain from. */
export async function signRequest(
  key: CryptoKey,
  method: string,
  path: string,
  options: SignOptions = {},
): Promise<{ headers: SignedHeaders; signature: Uint8Array }> {
  const timestamp = String((options.clock ?? Date.now)());
  const nonceBytes = new Uint8Array(16);
  (options.random ?? ((b: Uint8Array) => crypto.getRandomValues(b)))(nonceBytes);
  const nonce = toHex(nonceBytes);
  const signature = await hmac(key, canonical(method, path, timestamp, nonce));
  return {
    headers: {
      [HEADER_TIMESTAMP]: timestamp,
      [HEADER_NONCE]: nonce,
      [HEADER_SIGNATURE]: toHex(signature),
    },
    signature,
  };
}

export interface VerifierOptions {
  clock?: () => number;
  /** Accepted clock difference either way, ms (default 60 s). */
  windowMs?: number;
  /**
   * Where served nonces are claimed (default: this process's memory, remembering up to 100,000
   * nonces for the window). The model function passes its store's ledger so that a nonce is
   * accepted once across instances and restarts.
   */
  ledger?: NonceLedger;
  /**
   * Timestamps before this (ms) are refused: the verifier's start by default, so a restart cannot
   * reopen the window for requests captured before it.
   */
  notBefore?: number;
}

/**
 * Verifies request signatures and refuses replays: a timestamp outside the window or from before
 * the verifier started is refused, and a nonce is served once (its ledger's claim).
 */
export class RequestVerifier {
  readonly #key: CryptoKey;
  readonly #clock: () => number;
  readonly #windowMs: number;
  readonly #ledger: NonceLedger;
  readonly #notBefore: number;

  constructor(key: CryptoKey, options: VerifierOptions = {}) {
    this.#key = key;
    this.#clock = options.clock ?? Date.now;
    this.#windowMs = options.windowMs ?? 60_000;
    this.#ledger =
      options.ledger ?? new MemoryNonceLedger({ clock: this.#clock, windowMs: this.#windowMs });
    this.#notBefore = options.notBefore ?? this.#clock();
  }

  /** Returns the raw signature (the first link of the frame tag chain). Throws SignatureError. */
  async verify(method: string, path: string, headers: Headers): Promise<Uint8Array> {
    const timestamp = headers.get(HEADER_TIMESTAMP);
    const nonce = headers.get(HEADER_NONCE);
    const signatureHex = headers.get(HEADER_SIGNATURE);
    if (!timestamp || !nonce || !signatureHex) throw new SignatureError("request is not signed");
    const signature = fromHex(signatureHex);
    if (signature?.length !== 32 || !/^[0-9a-f]{32}$/.test(nonce)) {
      throw new SignatureError("malformed signature headers");
    }
    const ts = Number(timestamp);
    const now = this.#clock();
    if (!/^\d{1,16}$/.test(timestamp) || Math.abs(now - ts) > this.#windowMs) {
      throw new SignatureError("stale signature timestamp");
    }
    const expected = await hmac(this.#key, canonical(method, path, timestamp, nonce));
    if (!bytesEqual(expected, signature)) throw new SignatureError("bad signature");
    if (ts < this.#notBefore) {
      throw new SignatureError("stale signature timestamp (signed before this server started)");
    }
    let fresh: boolean;
    try {
      fresh = await this.#ledger.claim(nonce, ts);
    } catch (err) {
      // The store's message names the bucket or directory: for the server's log (the cause), not
      // for the client, which learns only that it may retry.
      throw new NotAvailableError("the replay ledger is unavailable; retry the request", {
        cause: err,
      });
    }
    if (!fresh) throw new SignatureError("replayed request");
    return signature;
  }
}
