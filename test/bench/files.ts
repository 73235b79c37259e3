// `npm run bench -- files [--mb 20] [--idle-requests 300] [--in-thread]`
//
// An upload of a --mb MB text file to POST /v1/files, then a chat naming it, while /healthz is
// polled one request after another. The edge (startLocal: worker-thread file tokenizer, directory
// store) runs in a child process, so the polling client's work is not on the edge's event loop and
// the child's RSS is the edge's (plus the TINY model function's, which idles). --in-thread: the
// edge alone (createEdgeApp on a Node socket, same store) with the tokenizer that Workers and
// Lambda use, on the request thread in slices, instead of the worker. Prints one JSON object:
//   idle:    /healthz p50/p99/max on the idle server, same run (the peer)
//   upload:  upload seconds and MB/s, tokens, /healthz p50/p99/max while it ran, and the child's
//            RSS idle, after a first small upload (which starts the worker), and at its peak
//            during the large one (sampled every 10 ms from /proc, Linux)
//   chat:    a chat naming the file (over the key's prompt limit: refused with 400), its ms, and
//            /healthz during it
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { sha256Hex } from "../../core/hash/sha256.ts";
import { loadModelDir } from "../../core/node/load-model-dir.ts";
import { openStore } from "../../core/node/snapshot-dir.ts";
import { createEdgeApp } from "../../functions/edge/app.ts";
import { ObjectFileStore } from "../../functions/edge/files.ts";
import type { KeyConfig } from "../../functions/edge/keys.ts";
import {
  edgeTextFromTokenizer,
  templateChatRenderer,
} from "../../functions/edge/tokenizer-text.ts";
import { startLocal } from "../../functions/entries/local.ts";
import { listen } from "../../functions/node/listen.ts";
import { loadDirTokenizer } from "../../functions/node/tokenizer-cache.ts";
import { scratchDir, testModelDir } from "../support/models.ts";

const KEY = "bench-files-key-0123456789";

/** The edge with the in-thread tokenizer; the chat is refused before it would reach a model. */
async function edgeInThread(keys: KeyConfig): Promise<{ url: string; close(): Promise<void> }> {
  const dir = await testModelDir();
  const tokenizer = await loadDirTokenizer(dir, (await loadModelDir(dir)).files);
  const edge = await createEdgeApp({
    modelId: "tiny",
    maxContext: 4096,
    text: edgeTextFromTokenizer(tokenizer, templateChatRenderer(tokenizer, "tiny")),
    keys,
    modelUrl: "http://127.0.0.1:9",
    secret: "bench-files-secret-0123456789",
    files: new ObjectFileStore(openStore(scratchDir("bench-files"))),
    log: () => {},
  });
  return listen(edge.app);
}

/** Child mode: serve, print {url}, exit when stdin closes. */
async function serve(inThread: boolean): Promise<void> {
  const keys = {
    tenants: { bench: { maxPromptTokens: 4000, maxOutputTokens: 16, rpm: 0 } },
    keys: [{ sha256: await sha256Hex(KEY), tenant: "bench" }],
  };
  const s = inThread
    ? await edgeInThread(keys)
    : await startLocal({
        modelDir: await testModelDir(),
        modelId: "tiny",
        runtime: "reference",
        store: scratchDir("bench-files"),
        maxPositions: 4096,
        keys,
        log: () => {},
      });
  process.stdout.write(`${JSON.stringify({ url: s.url })}\n`);
  process.stdin.resume();
  process.stdin.on("end", () => void s.close().then(() => process.exit(0)));
}

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Math.round(Number(m[1]) / 1024) : Number.NaN;
}

interface Latency {
  requests: number;
  p50ms: number;
  p99ms: number;
  maxms: number;
}

function summarize(ms: number[]): Latency {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) =>
    Math.round((s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? 0) * 10) / 10;
  return { requests: s.length, p50ms: q(0.5), p99ms: q(0.99), maxms: q(1) };
}

/** Polls /healthz one request after another until `done` settles (or `count` requests). */
async function pollHealthz(url: string, done: Promise<unknown> | null, count = 0) {
  const ms: number[] = [];
  let finished = false;
  void done?.finally(() => {
    finished = true;
  });
  while (done ? !finished : ms.length < count) {
    const t0 = performance.now();
    const r = await fetch(`${url}/healthz`);
    await r.arrayBuffer();
    if (r.status !== 200) throw new Error(`/healthz answered ${r.status}`);
    ms.push(performance.now() - t0);
  }
  return summarize(ms);
}

/** About `mb` MB of prose-like text with numbers, punctuation and some non-ASCII. */
function document(mb: number): string {
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < mb * 1e6; i++) {
    const line = `Section ${i}: the edge tokenizes uploads once (café, naïve, 😀); item ${i * 7919} of many.\n`;
    lines.push(line);
    size += line.length + 2;
  }
  return lines.join("");
}

export default async function main(args: string[]): Promise<void> {
  if (args.includes("--serve")) return serve(args.includes("--in-thread"));
  const { values } = parseArgs({
    args,
    options: {
      mb: { type: "string", default: "20" },
      "idle-requests": { type: "string", default: "300" },
      "in-thread": { type: "boolean", default: false },
    },
  });
  const child = spawn(
    process.execPath,
    [
      ...process.execArgv,
      process.argv[1],
      "files",
      "--serve",
      ...(values["in-thread"] ? ["--in-thread"] : []),
    ],
    {
      stdio: ["pipe", "pipe", "inherit"],
    },
  );
  try {
    const first = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout! }).once("line", resolve);
      child.once("exit", (code) => reject(new Error(`server exited (${code})`)));
    });
    const { url } = JSON.parse(first) as { url: string };
    const auth = { authorization: `Bearer ${KEY}` };

    await pollHealthz(url, null, 50); // warm-up
    const idle = await pollHealthz(url, null, Number(values["idle-requests"]));

    const form = (text: string) => {
      const f = new FormData();
      f.append("purpose", "user_data");
      f.append("file", new Blob([text], { type: "text/plain" }), "doc.txt");
      return f;
    };
    // A small upload first: it starts the tokenizer's worker (once per process), which the large
    // upload's memory figure should not include.
    const rssIdle = rssMb(child.pid!);
    const small = await fetch(`${url}/v1/files`, {
      method: "POST",
      headers: auth,
      body: form(document(0.001)),
    });
    if (small.status !== 200) throw new Error(`small upload answered ${small.status}`);
    await small.arrayBuffer();
    const text = document(Number(values.mb));
    const bytes = new TextEncoder().encode(text).length;
    const rssBefore = rssMb(child.pid!);
    let rssPeak = rssBefore;
    const sampler = setInterval(() => {
      rssPeak = Math.max(rssPeak, rssMb(child.pid!));
    }, 10);
    const t0 = performance.now();
    const uploading = fetch(`${url}/v1/files`, {
      method: "POST",
      headers: auth,
      body: form(text),
    }).then(async (r) => {
      if (r.status !== 200) throw new Error(`upload answered ${r.status}: ${await r.text()}`);
      return (await r.json()) as { id: string; tokens: number };
    });
    const duringUpload = await pollHealthz(url, uploading);
    const file = await uploading;
    const uploadSeconds = (performance.now() - t0) / 1000;
    clearInterval(sampler);

    const t1 = performance.now();
    const chatting = fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { ...auth, "content-type": "application/json" },
      body: JSON.stringify({
        model: "tiny",
        max_tokens: 1,
        messages: [
          {
            role: "user",
            content: [
              { type: "text", text: "Summarize: " },
              { type: "file", file: { file_id: file.id } },
            ],
          },
        ],
      }),
    }).then(async (r) => ({
      status: r.status,
      code: ((await r.json()) as { error?: { code: string } }).error?.code,
    }));
    const duringChat = await pollHealthz(url, chatting);
    const chat = await chatting;
    const chatMs = Math.round(performance.now() - t1);

    console.log(
      JSON.stringify(
        {
          tokenizer: values["in-thread"] ? "in-thread slices (Workers, Lambda)" : "worker thread",
          file: { mb: Math.round(bytes / 1e4) / 100, tokens: file.tokens },
          idle: { healthz: idle },
          upload: {
            seconds: Math.round(uploadSeconds * 100) / 100,
            mbPerSecond: Math.round((bytes / 1e6 / uploadSeconds) * 10) / 10,
            healthz: duringUpload,
            healthzP99VsIdle: Math.round((duringUpload.p99ms / idle.p99ms) * 100) / 100,
            edgeRssMb: {
              idle: rssIdle,
              afterFirstSmallUpload: rssBefore,
              peak: rssPeak,
              increase: rssPeak - rssBefore,
            },
          },
          chat: { ms: chatMs, ...chat, healthz: duringChat },
        },
        null,
        2,
      ),
    );
  } finally {
    child.stdin!.end();
    await new Promise((resolve) => child.once("exit", resolve));
  }
}
