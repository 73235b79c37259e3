// docs/http-api.md's openai-client snippet, extracted from the doc (so the doc cannot drift from what
// works): type-checked against the installed openai package, then run as a program against a local
// server that serves the id it names, with OPENAI_BASE_URL and OPENAI_API_KEY as the doc says. And
// the doc's claim that the SDK yields progress chunks with empty `choices` rather than skipping them.
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { type LocalServer, startLocal } from "../functions/entries/local.ts";
import { testModelDir } from "./support/models.ts";

const root = join(import.meta.dirname, "..");
const doc = readFileSync(join(root, "docs/http-api.md"), "utf8");
const blocks = [...doc.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
let s: LocalServer;

/** A child process run to its end; asynchronous, since the server it talks to lives in this one. */
function run(args: string[], env: NodeJS.ProcessEnv = process.env) {
  return new Promise<{ status: number | null; stdout: string; stderr: string }>(
    (resolve, reject) => {
      const child = spawn(process.execPath, args, {
        cwd: root,
        env,
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d) => {
        stdout += d;
      });
      child.stderr.on("data", (d) => {
        stderr += d;
      });
      child.on("error", reject);
      child.on("close", (status) => resolve({ status, stdout, stderr }));
    },
  );
}

beforeAll(async () => {
  s = await startLocal({
    modelDir: await testModelDir(),
    modelId: "ultralong-demo",
    runtime: "reference",
    store: null,
    maxPositions: 2048,
  });
});
afterAll(async () => {
  await s?.close();
});

describe("docs/http-api.md: skipping progress chunks with the openai client", () => {
  it("has one TypeScript block, and it type-checks and runs as the doc says", async () => {
    expect(blocks).toHaveLength(1);
    expect(blocks[0]).toContain("if (!chunk.choices.length) continue;");
    // Inside the repository so that `import OpenAI from "openai"` resolves; test/.tmp is ignored.
    const dir = join(root, "test/.tmp");
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `http-api-snippet-${process.pid}.ts`);
    writeFileSync(file, blocks[0]!);
    onTestFinished(() => rmSync(file, { force: true }));
    const tsc = await run([
      "node_modules/typescript/bin/tsc",
      "--noEmit",
      "--strict",
      "--skipLibCheck",
      "--target",
      "es2022",
      "--module",
      "nodenext",
      "--types",
      "node",
      file,
    ]);
    expect(tsc.stdout + tsc.stderr).toBe("");
    expect(tsc.status).toBe(0);
    const snippet = await run(["--import", "tsx", file], {
      ...process.env,
      OPENAI_BASE_URL: `${s.url}/v1`,
      OPENAI_API_KEY: s.demoKey!,
    });
    expect(snippet.stderr).toBe("");
    expect(snippet.status).toBe(0);
    expect(snippet.stdout.length).toBeGreaterThan(0);
  });

  it("the SDK yields progress chunks with empty choices, which choices[0] would crash on", async () => {
    const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: s.demoKey!, maxRetries: 0 });
    const stream = await client.completions.create({
      model: "ultralong-demo",
      prompt: "A long document. ".repeat(100),
      max_tokens: 4,
      stream: true,
      progress: true,
    } as OpenAI.CompletionCreateParamsStreaming);
    const chunks: OpenAI.Completion[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    const progress = chunks.filter((c) => c.choices.length === 0);
    expect(progress.length).toBeGreaterThan(0);
    expect(progress.every((c) => "progress" in c && c.choices[0] === undefined)).toBe(true);
    expect(chunks.filter((c) => c.choices.length > 0).length).toBeGreaterThan(0);
  });
});
