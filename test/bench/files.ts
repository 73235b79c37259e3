// `npm run bench -- files [--mb 20] [--idle-requests 300]`
//
// An upload of a --mb MB text file to POST /v1/files, then a chat naming it, while /healthz is
// polled one request after another. The edge (startLocal: worker-thread file tokenizer, directory
// store) runs in a child process, so the polling client's work is not on the edge's event loop and
// the child's RSS is the edge's (plus the TINY model function's, which idles). Prints one JSON
// object:
//   idle:    /healthz p50/p99/max on the idle server, same run (the peer)
//   upload:  upload seconds and MB/s, tokens, /healthz p50/p99/max while it ran, and the child's
//            RSS before and at its peak (sampled every 10 ms from /proc, Linux)
//   chat:    a chat naming the file (over the key's prompt limit: refused with 400), its ms, and
//            /healthz during it
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { sha256Hex } from "../../functions/edge/keys.ts";
import { startLocal } from "../../functions/platform/local.ts";
import { scratchDir, testModelDir } from "../support/models.ts";

const KEY = "bench-files-key-0123456789";

/** Child mode: serve, print {url}, exit when stdin closes. */
async function serve(): Promise<void> {
  const s = await startLocal({
    modelDir: await testModelDir(),
    modelId: "tiny",
    runtime: "reference",
    store: scratchDir("bench-files"),
    maxPositions: 4096,
    keys: {
      tenants: { bench: { maxPromptTokens: 4000, maxOutputTokens: 16, rpm: 0 } },
      keys: [{ sha256: await sha256Hex(KEY), tenant: "bench" }],
    },
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
  if (args.includes("--serve")) return serve();
  const { values } = parseArgs({
    args,
    options: {
      mb: { type: "string", default: "20" },
      "idle-requests": { type: "string", default: "300" },
    },
  });
  const child = spawn(
    process.execPath,
    [...process.execArgv, process.argv[1], "files", "--serve"],
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

    const text = document(Number(values.mb));
    const form = new FormData();
    form.append("purpose", "user_data");
    form.append("file", new Blob([text], { type: "text/plain" }), "big.txt");
    const bytes = new TextEncoder().encode(text).length;
    const rssBefore = rssMb(child.pid!);
    let rssPeak = rssBefore;
    const sampler = setInterval(() => {
      rssPeak = Math.max(rssPeak, rssMb(child.pid!));
    }, 10);
    const t0 = performance.now();
    const uploading = fetch(`${url}/v1/files`, { method: "POST", headers: auth, body: form }).then(
      async (r) => {
        if (r.status !== 200) throw new Error(`upload answered ${r.status}: ${await r.text()}`);
        return (await r.json()) as { id: string; tokens: number };
      },
    );
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
          file: { mb: Math.round(bytes / 1e4) / 100, tokens: file.tokens },
          idle: { healthz: idle },
          upload: {
            seconds: Math.round(uploadSeconds * 100) / 100,
            mbPerSecond: Math.round((bytes / 1e6 / uploadSeconds) * 10) / 10,
            healthz: duringUpload,
            healthzP99VsIdle: Math.round((duringUpload.p99ms / idle.p99ms) * 100) / 100,
            edgeRssMb: { before: rssBefore, peak: rssPeak, increase: rssPeak - rssBefore },
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
