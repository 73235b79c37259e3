// Reading model directories: every kind of bad directory gives its one-line error, through
// loadModel and through the real `ultralong inspect` process; loading reads headers only; the
// fingerprint covers every weight byte and is served from its cache.

import { createHash, randomBytes } from "node:crypto";
import {
  cp,
  mkdir,
  readFile,
  rm,
  stat,
  truncate,
  unlink,
  utimes,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { UltralongError } from "../core/errors.ts";
import { fromHex, timingSafeEqualHex, toHex } from "../core/hash/hex.ts";
import { createSha256, sha256, sha256Hex, sha256Sync } from "../core/hash/sha256.ts";
import type { ByteSource, ModelFiles } from "../core/io/byte-source.ts";
import type { GenerateOptions } from "../core/model/generate.ts";
import { loadModel } from "../core/model/load.ts";
import { CACHE_FILE, DirectoryFingerprintCache } from "../core/node/fingerprint-cache.ts";
import { createNodeSha256, nodeSha256 } from "../core/node/hasher.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { DirectoryModelFiles } from "../core/node/model-files.ts";
import { runUltralong, scratchDir, testModelDir } from "./support/models.ts";

// 1 layer, hidden 32, vocab 256, F32: a few hundred KB, cheap to copy once per case.
const BASE: GenerateOptions = {
  layers: 1,
  hidden: 32,
  heads: 2,
  kvHeads: 1,
  ffn: 64,
  vocab: 256,
  seed: 3,
};
const SHARDED: GenerateOptions = { ...BASE, shards: 2 };

type Header = Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;

/** Rewrites a safetensors file's header (keeping the data region), optionally appending bytes. */
async function editHeader(file: string, edit: (h: Header) => void, append = 0): Promise<void> {
  const buf = await readFile(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Header;
  edit(header);
  let json = Buffer.from(JSON.stringify(header));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  await writeFile(file, Buffer.concat([len, json, buf.subarray(8 + n), Buffer.alloc(append)]));
}

async function editJson(file: string, edit: (j: Record<string, unknown>) => void): Promise<void> {
  const j = JSON.parse(await readFile(file, "utf8"));
  edit(j);
  await writeFile(file, JSON.stringify(j, null, 2));
}

async function copyOf(opts: GenerateOptions): Promise<string> {
  const dir = scratchDir("bad");
  await cp(await testModelDir(opts), dir, { recursive: true });
  return dir;
}

interface BadCase {
  name: string;
  from: GenerateOptions;
  /** Breaks the copy in `dir`. */
  breakIt(dir: string): Promise<void>;
  /** The message, with DIR for the directory. */
  message: RegExp | ((dir: string) => RegExp);
  code: string;
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const at = (file: string, rest: string) => (dir: string) =>
  new RegExp(`^${esc(join(dir, file))}: ${rest}$`);
const single = (dir: string) => join(dir, "model.safetensors");

const cases: BadCase[] = [
  {
    name: "truncated file",
    from: BASE,
    breakIt: async (dir) => truncate(single(dir), (await stat(single(dir))).size - 10),
    message: at(
      "model.safetensors",
      "tensor model\\.norm\\.weight: truncated file or offsets past the end: .*",
    ),
    code: "invalid_format",
  },
  {
    name: "header offsets past the end",
    from: BASE,
    breakIt: (dir) =>
      editHeader(single(dir), (h) => {
        const [b, e] = h["model.norm.weight"].data_offsets;
        h["model.norm.weight"].data_offsets = [b + 64, e + 64];
      }),
    message: at(
      "model.safetensors",
      "tensor model\\.norm\\.weight: truncated file or offsets past the end: .*",
    ),
    code: "invalid_format",
  },
  {
    name: "overlapping header offsets",
    from: BASE,
    breakIt: (dir) =>
      editHeader(single(dir), (h) => {
        h["model.layers.0.input_layernorm.weight"].data_offsets = [0, 32 * 4];
      }),
    message: at(
      "model.safetensors",
      "tensor (model\\.layers\\.0\\.input_layernorm\\.weight|lm_head\\.weight): data overlaps tensor (model\\.layers\\.0\\.input_layernorm\\.weight|lm_head\\.weight)",
    ),
    code: "invalid_format",
  },
  {
    name: "absurd header length",
    from: BASE,
    breakIt: async (dir) => {
      const buf = await readFile(single(dir));
      buf.writeBigUInt64LE(2n ** 40n, 0);
      await writeFile(single(dir), buf);
    },
    message: at(
      "model.safetensors",
      "header length 1099511627776 is absurd \\(limit 100000000 bytes\\)",
    ),
    code: "invalid_format",
  },
  {
    name: "malformed header JSON",
    from: BASE,
    breakIt: async (dir) => {
      const buf = await readFile(single(dir));
      buf.write('{"model.norm.weight": {', 8, "utf8");
      await writeFile(single(dir), buf);
    },
    message: at("model.safetensors", "malformed header JSON \\(.+\\)"),
    code: "invalid_format",
  },
  {
    name: "unknown dtype",
    from: BASE,
    breakIt: (dir) =>
      editHeader(single(dir), (h) => {
        h["model.norm.weight"].dtype = "I64";
      }),
    message: at(
      "model.safetensors",
      "tensor model\\.norm\\.weight: unknown or unsupported dtype I64 \\(want F32, BF16 or F16\\)",
    ),
    code: "invalid_format",
  },
  {
    name: "dtype that disagrees with config.json",
    from: { ...BASE, dtype: "bf16" },
    breakIt: (dir) =>
      editJson(join(dir, "config.json"), (j) => {
        j.torch_dtype = "float32";
      }),
    message: at(
      "model.safetensors",
      "tensor lm_head\\.weight: dtype BF16 cannot hold the torch_dtype float32 that config\\.json declares",
    ),
    code: "invalid_format",
  },
  {
    name: "shape that disagrees with config.json",
    from: BASE,
    breakIt: (dir) =>
      editJson(join(dir, "config.json"), (j) => {
        j.intermediate_size = 96;
      }),
    message: at(
      "model.safetensors",
      "tensor model\\.layers\\.0\\.mlp\\.down_proj\\.weight: shape \\[32,64\\] but config\\.json implies \\[32,96\\]",
    ),
    code: "invalid_format",
  },
  {
    name: "missing tensor",
    from: BASE,
    breakIt: (dir) =>
      editHeader(single(dir), (h) => {
        delete h["model.layers.0.post_attention_layernorm.weight"];
      }),
    message: (dir) =>
      new RegExp(
        `^${esc(dir)}: tensor model\\.layers\\.0\\.post_attention_layernorm\\.weight: missing from the checkpoint$`,
      ),
    code: "invalid_format",
  },
  {
    name: "unexpected tensor",
    from: BASE,
    breakIt: async (dir) => {
      const size = (await stat(single(dir))).size;
      await editHeader(
        single(dir),
        (h) => {
          const end = Math.max(...Object.values(h).flatMap((t) => t.data_offsets ?? []));
          h["model.layers.0.self_attn.rotary_emb.inv_freq"] = {
            dtype: "F32",
            shape: [4],
            data_offsets: [end, end + 16],
          };
          h["model.layers.0.self_attn.extra.weight"] = {
            dtype: "F32",
            shape: [4],
            data_offsets: [end + 16, end + 32],
          };
        },
        32,
      );
      expect((await stat(single(dir))).size).toBeGreaterThan(size);
    },
    message: at(
      "model.safetensors",
      "tensor model\\.layers\\.0\\.self_attn\\.extra\\.weight: unexpected \\(LlamaForCausalLM with this config\\.json has no such tensor\\)",
    ),
    code: "invalid_format",
  },
  {
    name: "lm_head although config.json ties the embeddings",
    from: BASE,
    breakIt: (dir) =>
      editJson(join(dir, "config.json"), (j) => {
        j.tie_word_embeddings = true;
      }),
    message: at(
      "model.safetensors",
      "tensor lm_head\\.weight: unexpected \\(config\\.json has tie_word_embeddings, so there must be no lm_head\\)",
    ),
    code: "invalid_format",
  },
  {
    name: "index naming a missing shard",
    from: SHARDED,
    breakIt: (dir) => unlink(join(dir, "model-00002-of-00002.safetensors")),
    message: at(
      "model.safetensors.index.json",
      "tensor \\S+: names shard model-00002-of-00002\\.safetensors, which is missing",
    ),
    code: "invalid_format",
  },
  {
    name: "shard holding a tensor the index does not name",
    from: SHARDED,
    breakIt: (dir) =>
      editJson(join(dir, "model.safetensors.index.json"), (j) => {
        delete (j.weight_map as Record<string, string>)["model.norm.weight"];
      }),
    message: at(
      "model-00002-of-00002.safetensors",
      "tensor model\\.norm\\.weight: not in the index",
    ),
    code: "invalid_format",
  },
  {
    name: "malformed index JSON",
    from: SHARDED,
    breakIt: (dir) => writeFile(join(dir, "model.safetensors.index.json"), '{"weight_map": '),
    message: at("model.safetensors.index.json", "malformed JSON \\(.+\\)"),
    code: "invalid_format",
  },
  {
    name: "no safetensors at all",
    from: BASE,
    breakIt: (dir) => unlink(single(dir)),
    message: (dir) =>
      new RegExp(`^${esc(dir)}: no model\\.safetensors or model\\.safetensors\\.index\\.json$`),
    code: "not_found",
  },
  {
    name: "no config.json",
    from: BASE,
    breakIt: (dir) => unlink(join(dir, "config.json")),
    message: at("config.json", "no such file"),
    code: "not_found",
  },
];

describe("bad model directories", () => {
  const broken = new Map<string, Promise<string>>();
  const brokenDir = (c: BadCase) => {
    let p = broken.get(c.name);
    if (!p) {
      p = copyOf(c.from).then(async (dir) => {
        await c.breakIt(dir);
        return dir;
      });
      broken.set(c.name, p);
    }
    return p;
  };
  const expected = (c: BadCase, dir: string) =>
    typeof c.message === "function" ? c.message(dir) : c.message;

  describe("through loadModel", () => {
    for (const c of cases) {
      it(`${c.name}: one line naming the file`, async () => {
        const dir = await brokenDir(c);
        const err = await loadModel(new DirectoryModelFiles(dir)).then(
          () => null,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(UltralongError);
        const e = err as UltralongError;
        expect(e.code).toBe(c.code);
        expect(e.message).not.toContain("\n");
        expect(e.message).toMatch(expected(c, dir));
      });
    }
  });

  describe.concurrent("through `ultralong inspect`", () => {
    for (const c of cases) {
      it(`${c.name}: exit 1 and the same line on stderr`, async () => {
        const dir = await brokenDir(c);
        const r = await runUltralong(["inspect", dir]);
        expect(r.status).toBe(1);
        expect(r.stdout).toBe("");
        const lines = r.stderr.split("\n").filter((l) => l !== "");
        expect(lines).toHaveLength(1);
        expect(lines[0].startsWith("ultralong inspect: ")).toBe(true);
        expect(lines[0].slice("ultralong inspect: ".length)).toMatch(expected(c, dir));
      });
    }
  });

  it("a good copy of each base loads (so the failures above come from the breakage)", async () => {
    for (const opts of [BASE, SHARDED]) {
      const m = await loadModel(new DirectoryModelFiles(await copyOf(opts)));
      expect(m.weights.tensors()).toHaveLength(1 + 9 + 2);
    }
  });
});

/** ModelFiles over a directory that counts the bytes read through open()ed sources. */
class CountingFiles implements ModelFiles {
  readonly inner: DirectoryModelFiles;
  rangeBytes = 0;
  constructor(dir: string) {
    this.inner = new DirectoryModelFiles(dir);
  }
  get name() {
    return this.inner.name;
  }
  list() {
    return this.inner.list();
  }
  readText(f: string) {
    return this.inner.readText(f);
  }
  readBytes(f: string) {
    return this.inner.readBytes(f);
  }
  stat(f: string) {
    return this.inner.stat(f);
  }
  async open(f: string): Promise<ByteSource> {
    const src = await this.inner.open(f);
    return {
      name: src.name,
      size: () => src.size(),
      read: async (offset, length) => {
        this.rangeBytes += length;
        return src.read(offset, length);
      },
    };
  }
}

describe("loading", () => {
  it("reads only safetensors headers, not weights", async () => {
    const dir = await testModelDir(SHARDED);
    const files = new CountingFiles(dir);
    const m = await loadModel(files);
    let headerBytes = 0;
    for (const f of ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]) {
      const buf = await readFile(join(dir, f));
      headerBytes += 8 + Number(buf.readBigUInt64LE(0));
    }
    expect(files.rangeBytes).toBe(headerBytes);
    const norm = await m.weights.read("model.norm.weight", "f32");
    expect(norm.length).toBe(32);
    expect(files.rangeBytes).toBe(headerBytes + 32 * 4);
  });

  it("refuses a missing directory as such, in one line", async () => {
    const dir = join(scratchDir("gone"), "no-such-model");
    const err = await loadModelDir(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UltralongError);
    expect((err as UltralongError).code).toBe("not_found");
    expect((err as Error).message).toBe(`${dir}: no such model directory`);
  });

  it("loads F32 weights under a bf16 torch_dtype, as published checkpoints come", async () => {
    const dir = await copyOf(BASE);
    await editJson(join(dir, "config.json"), (j) => {
      j.torch_dtype = "bfloat16";
    });
    const m = await loadModel(new DirectoryModelFiles(dir));
    expect(m.config.torchDtype).toBe("bf16");
    expect(m.weights.tensors().every((t) => t.dtype === "f32")).toBe(true);
  });

  it("takes eos ids from config.json and generation_config.json, and sampling defaults", async () => {
    const dir = await copyOf(BASE);
    await editJson(join(dir, "config.json"), (j) => {
      j.eos_token_id = 2;
    });
    await writeFile(
      join(dir, "generation_config.json"),
      JSON.stringify({ eos_token_id: [5, 2], temperature: 0.7 }),
    );
    const m = await loadModel(new DirectoryModelFiles(dir));
    expect(m.generation).toEqual({ eosTokenIds: [2, 5], temperature: 0.7 });
    await unlink(join(dir, "generation_config.json"));
    const m2 = await loadModel(new DirectoryModelFiles(dir));
    expect(m2.generation).toEqual({ eosTokenIds: [2] });
  });
});

describe("SHA-256", () => {
  it("the pure-TS hasher agrees with node:crypto for every length and split", () => {
    const data = randomBytes(5000);
    for (const len of [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 5000]) {
      const want = createHash("sha256").update(data.subarray(0, len)).digest("hex");
      for (const split of [0, 1, 63, 64, 500]) {
        const h = createSha256();
        let i = 0;
        while (i < len) {
          const step = Math.max(1, Math.min(split || len, len - i));
          h.update(data.subarray(i, i + step));
          i += step;
        }
        expect(toHex(h.digest())).toBe(want);
      }
    }
    expect(Buffer.from(sha256Sync(data)).equals(createHash("sha256").update(data).digest())).toBe(
      true,
    );
    const big = randomBytes(3 * 1024 * 1024 + 7);
    const h = createSha256();
    h.update(big);
    expect(toHex(h.digest())).toBe(createHash("sha256").update(big).digest("hex"));
  });

  it("both Hashers give the same raw digest (what the fingerprint feeds in per tensor)", () => {
    const data = randomBytes(1000);
    const want = createHash("sha256").update(data).digest();
    for (const make of [createSha256, createNodeSha256]) {
      const h = make();
      h.update(data.subarray(0, 300));
      h.update(data.subarray(300));
      expect(Buffer.from(h.digest()).equals(want)).toBe(true);
    }
  });

  it("the one-shot functions (WebCrypto, sync pure-TS, node:crypto) and the hex helpers agree", async () => {
    const data = randomBytes(70_000);
    const want = createHash("sha256").update(data).digest("hex");
    for (const oneShot of [sha256, nodeSha256, async (d: Uint8Array) => sha256Sync(d)]) {
      expect(toHex(await oneShot(data))).toBe(want);
    }
    expect(await sha256Hex("key")).toBe(createHash("sha256").update("key").digest("hex"));
    expect(fromHex(want)).toEqual(new Uint8Array(createHash("sha256").update(data).digest()));
    expect([fromHex("abc"), fromHex("zz")]).toEqual([null, null]);
    expect(timingSafeEqualHex(want, want.toUpperCase())).toBe(true);
    expect(timingSafeEqualHex(want, `${want.slice(0, -1)}0`)).toBe(want.endsWith("0"));
  });
});

describe("fingerprint", () => {
  it("changes when one weight byte changes, and is served from the cache beside the model", async () => {
    const dir = await copyOf(BASE);
    const first = await (await loadModelDir(dir)).fingerprint();
    expect(first).toMatch(/^[0-9a-f]{64}$/);
    const pureTs = await (await loadModel(new DirectoryModelFiles(dir))).fingerprint();
    expect(pureTs).toBe(first);

    const cacheFile = join(dir, CACHE_FILE);
    const entry = JSON.parse(await readFile(cacheFile, "utf8"));
    expect(entry.fingerprint).toBe(first);
    expect(entry.files.map((f: { name: string }) => f.name)).toEqual([
      "config.json",
      "model.safetensors",
    ]);

    // A second load must take the cached value: plant a different (well-formed) one and see it.
    const planted = "ab".repeat(32);
    await writeFile(cacheFile, JSON.stringify({ ...entry, fingerprint: planted }));
    expect(await (await loadModelDir(dir)).fingerprint()).toBe(planted);

    // Flip one bit of the last weight byte: size unchanged, mtime moved, so the cache misses.
    const buf = await readFile(single(dir));
    buf[buf.length - 1] ^= 1;
    await writeFile(single(dir), buf);
    const later = new Date(Date.now() + 5000);
    await utimes(single(dir), later, later);
    const changed = await (await loadModelDir(dir)).fingerprint();
    expect(changed).not.toBe(first);
    expect(changed).not.toBe(planted);
    expect(JSON.parse(await readFile(cacheFile, "utf8")).fingerprint).toBe(changed);

    // And back: the original bytes give the original fingerprint.
    buf[buf.length - 1] ^= 1;
    await writeFile(single(dir), buf);
    await utimes(single(dir), later, new Date(Date.now() + 10000));
    expect(await (await loadModelDir(dir)).fingerprint()).toBe(first);
  });

  it("changes with config.json and with the tokenizer files", async () => {
    const dir = await copyOf(BASE);
    const base = await (
      await loadModel(new DirectoryModelFiles(dir), { hasher: createNodeSha256 })
    ).fingerprint();
    await editJson(join(dir, "config.json"), (j) => {
      j.rms_norm_eps = 1e-6;
    });
    const withEps = await (
      await loadModel(new DirectoryModelFiles(dir), { hasher: createNodeSha256 })
    ).fingerprint();
    expect(withEps).not.toBe(base);
    await writeFile(join(dir, "tokenizer_config.json"), "{}");
    const withTok = await (
      await loadModel(new DirectoryModelFiles(dir), { hasher: createNodeSha256 })
    ).fingerprint();
    expect(withTok).not.toBe(withEps);
  });

  it("goes to the user cache directory when the file beside the model cannot be written", async () => {
    const dir = await copyOf(BASE);
    // A directory where the cache file would go makes that write fail even for root (for whom a
    // read-only mode bit would not).
    await mkdir(join(dir, CACHE_FILE));
    const cacheDir = scratchDir("user-cache");
    const cache = new DirectoryFingerprintCache(dir, { cacheDir });
    const files = new DirectoryModelFiles(dir);
    const fp = await (await loadModel(files, { hasher: createNodeSha256, cache })).fingerprint();
    const fallback = JSON.parse(await readFile(cache.fallbackFile, "utf8"));
    expect(cache.fallbackFile.startsWith(cacheDir)).toBe(true);
    expect(fallback.fingerprint).toBe(fp);
    await writeFile(
      cache.fallbackFile,
      JSON.stringify({ ...fallback, fingerprint: "cd".repeat(32) }),
    );
    expect(await (await loadModel(files, { hasher: createNodeSha256, cache })).fingerprint()).toBe(
      "cd".repeat(32),
    );
    await rm(join(dir, CACHE_FILE), { recursive: true });
  });
});
