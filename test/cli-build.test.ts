// The CLI runs from the JavaScript functions/cli/build.mjs bundles, never from a stale one: the build
// folder is current only while every source it was made from is unchanged (mtime and size, or its
// SHA-256 where only the mtime moved); the bundle's rewrites
// (a source's own URL, lazily imported TypeScript, TypeScript workers) behave as the sources do;
// and `ultralong` through bin.js answers exactly as the sources do while a loader hook refuses to
// load any .ts file, in the main thread and in worker threads (the wasm runtime's shards, the file
// tokenizer), so no TypeScript loader runs at start.
import type { ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { build, currentBuild } from "../functions/cli/build.mjs";
import { runCommand, startServe } from "./support/cli.ts";
import { runProcess, scratchDir, testModelDir } from "./support/models.ts";

/** A `--import` module that makes loading any .ts file an error, in this thread and in workers. */
function noTypeScriptHook(): string {
  const dir = scratchDir("no-ts");
  const hooks = join(dir, "hooks.mjs");
  writeFileSync(
    hooks,
    `export async function load(url, context, next) {
  if (/\\.m?ts$/.test(new URL(url).pathname)) throw new Error("loaded TypeScript: " + url);
  return next(url, context);
}
`,
  );
  const register = join(dir, "register.mjs");
  writeFileSync(
    register,
    `import { register } from "node:module";\nregister(${JSON.stringify(pathToFileURL(hooks).href)});\n`,
  );
  return register;
}

function write(dir: string, path: string, text: string) {
  mkdirSync(join(dir, path, ".."), { recursive: true });
  writeFileSync(join(dir, path), text);
}

describe("currentBuild: a build is current only while its sources are unchanged", () => {
  it("changed mtime, changed size, a removed source or entry: not current", () => {
    const dir = scratchDir("manifest");
    const out = join(dir, "out");
    write(dir, "src/a.ts", "export const a = 1;\n");
    write(dir, "out/b1/main.mjs", "");
    const record = (mtimeMs: number, size: number) =>
      write(
        dir,
        "out/manifest.json",
        JSON.stringify({ entry: "b1/main.mjs", inputs: { "src/a.ts": [mtimeMs, size] } }),
      );
    const st = statSync(join(dir, "src/a.ts"));
    record(st.mtimeMs, st.size);
    expect(currentBuild(dir, out)).toBe(pathToFileURL(join(out, "b1/main.mjs")).href);
    utimesSync(join(dir, "src/a.ts"), st.atime, new Date(st.mtimeMs + 1000));
    expect(currentBuild(dir, out)).toBeNull();
    const touched = statSync(join(dir, "src/a.ts"));
    record(touched.mtimeMs, touched.size + 1); // same mtime, another size
    expect(currentBuild(dir, out)).toBeNull();
    record(touched.mtimeMs, touched.size);
    expect(currentBuild(dir, out)).not.toBeNull();
    // With its hash recorded, a source whose mtime alone changed (a copy that drops mtimes) is the
    // same source; one changed to other bytes of the same size is not.
    const sha256 = createHash("sha256")
      .update(readFileSync(join(dir, "src/a.ts")))
      .digest("hex");
    write(
      dir,
      "out/manifest.json",
      JSON.stringify({ entry: "b1/main.mjs", inputs: { "src/a.ts": [1, touched.size, sha256] } }),
    );
    expect(currentBuild(dir, out)).not.toBeNull();
    writeFileSync(join(dir, "src/a.ts"), "export const a = 2;\n");
    expect(currentBuild(dir, out)).toBeNull();
    rmSync(join(out, "b1/main.mjs"));
    expect(currentBuild(dir, out)).toBeNull();
    write(dir, "out/b1/main.mjs", "");
    rmSync(join(dir, "src/a.ts"));
    expect(currentBuild(dir, out)).toBeNull();
    expect(currentBuild(dir, join(dir, "absent"))).toBeNull();
  });
});

describe("build: what the bundle rewrites behaves as in the sources", () => {
  const tree = (main: string) => {
    const dir = scratchDir("cli-src");
    write(dir, "functions/cli/main.ts", main);
    write(dir, "functions/node/file-tokenizer-thread.ts", "export {};\n");
    write(dir, "functions/cli/lazy.ts", "export const lazy: string = 'lazy';\n");
    return dir;
  };

  it("a source's URL, a computed-URL import of TypeScript; up to date until a source changes", async () => {
    const dir = tree(`export async function main(): Promise<string> {
  const own = import.meta.url;
  const asset = new URL("../../data/x.bin", import.meta.url).href;
  const { lazy } = await import(new URL("./lazy.ts", import.meta.url).href);
  return JSON.stringify({ own, asset, lazy });
}
`);
    const first = await build({ root: dir });
    expect(first.upToDate).toBe(false);
    expect((await build({ root: dir })).upToDate).toBe(true);
    const entry = currentBuild(dir)!;
    const run = await runProcess(process.execPath, [
      "--import",
      noTypeScriptHook(),
      "--input-type=module",
      "-e",
      `const { main } = await import(${JSON.stringify(entry)}); console.log(await main());`,
    ]);
    expect(run.stderr).toBe("");
    expect(JSON.parse(run.stdout)).toEqual({
      own: pathToFileURL(join(dir, "functions/cli/main.ts")).href,
      asset: pathToFileURL(join(dir, "data/x.bin")).href,
      lazy: "lazy",
    });
    writeFileSync(join(dir, "functions/cli/lazy.ts"), "export const lazy: string = 'changed';\n");
    expect(currentBuild(dir)).toBeNull();
    expect((await build({ root: dir })).upToDate).toBe(false);
  });

  it("refuses TypeScript named by URL that it cannot bundle (a worker it does not know)", async () => {
    const dir = tree(`export const worker = new URL("./lazy.ts", import.meta.url);\n`);
    await expect(build({ root: dir })).rejects.toThrow(
      /functions\/cli\/main\.ts: new URL\("\.\/lazy\.ts", import\.meta\.url\) names TypeScript/,
    );
    expect(currentBuild(dir)).toBeNull();
  });
});

describe("bin.js runs the built CLI, with no TypeScript loaded anywhere", () => {
  let child: ChildProcess | null = null;
  afterAll(() => child?.kill("SIGKILL"));
  const hook = noTypeScriptHook();

  it("--help and tokenize answer as the sources do", async () => {
    const model = await testModelDir();
    const help = await runProcess(process.execPath, ["--import", hook, "functions/cli/bin.js"]);
    const source = await runCommand("--help", []);
    expect(help.stderr).toBe("");
    expect(help.stdout).toBe(source.stdout);
    const text = join(scratchDir("text"), "t.txt");
    writeFileSync(text, "Hello, world! Ünïcödé and 12345 numbers.\n");
    const args = ["tokenize", "--model", model, "--file", text, "--no-cache"];
    const built = await runProcess(process.execPath, [
      "--import",
      hook,
      "functions/cli/bin.js",
      ...args,
    ]);
    expect(built.stderr).toBe("");
    expect(built.stdout).toBe((await runCommand(args[0], args.slice(1))).stdout);
  });

  it("serve: the threaded wasm runtime and the file tokenizer's worker start from built code", async () => {
    const model = await testModelDir();
    const cache = scratchDir("cache");
    const served = await startServe(
      ["--model", model, "--port", "0", "--no-store", "--runtime", "wasm", "--threads", "2"],
      { ...process.env, XDG_CACHE_HOME: cache, NODE_OPTIONS: `--import ${hook}` },
    );
    child = served.child;
    const url = served.out.match(/on (http:\/\/127\.0\.0\.1:\d+)/)![1];
    const key = readFileSync(join(cache, "ultralong/demo-api-key"), "utf8");
    const auth = { Authorization: `Bearer ${key}` };
    const form = new FormData();
    form.append("purpose", "user_data");
    form.append("file", new Blob(["Meeting notes: ship on Friday.\n"]), "notes.txt");
    const file = await fetch(`${url}/v1/files`, { method: "POST", headers: auth, body: form });
    expect(file.status).toBe(200);
    const { id, tokens } = (await file.json()) as { id: string; tokens: number };
    expect(tokens).toBeGreaterThan(0);
    const chat = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { ...auth, "Content-Type": "application/json" },
      body: JSON.stringify({
        model: served.out.match(/serving '([^']+)'/)![1],
        messages: [{ role: "user", content: [{ type: "file", file: { file_id: id } }] }],
        max_tokens: 2,
      }),
    });
    expect(chat.status).toBe(200);
    expect(served.err).not.toMatch(/TypeScript/);
    served.child.kill("SIGKILL");
    child = null;
  });
});
