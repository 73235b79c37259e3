// SnapshotStore on S3 or any S3-compatible server (MinIO, R2, Ceph, s3rver) through the AWS SDK v3.
//
// - put: one PutObject below `multipartThresholdBytes`, else a multipart upload (lib-storage's
//   Upload, `putConcurrency` parts in flight). Both are atomic on S3: readers never see a part.
// - get: a large object is read as parallel ranged GETs of `partBytes` (`getConcurrency` at once);
//   the first range also reveals the total size through Content-Range, so no HEAD is spent.
// - retries: request-level failures (5xx, 429/SlowDown, resets before the response) go through a
//   retry strategy handed to the SDK client that uses our backoff and injected sleep, with no
//   global retry quota (the SDK's standard quota of 500 tokens drains under a burst of throttling
//   and then stops retrying entirely). Body-level failures the SDK cannot see (a reset mid-body, a
//   short body) are retried here, per range.
// - checksums: the SDK's flexible CRC32 request checksums are off (WHEN_REQUIRED) because many
//   self-hosted servers reject or ignore them and every snapshot carries its own SHA-256.

import {
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { assert, CancelledError, NotFoundError } from "../errors.ts";
import {
  backoffMs,
  defaultRetryPolicy,
  type RetryPolicy,
  realSleep,
  type Sleep,
  withRetry,
} from "./retry.ts";
import {
  type ByteRange,
  defaultLogger,
  type ObjectInfo,
  type SnapshotLogger,
  type SnapshotStore,
  StoreError,
  validateKey,
  validatePrefix,
} from "./store.ts";

export interface S3StoreOptions {
  bucket: string;
  /** Prepended to every key ("" or ending in "/"). */
  prefix?: string;
  /** A ready client; when given, endpoint/region/forcePathStyle/credentials below are ignored. */
  client?: S3Client;
  /** Custom endpoint for self-hosted S3, e.g. "http://127.0.0.1:9000". */
  endpoint?: string;
  /** Path-style addressing (http://host/bucket/key), needed by most self-hosted servers. */
  forcePathStyle?: boolean;
  /** Default: the SDK's usual chain (AWS_REGION, profile); "us-east-1" with a custom endpoint. */
  region?: string;
  credentials?: S3ClientConfig["credentials"];
  /** Objects at least this big are uploaded in parts (default 16 MiB). */
  multipartThresholdBytes?: number;
  /** Part size for multipart upload and ranged GET (default 8 MiB; S3's minimum part is 5 MiB). */
  partBytes?: number;
  putConcurrency?: number;
  getConcurrency?: number;
  retry?: Partial<RetryPolicy>;
  sleep?: Sleep;
  random?: () => number;
  logger?: SnapshotLogger;
}

const MiB = 1 << 20;

/** An S3 body ended early or broke mid-transfer: retried per range. */
class BodyError extends Error {}

function statusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
}

function isNotFound(err: unknown): boolean {
  const name = (err as { name?: string })?.name;
  return name === "NoSuchKey" || name === "NotFound" || statusOf(err) === 404;
}

/**
 * The SDK's RetryStrategyV2 shape, implemented with our policy: retries THROTTLING, TRANSIENT and
 * SERVER_ERROR; sleeps with the injected sleep and reports delay 0 to the SDK.
 */
function sdkRetryStrategy(
  policy: RetryPolicy,
  sleep: Sleep,
  random: () => number,
  logger: SnapshotLogger,
) {
  type Token = {
    getRetryCount(): number;
    getRetryDelay(): number;
    getRetryCost(): number | undefined;
  };
  const token = (count: number): Token => ({
    getRetryCount: () => count,
    getRetryDelay: () => 0,
    getRetryCost: () => undefined,
  });
  return {
    mode: "standard",
    acquireInitialRetryToken: async () => token(0),
    async refreshRetryTokenForRetry(t: Token, info: { errorType: string; error?: unknown }) {
      const next = t.getRetryCount() + 1;
      if (next >= policy.attempts || info.errorType === "CLIENT_ERROR") throw info.error;
      const delay = backoffMs(policy, next, random);
      logger.debug("s3 retry", {
        attempt: next,
        type: info.errorType,
        delayMs: delay,
        error: String(info.error),
      });
      await sleep(delay);
      return token(next);
    },
    recordSuccess() {},
  };
}

export class S3Store implements SnapshotStore {
  readonly name: string;
  readonly client: S3Client;
  readonly #bucket: string;
  readonly #prefix: string;
  readonly #threshold: number;
  readonly #partBytes: number;
  readonly #putConcurrency: number;
  readonly #getConcurrency: number;
  readonly #policy: RetryPolicy;
  readonly #sleep: Sleep;
  readonly #random: () => number;
  readonly #logger: SnapshotLogger;

  constructor(opts: S3StoreOptions) {
    if (!opts.bucket) throw new StoreError("S3 snapshot store needs a bucket");
    this.#bucket = opts.bucket;
    const prefix = opts.prefix ?? "";
    this.#prefix = prefix === "" || prefix.endsWith("/") ? prefix : `${prefix}/`;
    if (this.#prefix) validatePrefix(this.#prefix);
    this.name = `s3://${this.#bucket}/${this.#prefix}`;
    this.#threshold = opts.multipartThresholdBytes ?? 16 * MiB;
    this.#partBytes = opts.partBytes ?? 8 * MiB;
    this.#putConcurrency = opts.putConcurrency ?? 4;
    this.#getConcurrency = opts.getConcurrency ?? 8;
    this.#policy = { ...defaultRetryPolicy, ...opts.retry };
    this.#sleep = opts.sleep ?? realSleep;
    this.#random = opts.random ?? Math.random;
    this.#logger = opts.logger ?? defaultLogger;
    this.client =
      opts.client ??
      new S3Client({
        endpoint: opts.endpoint,
        forcePathStyle: opts.forcePathStyle,
        region: opts.region ?? (opts.endpoint ? "us-east-1" : undefined),
        credentials: opts.credentials,
        maxAttempts: this.#policy.attempts,
        retryStrategy: sdkRetryStrategy(this.#policy, this.#sleep, this.#random, this.#logger),
        requestChecksumCalculation: "WHEN_REQUIRED",
        responseChecksumValidation: "WHEN_REQUIRED",
        requestHandler: {
          requestTimeout: 60_000,
          httpAgent: { keepAlive: true, maxSockets: 64 },
          httpsAgent: { keepAlive: true, maxSockets: 64 },
        },
      });
  }

  #key(key: string): string {
    return this.#prefix + validateKey(key);
  }

  #fail(op: string, key: string, err: unknown): never {
    if (err instanceof CancelledError || err instanceof NotFoundError) throw err;
    if ((err as { name?: string })?.name === "AbortError") throw new CancelledError();
    throw new StoreError(`${op} ${this.name}${key} failed: ${(err as Error)?.message ?? err}`, {
      cause: err,
    });
  }

  async put(key: string, bytes: Uint8Array, signal?: AbortSignal): Promise<void> {
    const Key = this.#key(key);
    try {
      if (bytes.length < this.#threshold) {
        await this.#putOnce(Key, bytes, {}, signal);
        return;
      }
      const upload = new Upload({
        client: this.client,
        params: { Bucket: this.#bucket, Key, Body: bytes },
        partSize: Math.max(this.#partBytes, 5 * MiB),
        queueSize: this.#putConcurrency,
        leavePartsOnError: false,
      });
      const onAbort = () => void upload.abort();
      signal?.addEventListener("abort", onAbort, { once: true });
      try {
        await upload.done();
      } finally {
        signal?.removeEventListener("abort", onAbort);
      }
    } catch (err) {
      this.#fail("put", key, err);
    }
  }

  /** One PutObject of the whole object (below the multipart threshold), with extra conditions. */
  async #putOnce(
    Key: string,
    bytes: Uint8Array,
    extra: { IfNoneMatch?: string },
    signal?: AbortSignal,
  ): Promise<void> {
    await this.client.send(
      new PutObjectCommand({
        Bucket: this.#bucket,
        Key,
        Body: bytes,
        ContentLength: bytes.length,
        ...extra,
      }),
      { abortSignal: signal },
    );
  }

  async create(key: string, bytes: Uint8Array): Promise<boolean> {
    const Key = this.#key(key);
    // S3 conditional write: `If-None-Match: *` makes the PUT fail with 412 when the key exists,
    // atomically across writers; 409 means another conditional write to the key is in flight.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#putOnce(Key, bytes, { IfNoneMatch: "*" });
        return true;
      } catch (err) {
        const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata
          ?.httpStatusCode;
        if (status === 412) return false;
        if (status === 409 && attempt < this.#policy.attempts) {
          await this.#sleep(backoffMs(this.#policy, attempt, this.#random));
          continue;
        }
        this.#fail("create", key, err);
      }
    }
  }

  /** One ranged GET with body-level retries. `range` null = whole object. */
  async #getRange(
    Key: string,
    range: ByteRange | null,
    signal?: AbortSignal,
  ): Promise<{ bytes: Uint8Array; total: number }> {
    return withRetry(
      async () => {
        const out = await this.client.send(
          new GetObjectCommand({
            Bucket: this.#bucket,
            Key,
            Range: range ? `bytes=${range.offset}-${range.offset + range.length - 1}` : undefined,
          }),
          { abortSignal: signal },
        );
        let bytes: Uint8Array;
        try {
          bytes = await out.Body!.transformToByteArray();
        } catch (err) {
          throw new BodyError(`body read failed: ${(err as Error).message}`, { cause: err });
        }
        const total = out.ContentRange
          ? Number(/\/(\d+)$/.exec(out.ContentRange)?.[1] ?? Number.NaN)
          : bytes.length;
        if (out.ContentLength !== undefined && bytes.length !== out.ContentLength) {
          throw new BodyError(`body is ${bytes.length} bytes, Content-Length ${out.ContentLength}`);
        }
        const expected = range ? Math.min(range.length, Math.max(0, total - range.offset)) : total;
        if (!Number.isFinite(total) || bytes.length !== expected) {
          throw new BodyError(`body is ${bytes.length} bytes, expected ${expected}`);
        }
        return { bytes, total };
      },
      {
        policy: this.#policy,
        retryable: (err) => err instanceof BodyError,
        sleep: this.#sleep,
        random: this.#random,
        signal,
        onRetry: (err, attempt) =>
          this.#logger.debug("s3 body retry", { key: Key, attempt, error: String(err) }),
      },
    );
  }

  async get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<Uint8Array> {
    const Key = this.#key(key);
    try {
      const part = this.#partBytes;
      if (range) {
        assert(range.offset >= 0 && range.length >= 0, "byte range is non-negative");
        if (range.length === 0) return new Uint8Array(0);
        const out = new Uint8Array(range.length);
        const first = await this.#getRange(
          Key,
          { offset: range.offset, length: Math.min(part, range.length) },
          signal,
        );
        if (first.total < range.offset + range.length) {
          throw new StoreError(
            `range ${range.offset}+${range.length} is beyond ${Key} (${first.total} bytes)`,
          );
        }
        out.set(first.bytes, 0);
        await this.#fillParts(Key, out, range.offset, first.bytes.length, signal);
        return out;
      }
      const first = await this.#getRange(Key, { offset: 0, length: part }, signal);
      if (first.total <= first.bytes.length) return first.bytes;
      const out = new Uint8Array(first.total);
      out.set(first.bytes, 0);
      await this.#fillParts(Key, out, 0, first.bytes.length, signal);
      return out;
    } catch (err) {
      if (isNotFound(err))
        throw new NotFoundError(`snapshot object ${key} not found in ${this.name}`);
      // An empty object answers a ranged GET with 416 (InvalidRange); it is still an object.
      if (statusOf(err) === 416 && !range) return new Uint8Array(0);
      this.#fail("get", key, err);
    }
  }

  /** Fill out[done..] from object bytes [base + done, ...) with parallel ranged GETs. */
  async #fillParts(Key: string, out: Uint8Array, base: number, done: number, signal?: AbortSignal) {
    const ranges: number[] = [];
    for (let at = done; at < out.length; at += this.#partBytes) ranges.push(at);
    let next = 0;
    const worker = async () => {
      while (next < ranges.length) {
        const at = ranges[next++];
        const length = Math.min(this.#partBytes, out.length - at);
        const { bytes } = await this.#getRange(Key, { offset: base + at, length }, signal);
        out.set(bytes, at);
      }
    };
    await Promise.all(
      Array.from({ length: Math.min(this.#getConcurrency, ranges.length) }, worker),
    );
  }

  async head(key: string): Promise<ObjectInfo | null> {
    try {
      const out = await this.client.send(
        new HeadObjectCommand({ Bucket: this.#bucket, Key: this.#key(key) }),
      );
      return { key, size: out.ContentLength ?? 0, lastModified: out.LastModified?.getTime() ?? 0 };
    } catch (err) {
      if (isNotFound(err)) return null;
      this.#fail("head", key, err);
    }
  }

  async delete(key: string): Promise<void> {
    try {
      await this.client.send(
        new DeleteObjectCommand({ Bucket: this.#bucket, Key: this.#key(key) }),
      );
    } catch (err) {
      if (isNotFound(err)) return;
      this.#fail("delete", key, err);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    validatePrefix(prefix);
    let token: string | undefined;
    do {
      let out: ListObjectsV2CommandOutput;
      try {
        out = await this.client.send(
          new ListObjectsV2Command({
            Bucket: this.#bucket,
            Prefix: this.#prefix + prefix,
            ContinuationToken: token,
          }),
        );
      } catch (err) {
        this.#fail("list", prefix, err);
      }
      for (const o of out.Contents ?? []) {
        if (!o.Key) continue;
        yield {
          key: o.Key.slice(this.#prefix.length),
          size: o.Size ?? 0,
          lastModified: o.LastModified?.getTime() ?? 0,
        };
      }
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
  }

  async move(from: string, to: string): Promise<void> {
    const source = this.#key(from);
    try {
      // Keys are validated to [A-Za-z0-9._/-], so the copy source needs no further escaping.
      await this.client.send(
        new CopyObjectCommand({
          Bucket: this.#bucket,
          Key: this.#key(to),
          CopySource: `${this.#bucket}/${source}`,
        }),
      );
    } catch (err) {
      if (isNotFound(err))
        throw new NotFoundError(`snapshot object ${from} not found in ${this.name}`);
      this.#fail("move", from, err);
    }
    await this.delete(from);
  }
}
