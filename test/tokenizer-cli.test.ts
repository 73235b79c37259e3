// `ultralong tokenize` / `ultralong detokenize` as a user runs them: the real CLI in a child
// process, on a copy of the Llama 3.1 tokenizer files.
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Tokenizer } from "../core/tokenizer/index.ts";
import { COMPILED_TOKENIZER_FILE } from "../core/tokenizer/load.ts";
import {
  LLAMA3_DIR,
  root,
  tokenizerConfigJson,
  tokenizerJson,
} from "./fixtures/tokenizer/reference.ts";

let dir: string;
let tok: Tokenizer;

function cli(args: string[], input?: string) {
  const r = spawnSync(process.execPath, [join(root, "functions/cli/bin.js"), ...args], {
    input,
    encoding: "utf8",
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "ultralong-tokcli-"));
  copyFileSync(join(LLAMA3_DIR, "tokenizer.json"), join(dir, "tokenizer.json"));
  copyFileSync(join(LLAMA3_DIR, "tokenizer_config.json"), join(dir, "tokenizer_config.json"));
  tok = Tokenizer.fromJson(tokenizerJson(), tokenizerConfigJson());
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("ultralong tokenize / detokenize", () => {
  const text = "Hello world's <|eot_id|>\n  spaces\tand ünïcödé 🫠 1234567";

  it("encodes stdin to JSON ids, leaves a compiled vocabulary, and decodes them back", () => {
    const r = cli(["tokenize", "--model", dir], text);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const ids = JSON.parse(r.stdout) as number[];
    expect(ids).toEqual(Array.from(tok.encode(text)));
    expect(existsSync(join(dir, COMPILED_TOKENIZER_FILE))).toBe(true);
    const back = cli(["detokenize", "--model", dir], JSON.stringify(ids));
    expect(back.stdout).toBe(`${text}\n`);
    const args = cli(["detokenize", "--model", dir, ...ids.slice(0, 2).map(String)]);
    expect(args.stdout).toBe(`${tok.decode(ids.slice(0, 2))}\n`);
  });

  it("reads --file, counts, and matches special tokens only with --allow-special", () => {
    const file = join(dir, "input.txt");
    writeFileSync(file, text.repeat(50));
    expect(cli(["tokenize", "--model", dir, "--file", file, "--count"]).stdout).toBe(
      `${tok.encode(text.repeat(50)).length}\n`,
    );
    const trusted = JSON.parse(
      cli(["tokenize", "--model", dir, "--allow-special"], "<|eot_id|>").stdout,
    );
    expect(trusted).toEqual([128009]);
  });

  it("renders --chat input with the model's template", () => {
    const messages = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hi" },
    ];
    const r = cli(
      ["tokenize", "--model", dir, "--chat", "--generation-prompt"],
      JSON.stringify(messages),
    );
    const ids = JSON.parse(r.stdout) as number[];
    expect(ids[0]).toBe(128000);
    expect(ids.slice(-4)).toEqual([128006, 78191, 128007, 271]);
    expect(tok.decode(ids)).toContain("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
  });

  it("fails on one line with a non-zero status for bad input", () => {
    const bad = cli(["tokenize", "--model", dir, "--chat"], '[{"role": "wizard", "content": "x"}]');
    expect(bad.status).toBe(1);
    expect(bad.stderr.trim()).toMatch(/^ultralong tokenize: messages\[0\]\.role: must be one of/);
    expect(cli(["detokenize", "--model", dir], "[1, 999999]").stderr).toMatch(
      /outside the vocabulary/,
    );
  });
});
