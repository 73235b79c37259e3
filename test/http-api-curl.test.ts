// docs/http-api.md's "Every route with curl" block, run by bash as it stands against a real
// `ultralong serve` (through bin.js: the built CLI) in a fresh home directory: the demo key is read
// where the doc says it is kept, the three values the banner prints are put in the block's first
// lines, and every curl gets --fail-with-body, so a line answering 4xx or 5xx fails the block.
import type { ChildProcess } from "node:child_process";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { startServe } from "./support/cli.ts";
import { runProcess, scratchDir } from "./support/models.ts";
import { tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
const doc = readFileSync(join(root, "docs/http-api.md"), "utf8");
const section = doc.slice(doc.indexOf("### Every route with curl"));
const block = section.match(/```sh\n([\s\S]*?)```/)![1];

const haveCurl = tool(
  "curl",
  spawnSync("curl", ["--version"]).status === 0,
  "docs/http-api.md's curl examples",
);

let child: ChildProcess | null = null;
afterAll(() => child?.kill("SIGKILL"));

describe.skipIf(!haveCurl)("docs/http-api.md: every route with curl", () => {
  it("covers every edge route the endpoint table names", () => {
    const table = doc.slice(doc.indexOf("## Endpoints (edge)"), doc.indexOf("### Every route"));
    const cells = [...table.matchAll(/^\| (`[^|]*`) \|/gm)].map((m) => m[1]);
    const routes = cells.flatMap((c) => [...c.matchAll(/\/[a-z0-9/{}]+/g)].map((r) => r[0]));
    expect(routes).toContain("/tokenize");
    expect(routes).toContain("/v1/files/{id}");
    for (const route of routes) {
      // `$URL/route` as a word, a path parameter as a shell variable; an alias named in a comment.
      const path = route.replace(/\{\w+\}/g, "\\$\\w+");
      const used = new RegExp(`\\$URL${path}(?![a-z/])`).test(block);
      expect(used || block.includes(`also ${route}`), route).toBe(true);
    }
  });

  it("runs as written against `ultralong serve`, each request answered 2xx", async () => {
    const home = scratchDir("home");
    const env: NodeJS.ProcessEnv = { ...process.env, HOME: home };
    delete env.XDG_CACHE_HOME;
    const served = await startServe(["--port", "0", "--no-store", "--runtime", "wasm"], env);
    child = served.child;
    const banner = (re: RegExp) => served.out.match(re)![1];
    const values: Record<string, string> = {
      URL: banner(/on (http:\/\/127\.0\.0\.1:\d+)/),
      METRICS_KEY: banner(/metrics key: +(ul-metrics-[0-9a-f]+)/),
      MODEL_URL: banner(/model function: (http:\/\/127\.0\.0\.1:\d+)/),
    };
    let lines = block.split("\n");
    for (const [name, value] of Object.entries(values)) {
      const i = lines.findIndex((l) => l.startsWith(`${name}=`));
      expect(i, `the block sets ${name}`).toBeGreaterThanOrEqual(0);
      lines[i] = `${name}=${value}`;
    }
    lines = ['curl() { command curl --fail-with-body -sS "$@"; }', ...lines];
    const cwd = scratchDir("curl");
    const run = await runProcess("bash", ["-euo", "pipefail", "-c", lines.join("\n")], {
      cwd,
      env,
    });
    expect(run.stderr).toBe("");
    expect(run.status).toBe(0);
    const out = run.stdout;
    expect(out).toContain('{"ok":true}');
    expect(out).toContain('"object":"chat.completion"');
    expect(out).toContain('"object":"chat.completion.chunk"');
    expect(out).toContain('"object":"text_completion"');
    expect(out).toMatch(/"count":\d+,"max_model_len":\d+,"tokens":\[/);
    expect(out).toContain('"prompt":"Hello, world"');
    expect(out).toMatch(/"progress":\{"prompt_tokens_done":\d+/); // the streamed upload's
    expect(out).toContain('"filename":"notes.txt"');
    expect(out).toContain('"deleted":true');
    expect(out).toContain("ul_edge_requests_total");
    expect(out).toContain("ul_model_requests_total");
    expect(out).toMatch(/"ready":true[^\n]*"runtime"/);
    child.kill("SIGKILL");
    child = null;
  });
});
