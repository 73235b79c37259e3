// Uploaded files tokenized once (issue 13): a chat file part reads the stored ids, and those ids equal
// what tokenizing the message with the file's text in place gives, at every kind of boundary. Real
// sockets and a real directory store (Node: the worker-thread tokenizer), and the same app driven
// through app.request() with the in-thread tokenizer (the Workers / Lambda path) and bodies cut
// into odd chunks.
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { toHex } from "../core/hash/hex.ts";
import { sha256Hex } from "../core/hash/sha256.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { openStore } from "../core/node/snapshot-dir.ts";
import { createEdgeApp, type EdgeApp, type EdgeAppOptions } from "../functions/edge/app.ts";
import { MemoryObjectStore, ObjectFileStore, type ObjectStore } from "../functions/edge/files.ts";
import { edgeTextFromTokenizer, templateChatRenderer } from "../functions/edge/tokenizer-text.ts";
import { type LocalServer, startLocal } from "../functions/entries/local.ts";
import { loadDirTokenizer } from "../functions/node/tokenizer-cache.ts";
import { type S3Server, startS3 } from "./harness/s3.ts";
import { scratchDir, testModelDir } from "./support/models.ts";

const KEY_A = "key-files-a-0123456789";
const KEY_B = "key-files-b-0123456789";
const KEY_SMALL = "key-files-small-0123456789";
const big = { maxPromptTokens: 1_000_000, maxOutputTokens: 16, rpm: 0 };

async function keyConfig() {
  return {
    tenants: { a: big, b: big, small: { ...big, maxPromptTokens: 1000 } },
    keys: [
      { sha256: await sha256Hex(KEY_A), tenant: "a" },
      { sha256: await sha256Hex(KEY_B), tenant: "b" },
      { sha256: await sha256Hex(KEY_SMALL), tenant: "small" },
    ],
  };
}

/** This process's threads (Linux): a worker thread is one more. */
function threads(): number {
  return readdirSync("/proc/self/task").length;
}

/** Every file under `dir`, recursively (a directory store leaves empty folders after deletes). */
function objectsUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name));
}

/** File texts whose first and last pieces can merge with what surrounds them in a message. */
const para =
  "The quick brown fox jumps over the lazy dog; naïve café résumé 😀 — 1234567 items, it's done.\n";
const FILES: Record<string, string> = {
  words: `${para.repeat(40)}end of text`,
  spaced: `   \n\n  leading and trailing whitespace ${para.repeat(30)}  \n \n   `,
  digits: `98765${para.repeat(30)}4321`,
  contraction: `'s what it is ${para.repeat(30)}they'll`,
  punctuation: `...!? ${para.repeat(30)}?!...`,
  emoji: `😀😀 ${para.repeat(30)} 中文字符`,
  newlines: `\n\n${para.repeat(30)}\n\n`,
  small: "Hi there",
  blank: " \n\t ",
  longWord: `${"a".repeat(3000)} ${para.repeat(5)}`,
};
const BEFORE = ["", "abc", "abc ", "x\n", "42", "  ", "'"];
const AFTER = ["", "def", " tail", "\n", "99", "!", "  "];

type Part = { type: "text"; text: string } | { type: "file"; file: { file_id: string } };

interface Target {
  request(path: string, init: RequestInit & { key?: string }): Promise<Response>;
  metric(name: string, labels?: Record<string, string>): number;
}

function multipart(body: Uint8Array, boundary: string, filename = "doc.txt"): Uint8Array {
  const enc = new TextEncoder();
  const head = enc.encode(
    `--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n` +
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${filename}"\r\n` +
      "Content-Type: text/plain\r\n\r\n",
  );
  const tail = enc.encode(`\r\n--${boundary}--\r\n`);
  const out = new Uint8Array(head.length + body.length + tail.length);
  out.set(head);
  out.set(body, head.length);
  out.set(tail, head.length + body.length);
  return out;
}

/** A stream of `bytes` in chunks of 1..maxChunk bytes (a fixed pseudo-random sequence). */
function chunked(bytes: Uint8Array, maxChunk: number): ReadableStream<Uint8Array> {
  let at = 0;
  let seed = 12345;
  return new ReadableStream({
    pull(controller) {
      if (at >= bytes.length) return controller.close();
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      const n = 1 + (seed % maxChunk);
      controller.enqueue(bytes.slice(at, at + n));
      at += n;
    },
  });
}

async function upload(t: Target, text: string, key = KEY_A, maxChunk = 0): Promise<string> {
  const boundary = "----ultralong-test-boundary";
  const body = multipart(new TextEncoder().encode(text), boundary);
  const res = await t.request("/v1/files", {
    method: "POST",
    key,
    headers: { "content-type": `multipart/form-data; boundary=${boundary}` },
    body: maxChunk > 0 ? chunked(body, maxChunk) : (body as BodyInit),
    duplex: "half",
  } as RequestInit & { key: string });
  expect(res.status).toBe(200);
  const f = (await res.json()) as { id: string; tokens: number };
  return f.id;
}

async function tokenize(t: Target, messages: { role: string; content: Part[] | string }[]) {
  const res = await t.request("/v1/tokenize", {
    method: "POST",
    key: KEY_A,
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages }),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { tokens: number[] }).tokens;
}

/** Every file between every kind of text, in a user message: ids via the file == ids in place. */
async function checkEquality(t: Target, ids: Record<string, string>) {
  const PART_CHARS = "ul_edge_file_part_chars_encoded_total";
  for (const [name, text] of Object.entries(FILES)) {
    for (const before of BEFORE) {
      for (const after of AFTER) {
        const parts: Part[] = [];
        if (before) parts.push({ type: "text", text: before });
        parts.push({ type: "file", file: { file_id: ids[name] } });
        if (after) parts.push({ type: "text", text: after });
        const encodedBefore = t.metric(PART_CHARS);
        const viaFile = await tokenize(t, [{ role: "user", content: parts }]);
        const inPlace = await tokenize(t, [{ role: "user", content: before + text + after }]);
        expect(viaFile, `${name} between ${JSON.stringify([before, after])}`).toEqual(inPlace);
        // A large file's part re-encodes its edges only.
        if (text.length > 2000 && name !== "longWord")
          expect(t.metric(PART_CHARS) - encodedBefore).toBeLessThan(text.length / 2);
      }
    }
  }
  // Several files in one message, adjacent and repeated; a file in the system message.
  const mixed: Part[] = [
    { type: "file", file: { file_id: ids.words } },
    { type: "file", file: { file_id: ids.digits } },
    { type: "text", text: "and" },
    { type: "file", file: { file_id: ids.words } },
    { type: "file", file: { file_id: ids.spaced } },
  ];
  const mixedText = FILES.words + FILES.digits + "and" + FILES.words + FILES.spaced;
  expect(
    await tokenize(t, [
      { role: "system", content: [{ type: "file", file: { file_id: ids.newlines } }] },
      { role: "user", content: mixed },
    ]),
  ).toEqual(
    await tokenize(t, [
      { role: "system", content: FILES.newlines },
      { role: "user", content: mixedText },
    ]),
  );
}

async function uploadAll(t: Target, maxChunk = 0): Promise<Record<string, string>> {
  const ids: Record<string, string> = {};
  for (const [name, text] of Object.entries(FILES))
    ids[name] = await upload(t, text, KEY_A, maxChunk);
  return ids;
}

describe("Node: worker-thread tokenizer, directory store, real sockets", () => {
  let s: LocalServer;
  let storeDir: string;
  let t: Target;
  let ids: Record<string, string>;
  let threadsBefore: number;
  let threadsAfter: number;
  beforeAll(async () => {
    storeDir = scratchDir("file-parts");
    s = await startLocal({
      modelDir: await testModelDir(),
      modelId: "tiny",
      runtime: "reference",
      store: storeDir,
      maxPositions: 4096,
      keys: await keyConfig(),
      log: () => {},
    });
    t = {
      request: (path, { key, headers, ...init }) =>
        fetch(`${s.url}${path}`, {
          ...init,
          headers: { ...(headers as Record<string, string>), authorization: `Bearer ${key}` },
        }),
      metric: (name, labels) => s.edge!.metrics.get(name, labels),
    };
    threadsBefore = threads();
    ids = await uploadAll(t);
    threadsAfter = threads();
  });
  afterAll(async () => {
    await s?.close();
  });

  it("tokenizes uploads in a worker thread, started by the first upload", () => {
    expect(threadsAfter).toBeGreaterThan(threadsBefore);
  });

  it("stores the ids beside the text, tokenized once at upload, and the count", async () => {
    expect(t.metric("ul_edge_file_tokenizations_total", { when: "upload" })).toBe(
      Object.keys(FILES).length,
    );
    const dir = join(storeDir, "files", toHex(new TextEncoder().encode("a")), ids.words);
    expect(readdirSync(dir).sort()).toEqual(["ids.0", "meta.json", "text.0"]);
    const listed = (await (await t.request(`/v1/files/${ids.words}`, { key: KEY_A })).json()) as {
      tokens: number;
    };
    const inPlace = await t.request("/v1/tokenize", {
      method: "POST",
      key: KEY_A,
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: FILES.words, add_special_tokens: false }),
    });
    expect(listed.tokens).toBe(((await inPlace.json()) as { count: number }).count);
  });

  it("file parts give the ids of the text in place, at every boundary", async () => {
    await checkEquality(t, ids);
    // Using files tokenized none of them again.
    expect(t.metric("ul_edge_file_tokenizations_total", { when: "first_use" })).toBe(0);
  });

  it("a large file's part costs no tokenization: only its edges are encoded", async () => {
    const text = para.repeat(20_000); // 1.9 MB, several upload chunks and checkpoints
    const id = await upload(t, text);
    const before = t.metric("ul_edge_file_part_chars_encoded_total");
    const via = await tokenize(t, [
      {
        role: "user",
        content: [
          { type: "text", text: "Summarize: " },
          { type: "file", file: { file_id: id } },
        ],
      },
    ]);
    const encoded = t.metric("ul_edge_file_part_chars_encoded_total") - before;
    expect(encoded).toBeGreaterThan(0);
    expect(encoded).toBeLessThan(70_000);
    expect(via).toEqual(await tokenize(t, [{ role: "user", content: `Summarize: ${text}` }]));
  });

  it("a chat naming a file far over the key's limit is refused before the file's ids are used", async () => {
    const id = await upload(t, para.repeat(2000), KEY_SMALL);
    const before = t.metric("ul_edge_file_part_chars_encoded_total");
    const r = await t.request("/v1/chat/completions", {
      method: "POST",
      key: KEY_SMALL,
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "tiny",
        messages: [{ role: "user", content: [{ type: "file", file: { file_id: id } }] }],
      }),
    });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe(
      "context_length_exceeded",
    );
    expect(t.metric("ul_edge_file_part_chars_encoded_total")).toBe(before);
  });

  it("/healthz answers while a large upload is still being tokenized", async () => {
    const boundary = "----healthz-order";
    const body = multipart(new TextEncoder().encode(para.repeat(60_000)), boundary); // 5.7 MB
    const order: string[] = [];
    let lastChunkHandedOver!: () => void;
    const handedOver = new Promise<void>((resolve) => {
      lastChunkHandedOver = resolve;
    });
    let at = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (at >= body.length) {
          controller.close();
          lastChunkHandedOver();
          return;
        }
        controller.enqueue(body.slice(at, at + (256 << 10)));
        at += 256 << 10;
      },
    });
    const up = t
      .request("/v1/files", {
        method: "POST",
        key: KEY_A,
        headers: { "content-type": `multipart/form-data; boundary=${boundary}` },
        body: stream,
        duplex: "half",
      } as RequestInit & { key: string })
      .then(async (r) => {
        order.push(`upload ${r.status}`);
        await r.arrayBuffer();
      });
    await handedOver;
    // Made after the whole body was handed over: the upload cannot answer before it is tokenized.
    const h = await fetch(`${s.url}/healthz`);
    order.push(`healthz ${h.status}`);
    await up;
    expect(order).toEqual(["healthz 200", "upload 200"]);
  });

  it("stored ids are per tenant: B cannot read, use or delete A's file; its own are separate", async () => {
    const text = FILES.words;
    const idB = await upload(t, text, KEY_B);
    const a = join(storeDir, "files", toHex(new TextEncoder().encode("a")));
    const b = join(storeDir, "files", toHex(new TextEncoder().encode("b")));
    expect(readdirSync(b)).toEqual([idB]);
    expect(readdirSync(a)).not.toContain(idB);
    const encodedBefore = t.metric("ul_edge_file_part_chars_encoded_total");
    const useA = await t.request("/v1/tokenize", {
      method: "POST",
      key: KEY_B,
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        messages: [{ role: "user", content: [{ type: "file", file: { file_id: ids.words } }] }],
      }),
    });
    expect(useA.status).toBe(404);
    expect(t.metric("ul_edge_file_part_chars_encoded_total")).toBe(encodedBefore);
    expect(
      (await t.request(`/v1/files/${ids.words}`, { method: "DELETE", key: KEY_B })).status,
    ).toBe(404);
    expect((await t.request(`/v1/files/${idB}`, { method: "DELETE", key: KEY_B })).status).toBe(
      200,
    );
    expect(objectsUnder(b)).toEqual([]);
    expect((await t.request(`/v1/files/${ids.words}`, { key: KEY_A })).status).toBe(200);
  });

  it("a file stored by an older version (text, no usable ids) is tokenized on first use, once", async () => {
    const id = "file-0123456789abcdef01234567";
    const dir = join(storeDir, "files", toHex(new TextEncoder().encode("a")), id);
    mkdirSync(dir, { recursive: true });
    const text = FILES.spaced;
    writeFileSync(join(dir, "text"), text);
    const meta = {
      id,
      tenant: "a",
      filename: "old.txt",
      purpose: "user_data",
      bytes: Buffer.byteLength(text),
      createdAt: 1,
      tokens: 0,
    };
    writeFileSync(join(dir, "meta.json"), JSON.stringify(meta));
    const parts: Part[] = [
      { type: "text", text: "x" },
      { type: "file", file: { file_id: id } },
    ];
    const inPlace = await tokenize(t, [{ role: "user", content: `x${text}` }]);
    const first = () => t.metric("ul_edge_file_tokenizations_total", { when: "first_use" });
    expect(await tokenize(t, [{ role: "user", content: parts }])).toEqual(inPlace);
    expect(first()).toBe(1);
    expect(await tokenize(t, [{ role: "user", content: parts }])).toEqual(inPlace);
    expect(first()).toBe(1);
    expect(readdirSync(dir).sort()).toEqual(["ids.0", "meta.json", "text"]);
  });

  it("bad input changes nothing: invalid UTF-8 and a body without a file field", async () => {
    const count = async () =>
      ((await (await t.request("/v1/files", { key: KEY_A })).json()) as { data: unknown[] }).data
        .length;
    const n = await count();
    const boundary = "----bad";
    const refused = async (body: Uint8Array) => {
      const r = await t.request("/v1/files", {
        method: "POST",
        key: KEY_A,
        headers: { "content-type": `multipart/form-data; boundary=${boundary}` },
        body: body as BodyInit,
      });
      expect(r.status).toBe(400);
      return ((await r.json()) as { error: { code: string } }).error.code;
    };
    expect(await refused(multipart(new Uint8Array([0x61, 0xff, 0x62]), boundary))).toBe(
      "invalid_utf8",
    );
    const noFile = `--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n--${boundary}--\r\n`;
    expect(await refused(new TextEncoder().encode(noFile))).toBe("missing_field");
    expect(await refused(new TextEncoder().encode("no boundary at all"))).toBe("invalid_format");
    expect(await count()).toBe(n);
    // No parts were left behind by the failed upload.
    const a = join(storeDir, "files", toHex(new TextEncoder().encode("a")));
    for (const f of objectsUnder(a)) expect(readdirSync(dirname(f))).toContain("meta.json");
  });
});

describe("Workers / Lambda path: in-thread tokenizer, memory store, bodies in odd chunks", () => {
  let edge: EdgeApp;
  let options: EdgeAppOptions;
  let t: Target;
  beforeAll(async () => {
    const dir = await testModelDir();
    const model = await loadModelDir(dir);
    const tokenizer = await loadDirTokenizer(dir, model.files);
    options = {
      modelId: "tiny",
      maxContext: 4096,
      text: edgeTextFromTokenizer(tokenizer, templateChatRenderer(tokenizer, "tiny")),
      keys: await keyConfig(),
      modelUrl: "http://127.0.0.1:9",
      secret: "file-parts-secret-0123456789",
      log: () => {},
    };
    edge = await createEdgeApp(options);
    t = {
      request: (path, { key, headers, ...init }) =>
        Promise.resolve(
          edge.app.request(path, {
            ...init,
            headers: { ...(headers as Record<string, string>), authorization: `Bearer ${key}` },
          }),
        ),
      metric: (name, labels) => edge.metrics.get(name, labels),
    };
  });

  it("file parts give the ids of the text in place, whatever the body's chunks", async () => {
    await checkEquality(t, await uploadAll(t, 700));
  });

  it("an upload over the size limit is refused (413) and leaves no object behind", async () => {
    const objects = new MemoryObjectStore();
    const small = await createEdgeApp({
      ...options,
      files: new ObjectFileStore(objects),
      maxUploadBytes: 6 << 20,
    });
    const boundary = "----limit";
    const res = await small.app.request("/v1/files", {
      method: "POST",
      headers: {
        authorization: `Bearer ${KEY_A}`,
        "content-type": `multipart/form-data; boundary=${boundary}`,
      },
      body: chunked(multipart(new TextEncoder().encode(para.repeat(75_000)), boundary), 65_536),
      duplex: "half",
    } as RequestInit);
    // 7 MB against a 6 MiB limit: the first 4 MiB text part was already stored when it failed.
    expect(res.status).toBe(413);
    const keys: string[] = [];
    for await (const o of objects.list("")) keys.push(o.key);
    expect(keys).toEqual([]);
  });

  it("random texts of the pre-tokenizer's hard characters: ids equal in place", async () => {
    const alphabet = [
      "a",
      "Zb",
      "s",
      "1",
      "23",
      " ",
      "  ",
      "\n",
      "\r\n",
      "'",
      "'s",
      "é",
      "😀",
      ".",
      "!?",
      "\t",
      "中",
      ".T",
      "-",
    ];
    let seed = 7;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const random = (n: number) =>
      Array.from({ length: n }, () => alphabet[rand(alphabet.length)]).join("");
    for (let i = 0; i < 40; i++) {
      const text = random(200 + rand(1500));
      const before = random(rand(4));
      const after = random(rand(4));
      const id = await upload(t, text, KEY_A, 1 + rand(900));
      const parts: Part[] = [
        { type: "text", text: before },
        { type: "file", file: { file_id: id } },
        { type: "text", text: after },
      ];
      expect(
        await tokenize(t, [{ role: "user", content: parts }]),
        JSON.stringify([before, text.slice(0, 40), text.slice(-40), after]),
      ).toEqual(await tokenize(t, [{ role: "user", content: before + text + after }]));
    }
  });
});

describe("S3 file store (s3rver): parts, ids and delete", () => {
  let s3: S3Server;
  let t: Target;
  let objects: ObjectStore;
  beforeAll(async () => {
    s3 = await startS3();
    const dir = await testModelDir();
    const tokenizer = await loadDirTokenizer(dir, (await loadModelDir(dir)).files);
    objects = openStore(`s3://${s3.bucket}/edge`, { env: s3.env });
    const edge = await createEdgeApp({
      modelId: "tiny",
      maxContext: 4096,
      text: edgeTextFromTokenizer(tokenizer, templateChatRenderer(tokenizer, "tiny")),
      keys: await keyConfig(),
      modelUrl: "http://127.0.0.1:9",
      secret: "file-parts-secret-0123456789",
      files: new ObjectFileStore(objects),
      log: () => {},
    });
    t = {
      request: (path, { key, headers, ...init }) =>
        Promise.resolve(
          edge.app.request(path, {
            ...init,
            headers: { ...(headers as Record<string, string>), authorization: `Bearer ${key}` },
          }),
        ),
      metric: (name, labels) => edge.metrics.get(name, labels),
    };
  });
  afterAll(async () => {
    await s3?.close();
  });

  it("a 5 MB file in two parts of each kind: ids equal in place; delete removes every object", async () => {
    const text = para.repeat(52_000); // 5.2 MB: text.0 (4 MiB) + text.1, ids.0 + ids.1
    const id = await upload(t, text, KEY_A, 100_000);
    const keys = async () => {
      const out: string[] = [];
      for await (const o of objects.list(`files/${toHex(new TextEncoder().encode("a"))}/${id}/`))
        out.push(o.key.split("/").pop()!);
      return out.sort();
    };
    expect(await keys()).toEqual(["ids.0", "ids.1", "meta.json", "text.0", "text.1"]);
    const parts: Part[] = [
      { type: "text", text: "Read: " },
      { type: "file", file: { file_id: id } },
    ];
    expect(await tokenize(t, [{ role: "user", content: parts }])).toEqual(
      await tokenize(t, [{ role: "user", content: `Read: ${text}` }]),
    );
    expect((await t.request(`/v1/files/${id}`, { method: "DELETE", key: KEY_A })).status).toBe(200);
    expect(await keys()).toEqual([]);
  });
});
