// `ultralong serve` as a benchmark drives it: started as a child process with one API key of its
// own (no rate limit), and streamed greedy completions of token-id prompts timed token by token
// at the client, each an Answer (test/support/batching-load.ts).
import type { ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { sha256Hex } from "../../core/hash/sha256.ts";
import { parseSse } from "../../core/protocol/events.ts";
import type { Answer } from "./batching-load.ts";
import { startServe } from "./cli.ts";
import { runProcess } from "./models.ts";

const KEY = "bench-batching-key-0123456789";

export interface BenchServer {
  url: string;
  modelId: string;
  /** Stops the process (SIGTERM, so it closes its runtime) and waits for it to exit. */
  stop(): Promise<void>;
}

/** The option names `ultralong serve --help` lists (so a benchmark passes only flags it has). */
export async function serveOptions(): Promise<Set<string>> {
  const help = await runProcess(process.execPath, ["functions/cli/bin.js", "serve", "--help"]);
  return new Set(help.stdout.match(/--[a-z][a-z-]*/g) ?? []);
}

/**
 * `ultralong serve --port 0 --no-store --api-keys <one unlimited key> ...args`, in `dir` (its key
 * file and cache directory). `limits` are the key's tenant's prompt and output limits.
 */
export async function startBenchServe(
  dir: string,
  args: string[],
  limits: { maxPromptTokens: number; maxOutputTokens: number },
): Promise<BenchServer> {
  const keys = join(dir, "api-keys.json");
  writeFileSync(
    keys,
    JSON.stringify({
      tenants: { bench: { rpm: 0, ...limits } },
      keys: [{ sha256: await sha256Hex(KEY), tenant: "bench" }],
    }),
  );
  const { child, out } = await startServe(
    ["--port", "0", "--no-store", "--api-keys", keys, ...args],
    { ...process.env, XDG_CACHE_HOME: join(dir, "cache") },
  );
  const banner = out.match(/ultralong serving '([^']+)' on (http:\/\/\S+)/);
  if (!banner) throw new Error(`no URL in serve's banner: ${out}`);
  return { url: banner[2], modelId: banner[1], stop: () => stopChild(child) };
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * POST /v1/completions {prompt: ids, max_tokens, temperature 0, stream: true}: each text chunk is
 * one generated token (the edge writes a chunk per token event). A 429 (the model function's
 * queue is full) is retried after its Retry-After, as a client would, and counted; any other
 * failure ends the answer with `error`. Never throws.
 */
export async function streamCompletion(
  server: BenchServer,
  prompt: number[],
  maxTokens: number,
  sampling: { temperature: number; seed?: number } = { temperature: 0 },
): Promise<Answer> {
  const answer: Answer = {
    startMs: performance.now(),
    tokenMs: [],
    pieces: [],
    error: null,
    retries: 0,
  };
  const body = JSON.stringify({
    model: server.modelId,
    prompt,
    max_tokens: maxTokens,
    temperature: sampling.temperature,
    ...(sampling.seed === undefined ? {} : { seed: sampling.seed }),
    stream: true,
  });
  try {
    for (;;) {
      const res = await fetch(`${server.url}/v1/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
        body,
      });
      if (res.status === 429) {
        await res.arrayBuffer();
        answer.retries++;
        await sleep(1000 * Number(res.headers.get("retry-after") ?? 1));
        continue;
      }
      if (res.status !== 200 || !res.body) {
        answer.error = `HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`;
        return answer;
      }
      let finished = false;
      for await (const m of parseSse(res.body)) {
        if (m.data === "[DONE]") break;
        const chunk = JSON.parse(m.data) as {
          choices?: { text: string; finish_reason: string | null }[];
          error?: { message: string };
        };
        if (chunk.error) {
          answer.error = `stream error: ${chunk.error.message}`;
          return answer;
        }
        const choice = chunk.choices?.[0];
        if (!choice) continue;
        if (choice.finish_reason !== null) finished = true;
        else {
          answer.tokenMs.push(performance.now());
          answer.pieces.push(choice.text);
        }
      }
      if (!finished) answer.error = "stream ended without a finish reason";
      return answer;
    }
  } catch (err) {
    answer.error = (err as Error).message;
    return answer;
  }
}
