// Where a model directory's fingerprint is remembered: `.ultralong-fingerprint.json` beside the
// model, or, when the directory is read-only, a file under the user cache directory named by the
// SHA-256 of the model directory's absolute path. An entry is used only if every input file's size
// and mtime still match (core/model/fingerprint.ts picks the files). A cache that cannot be written
// anywhere costs a recomputation next time, never a wrong answer, so write failures are ignored.

import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { toHex } from "../hash/hex.ts";
import {
  FINGERPRINT_VERSION,
  type FileStamp,
  type FingerprintCache,
  sameStamps,
} from "../model/fingerprint.ts";
import { createNodeSha256 } from "./hasher.ts";

export const CACHE_FILE = ".ultralong-fingerprint.json";

interface Entry {
  version: string;
  dir: string;
  files: FileStamp[];
  fingerprint: string;
}

/** $XDG_CACHE_HOME, ~/Library/Caches, %LOCALAPPDATA%, else ~/.cache; then /ultralong. */
export function userCacheDir(
  env: NodeJS.ProcessEnv = process.env,
  platform = process.platform,
): string {
  const base =
    env.XDG_CACHE_HOME ||
    (platform === "darwin"
      ? join(homedir(), "Library", "Caches")
      : platform === "win32"
        ? env.LOCALAPPDATA || join(homedir(), "AppData", "Local")
        : join(homedir(), ".cache"));
  return join(base, "ultralong");
}

export interface DirectoryFingerprintCacheOptions {
  /** Fallback root for read-only model directories (default: userCacheDir()). */
  cacheDir?: string;
}

export class DirectoryFingerprintCache implements FingerprintCache {
  readonly dir: string;
  /** The file beside the model. */
  readonly besideFile: string;
  /** The fallback file under the user cache directory. */
  readonly fallbackFile: string;

  constructor(modelDir: string, opts: DirectoryFingerprintCacheOptions = {}) {
    this.dir = resolve(modelDir);
    this.besideFile = join(this.dir, CACHE_FILE);
    const h = createNodeSha256();
    h.update(new TextEncoder().encode(this.dir));
    const key = toHex(h.digest());
    this.fallbackFile = join(opts.cacheDir ?? userCacheDir(), "fingerprints", `${key}.json`);
  }

  async #read(file: string, stamps: FileStamp[]): Promise<string | null> {
    try {
      const e = JSON.parse(await readFile(file, "utf8")) as Entry;
      if (
        e.version === FINGERPRINT_VERSION &&
        e.dir === this.dir &&
        Array.isArray(e.files) &&
        sameStamps(e.files, stamps) &&
        typeof e.fingerprint === "string" &&
        /^[0-9a-f]{64}$/.test(e.fingerprint)
      ) {
        return e.fingerprint;
      }
    } catch {
      // Absent or unreadable: a miss.
    }
    return null;
  }

  async get(stamps: FileStamp[]): Promise<string | null> {
    return (
      (await this.#read(this.besideFile, stamps)) ?? (await this.#read(this.fallbackFile, stamps))
    );
  }

  async put(stamps: FileStamp[], fingerprint: string): Promise<void> {
    const entry: Entry = {
      version: FINGERPRINT_VERSION,
      dir: this.dir,
      files: stamps,
      fingerprint,
    };
    const text = `${JSON.stringify(entry, null, 2)}\n`;
    if (await writeAtomic(this.besideFile, text)) return;
    await mkdir(join(this.fallbackFile, ".."), { recursive: true }).catch(() => {});
    await writeAtomic(this.fallbackFile, text);
  }
}

async function writeAtomic(file: string, text: string): Promise<boolean> {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    await writeFile(tmp, text);
    await rename(tmp, file);
    return true;
  } catch {
    return false;
  }
}
