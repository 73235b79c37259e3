// `ultralong generate`, through the real CLI entry (in-process `main`, and once as a child process),
// against greedy decoding done by hand on the reference runtime and decoded by the tokenizer.
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { renderChat } from "../core/chat/index.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import { argmax } from "../core/engine/sampling.ts";
import type { LoadedModel } from "../core/model/weights.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import type { Tokenizer } from "../core/tokenizer/index.ts";
import { COMPILED_TOKENIZER_FILE, loadTokenizer } from "../core/tokenizer/load.ts";
import { runCommand } from "./support/cli.ts";
import { scratchDir, TINY, testModelDir } from "./support/models.ts";

const run = (args: string[]) => runCommand("generate", args);

const PROMPT = "Once upon a time";
let dir: string;
let tokenizer: Tokenizer;
let model: LoadedModel;
let greedyText: string; // 6 greedy tokens after BOS + PROMPT, decoded

/** Greedy decoding by hand on the reference runtime, decoded by the tokenizer. */
async function greedyByHand(prompt: Int32Array, n: number): Promise<string> {
  const runtime = await createReferenceRuntime({ model, maxPositions: prompt.length + n });
  let logits = await runtime.forward(prompt);
  const ids: number[] = [];
  for (let i = 0; i < n; i++) {
    ids.push(argmax(logits));
    if (i + 1 < n) logits = await runtime.forward(Int32Array.of(ids[i]));
  }
  return tokenizer.decode(ids, { skipSpecialTokens: true });
}

beforeAll(async () => {
  dir = await testModelDir(TINY);
  model = await loadModelDir(dir);
  tokenizer = await loadTokenizer(model.files);
  // Every CLI run then loads the compiled vocabulary instead of parsing tokenizer.json.
  writeFileSync(join(dir, COMPILED_TOKENIZER_FILE), tokenizer.compile());
  const ids = Int32Array.from([model.config.bosTokenId!, ...tokenizer.encode(PROMPT)]);
  greedyText = await greedyByHand(ids, 6);
});

describe("ultralong generate", () => {
  const greedy = ["--max-tokens", "6", "--temperature", "0", "--runtime", "reference"];

  it("streams the greedy continuation of BOS + the prompt to stdout", async () => {
    const r = await run(["--model", dir, "--prompt", PROMPT, ...greedy]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`${greedyText}\n`);
    expect(r.stderr).toBe(""); // stderr is not a terminal and there is no --progress
  });

  it("reads the prompt from a file, and shows progress and a summary with --progress", async () => {
    const file = join(scratchDir("prompt"), "prompt.txt");
    writeFileSync(file, PROMPT);
    const r = await run(["--model", dir, "--file", file, "--progress", "--chunk", "2", ...greedy]);
    expect(r.stdout).toBe(`${greedyText}\n`);
    const lines = r.stderr.trim().split("\n");
    expect(lines[0]).toMatch(/^prefill \[\.+\] 0\/\d+ tokens/);
    expect(lines.at(-2)).toMatch(/^prefill \[#+\] (\d+)\/\1 tokens \(100\.0%\)/);
    expect(lines.at(-1)).toMatch(
      /^\[reference\] prompt \d+ tokens .* 6 generated .* finish: length$/,
    );
  });

  it("with --chat, continues the chat template's rendering of a system and a user message", async () => {
    const ids = renderChat(
      tokenizer,
      tokenizer.chatTemplate!,
      [
        { role: "system", content: "Be brief." },
        { role: "user", content: PROMPT },
      ],
      { addGenerationPrompt: true },
    );
    const want = await greedyByHand(ids, 6);
    const r = await run([
      "--model",
      dir,
      "--prompt",
      PROMPT,
      "--chat",
      "--system",
      "Be brief.",
      ...greedy,
    ]);
    expect(r.stdout).toBe(`${want}\n`);
  });

  it("cuts the output at a --stop string", async () => {
    const stop = greedyText.slice(3, 6);
    const r = await run(["--model", dir, "--prompt", PROMPT, "--stop", stop, ...greedy]);
    expect(r.stdout).toBe(`${greedyText.slice(0, greedyText.indexOf(stop))}\n`);
  });

  it("gives the same sampled text for the same --seed", async () => {
    const args = [
      "--model",
      dir,
      "--prompt",
      PROMPT,
      "--max-tokens",
      "5",
      "--runtime",
      "reference",
    ];
    const a = await run([...args, "--temperature", "1.2", "--seed", "7"]);
    const b = await run([...args, "--temperature", "1.2", "--seed", "7"]);
    expect(a.status).toBe(0);
    expect(b.stdout).toBe(a.stdout);
  });

  it("refuses bad arguments with one line on stderr", async () => {
    const cases: [string[], RegExp][] = [
      [["--model", dir], /exactly one of --prompt TEXT and --file F/],
      [["--model", dir, "--prompt", "a", "--file", "b"], /exactly one of/],
      [["--prompt", "a"], /--model DIR is required/],
      [["--model", dir, "--prompt", "a", "--system", "s"], /--system needs --chat/],
      [["--model", dir, "--prompt", "a", "--max-tokens", "x"], /--max-tokens must be/],
      [["--model", dir, "--prompt", "a", "--runtime", "nope"], /unknown runtime 'nope'/],
      [["--model", dir, "--prompt", "a", "--top-p", "3", "--runtime", "reference"], /top_p/],
    ];
    for (const [args, message] of cases) {
      const r = await run(args);
      expect(r.status, args.join(" ")).toBe(1);
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
    }
  });

  it("works as the installed binary", () => {
    const r = spawnSync(
      process.execPath,
      ["functions/cli/bin.js", "generate", "--model", dir, "--prompt", PROMPT, ...greedy],
      { encoding: "utf8", timeout: 120_000 },
    );
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`${greedyText}\n`);
  });
});
