// The local-directory SnapshotStore and `--store` parsing.
import { execFileSync } from "node:child_process";
import { mkdir, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { InvalidInputError, NotFoundError } from "../core/errors.ts";
import { StoreError, validateKey } from "../core/kv/store.ts";
import { parseStoreSpec } from "../core/kv/store-spec.ts";
import { DirectoryStore, defaultSnapshotDir, openStore } from "../core/node/snapshot-dir.ts";
import { scratchDir } from "./support/models.ts";

describe("snapshot keys", () => {
  it("accepts plain segmented keys", () => {
    for (const k of ["a", "kv/v1/abc/def", "quarantine/kv/x.y-z_1"]) expect(validateKey(k)).toBe(k);
  });
  it("refuses every key that could leave the directory or mean something to a filesystem", () => {
    const bad = [
      "",
      "/etc/passwd",
      "../x",
      "a/../../x",
      "a/./b",
      ".",
      "..",
      "a//b",
      "a/",
      "a\\..\\b",
      "a\0b",
      "C:/x",
      "a b",
      "%2e%2e/x",
      "é",
      "x".repeat(513),
    ];
    for (const k of bad) expect(() => validateKey(k), JSON.stringify(k)).toThrow(InvalidInputError);
  });
});

describe("DirectoryStore", () => {
  it("puts atomically and reads whole objects and ranges", async () => {
    const dir = scratchDir("store");
    const st = new DirectoryStore(dir);
    const data = Uint8Array.from({ length: 5000 }, (_, i) => i & 0xff);
    await st.put("a/b/c", data);
    expect(await st.get("a/b/c")).toEqual(data);
    expect(await st.get("a/b/c", { offset: 4000, length: 1000 })).toEqual(data.subarray(4000));
    await expect(st.get("a/b/c", { offset: 4500, length: 1000 })).rejects.toThrow(/beyond/);
    // No temp file is left behind, and overwriting replaces the object whole.
    expect(await readdir(join(dir, ".tmp"))).toEqual([]);
    await st.put("a/b/c", data.subarray(0, 10));
    expect((await st.head("a/b/c"))?.size).toBe(10);
    await expect(st.get("a/none")).rejects.toBeInstanceOf(NotFoundError);
    expect(await st.head("a/none")).toBeNull();
  });

  it("a path that is not a regular file is a logged miss, and the next put repairs it", async () => {
    const dir = scratchDir("store");
    const warnings: string[] = [];
    const store = new DirectoryStore(dir, {
      logger: { debug() {}, warn: (m) => warnings.push(m) },
    });
    const outside = join(scratchDir("outside"), "secret");
    await writeFile(outside, "not a snapshot");
    const makers: [string, (path: string) => Promise<void>][] = [
      ["a directory", async (p) => void (await mkdir(p))],
      ["a symbolic link", (p) => symlink(outside, p)],
      ["a special file", async (p) => void execFileSync("mkfifo", [p])],
    ];
    for (const [what, make] of makers) {
      const key = `kv/${what.replace(/ /g, "-")}`;
      await store.put(key, new Uint8Array([1, 2, 3]));
      await rm(join(dir, key));
      await make(join(dir, key));
      warnings.length = 0;
      await expect(store.get(key), what).rejects.toBeInstanceOf(NotFoundError);
      expect(warnings.join("\n")).toMatch(new RegExp(`${key} is ${what}, not a file`));
      expect(await store.head(key)).toBeNull();
      await store.put(key, new Uint8Array([4, 5]));
      expect(warnings.join("\n")).toMatch(new RegExp(`replacing ${what} at snapshot path ${key}`));
      expect([...(await store.get(key))]).toEqual([4, 5]);
    }
    expect(await readFile(outside, "utf8")).toBe("not a snapshot"); // the link was not followed
    // A directory with something inside is not ours to delete: the put fails, naming the key.
    await rm(join(dir, "kv/a-directory"));
    await mkdir(join(dir, "kv/a-directory/inner"), { recursive: true });
    await expect(store.put("kv/a-directory", new Uint8Array([6]))).rejects.toThrow(
      /writing snapshot kv\/a-directory .* failed/,
    );
    expect((await readdir(join(dir, "kv/a-directory"))).sort()).toEqual(["inner"]);
  });

  it("create() says 'exists' only when the object exists, not when its folder cannot be made", async () => {
    const dir = scratchDir("store");
    const store = new DirectoryStore(dir);
    await writeFile(join(dir, "nonces"), "a file where a folder should be");
    await expect(store.create("nonces/ab", new Uint8Array([1]))).rejects.toBeInstanceOf(StoreError);
    expect(await store.create("other/ab", new Uint8Array([1]))).toBe(true);
    expect(await store.create("other/ab", new Uint8Array([2]))).toBe(false);
    expect((await readdir(join(dir, ".tmp"))).length).toBe(0); // no temp file left behind
  });

  it("refuses keys outside the directory on every operation", async () => {
    const dir = scratchDir("store");
    const st = new DirectoryStore(join(dir, "inner"));
    await writeFile(join(dir, "secret"), "x");
    const k = "../secret";
    await expect(st.get(k)).rejects.toBeInstanceOf(InvalidInputError);
    await expect(st.put(k, new Uint8Array(1))).rejects.toBeInstanceOf(InvalidInputError);
    await expect(st.head(k)).rejects.toBeInstanceOf(InvalidInputError);
    await expect(st.delete(k)).rejects.toBeInstanceOf(InvalidInputError);
    await expect(st.move("a", k)).rejects.toBeInstanceOf(InvalidInputError);
    const listed = [];
    await expect(async () => {
      for await (const o of st.list("../")) listed.push(o);
    }).rejects.toBeInstanceOf(InvalidInputError);
  });

  it("lists by prefix, skipping temp files, and moves and deletes", async () => {
    const dir = scratchDir("store");
    const st = new DirectoryStore(dir);
    for (const k of ["kv/a/1", "kv/a/2", "kv/b/1", "kvx", "other/1"])
      await st.put(k, new Uint8Array(3));
    await mkdir(join(dir, ".tmp"), { recursive: true });
    await writeFile(join(dir, ".tmp", "junk.part"), "x");
    const keys = async (p: string) => {
      const out: string[] = [];
      for await (const o of st.list(p)) out.push(o.key);
      return out.sort();
    };
    expect(await keys("kv/a/")).toEqual(["kv/a/1", "kv/a/2"]);
    expect(await keys("kv")).toEqual(["kv/a/1", "kv/a/2", "kv/b/1", "kvx"]);
    expect(await keys("")).toEqual(["kv/a/1", "kv/a/2", "kv/b/1", "kvx", "other/1"]);
    expect(await keys("nothing/")).toEqual([]);
    await st.move("kv/a/1", "quarantine/kv/a/1");
    expect(await keys("quarantine/")).toEqual(["quarantine/kv/a/1"]);
    await expect(st.move("kv/a/1", "x")).rejects.toBeInstanceOf(NotFoundError);
    await st.delete("kv/a/2");
    await st.delete("kv/a/2");
    expect(await keys("kv/a")).toEqual([]);
  });
});

describe("store specs", () => {
  it("parses directories and s3 URLs with endpoint and path style from the environment", () => {
    expect(parseStoreSpec("/tmp/x", {})).toEqual({ kind: "dir", path: "/tmp/x" });
    expect(parseStoreSpec("file:///tmp/a%20b", {})).toEqual({ kind: "dir", path: "/tmp/a b" });
    expect(parseStoreSpec("s3://my-bucket/some/prefix", {})).toEqual({
      kind: "s3",
      bucket: "my-bucket",
      prefix: "some/prefix/",
      endpoint: undefined,
      forcePathStyle: false,
      region: undefined,
    });
    const env = { AWS_ENDPOINT_URL_S3: "http://minio:9000", AWS_REGION: "eu-west-1" };
    expect(parseStoreSpec("s3://b12", env)).toMatchObject({
      prefix: "",
      endpoint: "http://minio:9000",
      forcePathStyle: true,
      region: "eu-west-1",
    });
    expect(
      parseStoreSpec("s3://b12", {
        ...env,
        ULTRALONG_S3_ENDPOINT: "http://x:1",
        ULTRALONG_S3_PATH_STYLE: "0",
      }),
    ).toMatchObject({
      endpoint: "http://x:1",
      forcePathStyle: false,
    });
    expect(() => parseStoreSpec("s3://Bad_Bucket/x", {})).toThrow(InvalidInputError);
    expect(() => parseStoreSpec("gs://b/x", {})).toThrow(/unsupported/);
  });

  it("defaults to the user's cache directory", () => {
    expect(defaultSnapshotDir({ XDG_CACHE_HOME: "/c" })).toBe("/c/ultralong/snapshots");
    expect(defaultSnapshotDir({ HOME: "/home/u" })).toBe("/home/u/.cache/ultralong/snapshots");
    expect(openStore(undefined, { env: { XDG_CACHE_HOME: "/c" } }).name).toBe(
      "/c/ultralong/snapshots",
    );
  });
});
