// Small generated Llama models for tests, written once per test file (per set of options) into a
// temporary directory that is removed when the test process exits.
//
//   const dir = await testModelDir();                      // TINY: 2 layers, hidden 64, Llama 3.1 vocab
//   const dir = await testModelDir({ ...TINY, rope: "llama3", dtype: "bf16", shards: 2 });
//   const model = await loadTestModel(SMALL_VOCAB);        // LoadedModel, 512-token vocab, no tokenizer
//
// Everything goes through the real generator and the real loader: the files are exactly what
// `ultralong make-model` writes.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { GenerateOptions } from "../../core/model/generate.ts";
import type { LoadedModel } from "../../core/model/weights.ts";
import { loadModelDir } from "../../core/node/load-model-dir.ts";
import { makeModelDir } from "../../core/node/make-model.ts";

/** 2 layers, hidden 64, 4 heads / 2 KV heads x 16, ffn 192, Llama 3.1 vocab and tokenizer, yarn 128. */
export const TINY: GenerateOptions = {
  layers: 2,
  hidden: 64,
  heads: 4,
  kvHeads: 2,
  ffn: 192,
  seed: 1,
};

/** Like TINY but a 512-token vocab (so no tokenizer files): for tests that only need token ids. */
export const SMALL_VOCAB: GenerateOptions = { ...TINY, vocab: 512 };

/**
 * GQA 4 with head_dim 32 (int8 needs multiples of 32) and 3 KV heads, so the wasm runtime's shards
 * are uneven over 2 threads (2 + 1 heads) and 3; a 512-token vocab.
 */
export const UNEVEN_KV: GenerateOptions = {
  ...SMALL_VOCAB,
  hidden: 96,
  heads: 12,
  kvHeads: 3,
  headDim: 32,
  ffn: 160,
  seed: 5,
};

let root: string | null = null;
const made = new Map<string, Promise<string>>();

function canonical(opts: GenerateOptions): string {
  const entries = Object.entries(opts).filter(([, v]) => v !== undefined);
  return JSON.stringify(entries.sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** A fresh empty directory under this process's temporary root (removed at exit). */
export function scratchDir(prefix = "dir"): string {
  if (root === null) {
    const r = mkdtempSync(join(tmpdir(), "ultralong-test-"));
    root = r;
    process.once("exit", () => rmSync(r, { recursive: true, force: true }));
  }
  return mkdtempSync(join(root, `${prefix}-`));
}

/** The directory of a generated model with `opts` (default TINY), made once per process. */
export function testModelDir(opts: GenerateOptions = TINY): Promise<string> {
  const key = canonical(opts);
  let dir = made.get(key);
  if (!dir) {
    dir = (async () => {
      const d = scratchDir("model");
      await makeModelDir(d, opts);
      return d;
    })();
    made.set(key, dir);
  }
  return dir;
}

/** testModelDir, loaded (headers only; the fingerprint cache lives beside the model). */
export async function loadTestModel(opts: GenerateOptions = TINY): Promise<LoadedModel> {
  return loadModelDir(await testModelDir(opts));
}

/**
 * Runs the real `ultralong` process (functions/cli/bin.js) from the repository root, for tests of
 * CLI commands on generated models. Asynchronous, so several can run at once.
 */
export function runUltralong(
  args: string[],
  env: Record<string, string | undefined> = process.env,
): Promise<ProcessResult> {
  return runProcess(process.execPath, ["functions/cli/bin.js", ...args], { env });
}

export interface ProcessResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `cmd` to its end with stdin closed, collecting its output (cwd: this process's, default). */
export function runProcess(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: Record<string, string | undefined> } = {},
): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      stdio: ["ignore", "pipe", "pipe"],
      cwd: opts.cwd,
      env: opts.env ?? process.env,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("close", (status) => resolve({ status, stdout, stderr }));
  });
}
