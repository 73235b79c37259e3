// `npm run bench -- upload [--doc-tokens 6144] [--rate 1024] [--runtime auto] [--store]`
//
// A slow streamed upload: a document of --doc-tokens tokens sent as text/plain to
// /v1/completions/text at --rate tokens per second (pieces of 32 tokens), progress on. Prints one
// JSON object with the time to the first progress event and to the first one that reports computed
// KV, how many tokens had been sent by each, and for the peer: the end of the upload (the first moment a server that takes the
// prompt whole could start). With --store the model function keeps snapshots in a scratch
// directory (restores are tried chunk by chunk as the prompt arrives); without, none.
import { parseArgs } from "node:util";
import { sha256Hex } from "../../core/hash/sha256.ts";
import { parseSse } from "../../core/protocol/events.ts";
import { startLocal } from "../../functions/entries/local.ts";
import { scratchDir, testModelDir } from "../support/models.ts";

const KEY = "bench-key-0123456789";
const PIECE_TOKENS = 32;

export default async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      "doc-tokens": { type: "string", default: "6144" },
      rate: { type: "string", default: "1024" },
      runtime: { type: "string", default: "auto" },
      store: { type: "boolean", default: false },
    },
  });
  const docTokens = Number(values["doc-tokens"]);
  const rate = Number(values.rate);
  const s = await startLocal({
    modelDir: await testModelDir(),
    modelId: "tiny",
    runtime: values.runtime,
    store: values.store ? scratchDir("upload-bench") : null,
    maxPositions: docTokens + 1024,
    keys: {
      tenants: { bench: { rpm: 0, maxPromptTokens: docTokens + 64, maxOutputTokens: 16 } },
      keys: [{ sha256: await sha256Hex(KEY), tenant: "bench" }],
    },
    log: () => {},
  });
  const authorization = `Bearer ${KEY}`;
  // Words whose token count we know, so the tokens sent at any moment are exact.
  const unit = " alpha beta gamma delta";
  const unitTokens = (
    (await (
      await fetch(`${s.url}/v1/tokenize`, {
        method: "POST",
        headers: { authorization, "content-type": "application/json" },
        body: JSON.stringify({ prompt: unit, add_special_tokens: false }),
      })
    ).json()) as { count: number }
  ).count;
  const units = Math.ceil(docTokens / unitTokens);
  const piece = unit.repeat(Math.max(1, Math.round(PIECE_TOKENS / unitTokens)));
  const pieceTokens = (piece.length / unit.length) * unitTokens;
  const enc = new TextEncoder();
  let sentTokens = 0;
  let uploadEndMs: number | null = null;
  const t0 = performance.now();
  const body = new ReadableStream<Uint8Array>({
    async pull(c) {
      if (sentTokens >= units * unitTokens) {
        uploadEndMs = performance.now() - t0;
        c.close();
        return;
      }
      // Paced against the start, so a slow event loop does not slow the upload further.
      const due = t0 + (sentTokens / rate) * 1000;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      c.enqueue(enc.encode(piece));
      sentTokens += pieceTokens;
    },
  });
  const res = await fetch(
    `${s.url}/v1/completions/text?max_tokens=2&temperature=0&stream=true&progress=true`,
    {
      method: "POST",
      headers: { authorization, "content-type": "text/plain" },
      body,
      duplex: "half",
    } as RequestInit,
  );
  type Seen = { ms: number; sentTokens: number; doneTokens: number };
  let firstProgress: Seen | null = null;
  // The first progress event that reports computed KV (the first is the cached count, often 0).
  let firstComputed: Seen | null = null;
  let progressEvents = 0;
  let firstTokenMs: number | null = null;
  for await (const m of parseSse(res.body!)) {
    if (m.data === "[DONE]") break;
    const chunk = JSON.parse(m.data);
    if (chunk.progress) {
      progressEvents++;
      const seen = {
        ms: Math.round(performance.now() - t0),
        sentTokens,
        doneTokens: chunk.progress.prompt_tokens_done,
      };
      firstProgress ??= seen;
      if (seen.doneTokens > 0) firstComputed ??= seen;
    } else if (chunk.choices?.[0]?.text !== undefined)
      firstTokenMs ??= Math.round(performance.now() - t0);
  }
  const info = s.engine.info();
  await s.close();
  console.log(
    JSON.stringify(
      {
        bench: "upload",
        machine: { cpus: (await import("node:os")).cpus().length },
        settings: {
          docTokens: units * unitTokens,
          rateTokensPerSecond: rate,
          pieceTokens,
          runtime: info.runtime,
          store: values.store,
          model: "TINY generated (2 layers, hidden 64, Llama 3.1 vocab)",
        },
        status: res.status,
        firstProgress,
        firstComputed,
        progressEvents,
        firstTokenMs,
        peer: { what: "end of the upload", ms: uploadEndMs && Math.round(uploadEndMs) },
      },
      null,
      2,
    ),
  );
}
