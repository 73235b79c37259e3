// `--kv-dtype fp8` through the CLI and HTTP on native-wasm: `ultralong generate` twice with a
// snapshot store (the second run restores fp8 snapshots and says the same), `ultralong serve`
// answering a chat request over a real socket, and the one-line refusal of a runtime without fp8.
// Needs emcc (native/build.mjs builds the module).
import type { ChildProcess } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { build } from "../native/build.mjs";
import { runCommand, startServe } from "./support/cli.ts";
import { scratchDir, TINY, testModelDir } from "./support/models.ts";
import { haveEmcc, tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");

const generate = (args: string[]) => runCommand("generate", args);

// About 150 tokens: two whole 64-token snapshot chunks (fp8 scale blocks are 64 positions too, so
// each chunk is stored as the cache holds it).
const PROMPT = "The old lighthouse keeper counted the ships that passed each night. ".repeat(11);

let child: ChildProcess | null = null;
afterAll(() => {
  child?.kill("SIGKILL");
});

describe.skipIf(!tool("emcc", haveEmcc(), "the fp8 CLI and HTTP tests on native-wasm"))(
  "--kv-dtype fp8 on native-wasm",
  () => {
    let dir: string;
    beforeAll(async () => {
      await build({ root });
      dir = await testModelDir(TINY);
    });

    it("ultralong generate --kv-dtype fp8 --store DIR: the second run restores the snapshots and prints the same", async () => {
      const store = scratchDir("fp8-store");
      const args = [
        ...["--model", dir, "--prompt", PROMPT, "--runtime", "native-wasm", "--kv-dtype", "fp8"],
        ...["--store", store, "--chunk", "64", "--max-tokens", "6", "--temperature", "0"],
        "--progress",
      ];
      const first = await generate(args);
      expect(first.status, first.stderr).toBe(0);
      const summary = (stderr: string) => stderr.trim().split("\n").at(-1) ?? "";
      expect(summary(first.stderr)).toMatch(/^\[native-wasm\] prompt \d+ tokens \(0 cached\)/);
      const second = await generate(args);
      expect(second.status, second.stderr).toBe(0);
      expect(summary(second.stderr)).toMatch(/^\[native-wasm\] prompt \d+ tokens \(128 cached\)/);
      expect(second.stdout).toBe(first.stdout);
      expect(first.stdout.trim().length).toBeGreaterThan(0);
    });

    it("a runtime without fp8 KV, or an unknown dtype, is refused in one line", async () => {
      const cases: [string[], RegExp][] = [
        [
          ["--runtime", "wasm", "--kv-dtype", "fp8"],
          /runtime 'wasm' stores KV as f32, bf16, not fp8-e4m3/,
        ],
        [
          ["--runtime", "native-wasm", "--kv-dtype", "fp16"],
          /--kv-dtype must be f32, bf16 or fp8, got 'fp16'/,
        ],
      ];
      for (const [extra, message] of cases) {
        const r = await generate(["--model", dir, "--prompt", "a", ...extra]);
        expect(r.status, extra.join(" ")).toBe(1);
        expect(r.stderr).toMatch(message);
        expect(r.stderr.trim().split("\n")).toHaveLength(1);
      }
    });

    it("ultralong serve --kv-dtype fp8 answers a chat completion over HTTP", async () => {
      const served = await startServe(
        [
          ...["--model", dir, "--port", "0", "--runtime", "native-wasm", "--kv-dtype", "fp8"],
          ...["--store", scratchDir("fp8-serve")],
        ],
        { ...process.env, XDG_CACHE_HOME: scratchDir("cache") },
      );
      child = served.child;
      const { out, err } = served;
      expect(err).toMatch(/KV fp8-e4m3/);
      const url = /on (http:\/\/\S+) /.exec(out)?.[1];
      const key = /demo API key: (\S+)/.exec(out)?.[1];
      expect(url && key).toBeTruthy();
      const res = await fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: /serving '([^']+)'/.exec(out)?.[1],
          messages: [{ role: "user", content: PROMPT }],
          max_tokens: 4,
          temperature: 0,
        }),
      });
      const json = (await res.json()) as { object: string; usage: { completion_tokens: number } };
      expect(res.status, JSON.stringify(json)).toBe(200);
      expect(json.object).toBe("chat.completion");
      expect(json.usage.completion_tokens).toBeGreaterThan(0);
      const exited = new Promise<number | null>((r) => child!.once("exit", (code) => r(code)));
      child!.kill("SIGTERM");
      expect(await exited).toBe(0);
      child = null;
    });
  },
);
