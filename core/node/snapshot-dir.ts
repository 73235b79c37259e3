// The local-directory SnapshotStore (the embedded default) and `openStore(spec)`, the Node entry
// that turns a `--store` value into a store.
//
// Layout: <root>/<key> with '/' in keys as directories; writes go to <root>/.tmp/<random>, then are
// renamed over the final path (atomic on POSIX within one filesystem), so a reader never sees half
// an object. Keys pass validateKey, so no key names a path outside root.
//
// No fsync by default: a snapshot is a cache entry. After a power cut a renamed-but-unflushed file
// can come back empty or short on some filesystems; the reader's size and SHA-256 checks turn that
// into a miss and a quarantine, never wrong KV. fsync made a 64 MiB save 2.3x slower in the run
// docs/snapshot-format.md records (`npm run bench -- snapshots`: local.saveMBps against
// local.fsyncSaveMBps); `{ fsync: true }` buys durability across power loss.

import { randomBytes } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { link, lstat, mkdir, open, readdir, rename, rm, rmdir, unlink } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, join, resolve, sep } from "node:path";
import { assert, NotFoundError } from "../errors.ts";
import { S3Store, type S3StoreOptions } from "../kv/s3-store.ts";
import {
  type ByteRange,
  defaultLogger,
  type ObjectInfo,
  type SnapshotLogger,
  type SnapshotStore,
  StoreError,
  validateKey,
  validatePrefix,
} from "../kv/store.ts";
import { parseStoreSpec } from "../kv/store-spec.ts";

const TMP = ".tmp";
const READ_NO_FOLLOW = fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK;

function isCode(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException)?.code === code;
}

/** A new file (mode 0600) holding `bytes`, flushed to the disk when `fsync`. */
async function writeWhole(path: string, bytes: Uint8Array, fsync: boolean): Promise<void> {
  const fh = await open(path, "w", 0o600);
  try {
    await fh.writeFile(bytes);
    if (fsync) await fh.sync();
  } finally {
    await fh.close();
  }
}

export class DirectoryStore implements SnapshotStore {
  readonly name: string;
  readonly root: string;

  readonly #fsync: boolean;
  readonly #log: SnapshotLogger;

  constructor(root: string, opts: { fsync?: boolean; logger?: SnapshotLogger } = {}) {
    this.root = resolve(root);
    this.#fsync = opts.fsync ?? false;
    this.#log = opts.logger ?? defaultLogger;
    this.name = this.root;
  }

  /**
   * What sits at an object's path when it is not a regular file (a directory, a symlink, a FIFO,
   * a socket, a device), else null. Reads treat such a path as absent (get() checks the opened
   * descriptor, not this); the next put replaces it.
   */
  async #foreign(path: string): Promise<string | null> {
    try {
      const s = await lstat(path);
      if (s.isFile()) return null;
      return s.isDirectory()
        ? "a directory"
        : s.isSymbolicLink()
          ? "a symbolic link"
          : "a special file";
    } catch (err) {
      if (isCode(err, "ENOENT")) return null;
      throw err;
    }
  }

  #path(key: string): string {
    const path = resolve(this.root, validateKey(key));
    // validateKey already excludes "..", absolute paths and separators other than '/'; this is the
    // invariant it guarantees, checked once more where it matters.
    assert(path.startsWith(this.root + sep), "snapshot key resolves inside the store");
    return path;
  }

  /**
   * Writes `bytes` to a fresh temp file under <root>/.tmp (and the object's parent directory), then
   * runs `commit(tmp)`, which moves or links it into place; the temp file is gone afterwards.
   */
  async #viaTemp(path: string, bytes: Uint8Array, commit: (tmp: string) => Promise<void>) {
    const tmpDir = join(this.root, TMP);
    const tmp = join(tmpDir, `${randomBytes(12).toString("hex")}.part`);
    try {
      await mkdir(tmpDir, { recursive: true });
      await mkdir(dirname(path), { recursive: true });
      await writeWhole(tmp, bytes, this.#fsync);
      await commit(tmp);
    } finally {
      await rm(tmp, { force: true });
    }
  }

  async put(key: string, bytes: Uint8Array): Promise<void> {
    const path = this.#path(key);
    try {
      await this.#viaTemp(path, bytes, async (tmp) => {
        const foreign = await this.#foreign(path);
        if (foreign) {
          this.#log.warn(`replacing ${foreign} at snapshot path ${key} with the object`, { key });
          // A directory is removed only when empty: whatever is inside is not ours to delete.
          await (foreign === "a directory" ? rmdir(path) : unlink(path));
        }
        await rename(tmp, path);
      });
    } catch (err) {
      throw new StoreError(
        `writing snapshot ${key} to ${this.root} failed: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }

  async create(key: string, bytes: Uint8Array): Promise<boolean> {
    const path = this.#path(key);
    try {
      // link(2) fails with EEXIST when anything is at `path`, atomically: of two processes
      // creating the same key, exactly one wins, and a reader never sees half an object.
      let created = true;
      await this.#viaTemp(path, bytes, (tmp) =>
        link(tmp, path).catch((err) => {
          if (!isCode(err, "EEXIST")) throw err;
          created = false;
        }),
      );
      return created;
    } catch (err) {
      throw new StoreError(`creating ${key} in ${this.root} failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  async get(key: string, range?: ByteRange): Promise<Uint8Array> {
    const path = this.#path(key);
    let fh: Awaited<ReturnType<typeof open>>;
    try {
      // One open that cannot be raced: O_NOFOLLOW refuses a symlink (ELOOP), O_NONBLOCK keeps a
      // FIFO from blocking the thread, and the type is checked on the opened descriptor itself.
      fh = await open(path, READ_NO_FOLLOW);
    } catch (err) {
      if (isCode(err, "ENOENT")) {
        throw new NotFoundError(`snapshot object ${key} not found in ${this.root}`);
      }
      if (isCode(err, "ELOOP")) throw this.#foreignMiss(key, "a symbolic link");
      throw new StoreError(`reading snapshot ${key}: ${(err as Error).message}`, { cause: err });
    }
    const kind = await fh.stat();
    if (!kind.isFile()) {
      await fh.close();
      throw this.#foreignMiss(key, kind.isDirectory() ? "a directory" : "a special file");
    }
    try {
      const size = kind.size;
      const offset = range?.offset ?? 0;
      const length = range?.length ?? size;
      if (offset + length > size) {
        throw new StoreError(`range ${offset}+${length} is beyond ${key} (${size} bytes)`);
      }
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(out, done, length - done, offset + done);
        if (bytesRead === 0) throw new StoreError(`snapshot ${key} shrank while reading`);
        done += bytesRead;
      }
      return out;
    } finally {
      await fh.close();
    }
  }

  /** The miss for a path that holds something other than a regular file, logged. */
  #foreignMiss(key: string, what: string): NotFoundError {
    this.#log.warn(`snapshot path ${key} is ${what}, not a file: a miss until the next save`, {
      key,
    });
    return new NotFoundError(`snapshot object ${key} not found in ${this.root} (${what})`);
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const path = this.#path(key);
    try {
      const s = await lstat(path);
      return s.isFile() ? { key, size: s.size, lastModified: s.mtimeMs } : null;
    } catch (err) {
      if (isCode(err, "ENOENT")) return null;
      throw new StoreError(`stat of snapshot ${key}: ${(err as Error).message}`, { cause: err });
    }
  }

  async delete(key: string): Promise<void> {
    const path = this.#path(key);
    try {
      await unlink(path);
    } catch (err) {
      if (!isCode(err, "ENOENT")) {
        throw new StoreError(`deleting snapshot ${key}: ${(err as Error).message}`, { cause: err });
      }
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    validatePrefix(prefix);
    // Walk only below the deepest directory the prefix names.
    const slash = prefix.lastIndexOf("/");
    const base = slash < 0 ? "" : prefix.slice(0, slash);
    yield* this.#walk(base, prefix);
  }

  async *#walk(dirKey: string, prefix: string): AsyncIterable<ObjectInfo> {
    let entries: import("node:fs").Dirent[];
    try {
      entries = await readdir(dirKey ? join(this.root, dirKey) : this.root, {
        withFileTypes: true,
      });
    } catch (err) {
      if (isCode(err, "ENOENT") || isCode(err, "ENOTDIR")) return;
      throw new StoreError(`listing ${this.root}: ${(err as Error).message}`, { cause: err });
    }
    for (const e of entries) {
      if (!dirKey && e.name === TMP) continue;
      const key = dirKey ? `${dirKey}/${e.name}` : e.name;
      if (e.isDirectory()) {
        if (key.startsWith(prefix) || prefix.startsWith(`${key}/`)) yield* this.#walk(key, prefix);
      } else if (e.isFile() && key.startsWith(prefix)) {
        const info = await this.head(key).catch(() => null);
        if (info) yield info;
      }
    }
  }

  async move(from: string, to: string): Promise<void> {
    const source = this.#path(from);
    const target = this.#path(to);
    await mkdir(dirname(target), { recursive: true });
    try {
      await rename(source, target);
    } catch (err) {
      if (isCode(err, "ENOENT"))
        throw new NotFoundError(`snapshot object ${from} not found in ${this.root}`);
      throw new StoreError(`moving snapshot ${from}: ${(err as Error).message}`, { cause: err });
    }
  }
}

/** ~/.cache/ultralong/snapshots, or $XDG_CACHE_HOME/ultralong/snapshots. */
export function defaultSnapshotDir(env: Record<string, string | undefined> = process.env): string {
  const cache = env.XDG_CACHE_HOME || join(env.HOME || homedir(), ".cache");
  return join(cache, "ultralong", "snapshots");
}

/**
 * A store from a `--store` value (directory, file://, or s3://bucket/prefix; see
 * core/kv/store-spec.ts for the environment it reads). No spec: the default cache directory.
 */
export function openStore(
  spec?: string,
  opts: { env?: Record<string, string | undefined>; s3?: Partial<S3StoreOptions> } = {},
): SnapshotStore {
  const env = opts.env ?? process.env;
  const parsed = parseStoreSpec(spec || defaultSnapshotDir(env), env);
  if (parsed.kind === "dir") return new DirectoryStore(parsed.path);
  return new S3Store({
    bucket: parsed.bucket,
    prefix: parsed.prefix,
    endpoint: parsed.endpoint,
    forcePathStyle: parsed.forcePathStyle,
    region: parsed.region,
    // The SDK reads process.env itself; an explicit env (tests, child configs) must be passed on.
    credentials:
      env !== process.env && env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY
        ? {
            accessKeyId: env.AWS_ACCESS_KEY_ID,
            secretAccessKey: env.AWS_SECRET_ACCESS_KEY,
            sessionToken: env.AWS_SESSION_TOKEN,
          }
        : undefined,
    ...opts.s3,
  });
}
