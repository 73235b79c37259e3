// `npm run bench -- cli [--runs N] [--mb N]`: how long `ultralong` takes to start, each in a fresh
// process through bin.js (the built CLI, as a user runs it), against `node -e 0` in the same run:
// `--help`, `tokenize --count` on one line from stdin, and `serve` until its banner is printed
// (ready to take requests). Then a cold CLI run on a large file (default 13 MB):
// `tokenize --file F --count` against tiktoken-WASM's cold run in a fresh process (load the WASM
// module and the Llama 3 ranks from disk, read the file, encode it whole, print the count). The
// compiled vocabulary is on disk for both (the first `tokenize` on a directory writes it; tiktoken's
// ranks file is written beforehand). Prints one JSON object.
//
// Wall-clock medians of N runs (and minima: on a shared machine, the closest to the uncontended
// cost); every figure is measured in this run.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModelDir } from "../../core/node/make-model.ts";
import { Tokenizer } from "../../core/tokenizer/index.ts";
import { LLAMA3_PATTERN } from "../../core/tokenizer/vocabulary.ts";
import { startServe } from "../support/cli.ts";
import { benchCorpus } from "./tokenizer.ts";

const root = join(import.meta.dirname, "../..");
const BIN = join(root, "functions/cli/bin.js");

function stats(ms: number[]) {
  const s = [...ms].sort((a, b) => a - b);
  return { medianMs: s[Math.floor(s.length / 2)], minMs: s[0], runs: s.length };
}

/** Wall time of one process run to its end (stdin: `input`); fails loudly on a non-zero exit. */
function timed(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}) {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, args, {
    cwd: root,
    input: opts.input ?? "",
    env: opts.env ?? process.env,
    encoding: "utf8",
    maxBuffer: 1 << 26,
  });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`${args.join(" ")} exited ${r.status}: ${r.stderr}`);
  return { ms, stdout: r.stdout, stderr: r.stderr };
}

/** Wall time from spawning `ultralong serve` to its whole banner on stdout; then it is killed. */
async function serveReady(env: NodeJS.ProcessEnv): Promise<number> {
  const t0 = performance.now();
  const { child } = await startServe(["--port", "0", "--no-store"], env);
  const ms = performance.now() - t0;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGKILL");
  await exited;
  return ms;
}

/**
 * tiktoken-WASM's cold run, in pieces of about 64 KB cut before a letter that follows a newline
 * (no Llama 3 pre-token spans such a cut, so the ids are those of the whole text): the peer's
 * better way. One 13 MB string at once took it 6.7 s (median of 3) where pieces took 5.0 s, in
 * two loaded runs here.
 */
const TIKTOKEN_CHILD = `
import { readFileSync } from "node:fs";
import { Tiktoken } from "@dqbd/tiktoken";
const [ranksFile, specialsFile, pattern, file] = process.argv.slice(1);
const tk = new Tiktoken(readFileSync(ranksFile, "utf8"), JSON.parse(readFileSync(specialsFile, "utf8")), pattern);
const text = readFileSync(file, "utf8");
let n = 0;
for (let start = 0; start < text.length; ) {
  const cut = text.slice(start + 65536).search(/\\n[A-Za-z]/);
  const end = cut < 0 ? text.length : start + 65536 + cut + 1;
  n += tk.encode_ordinary(text.slice(start, end)).length;
  start = end;
}
console.log(n);
`;

export default async function main(args: string[]): Promise<void> {
  const opt = (name: string, dflt: number) =>
    args.includes(name) ? Number(args[args.indexOf(name) + 1]) : dflt;
  const runs = opt("--runs", 7);
  const mb = opt("--mb", 13);
  const dir = mkdtempSync(join(tmpdir(), "ultralong-clibench-"));
  try {
    const env = { ...process.env, XDG_CACHE_HOME: join(dir, "cache") };
    const model = join(dir, "model");
    await makeModelDir(model, { layers: 2, hidden: 64, heads: 4, kvHeads: 2, ffn: 192, seed: 0 });
    // Warm-up, not timed: the build current, the compiled vocabulary and the demo model on disk.
    timed([BIN, "tokenize", "--model", model, "--count"], { input: "warm-up\n" });
    await serveReady(env);

    const node: number[] = [];
    const help: number[] = [];
    const count: number[] = [];
    const serve: number[] = [];
    for (let i = 0; i < runs; i++) {
      // Interleaved, so load on the machine falls on all of them alike.
      node.push(timed(["-e", "0"]).ms);
      help.push(timed([BIN, "--help"]).ms);
      count.push(
        timed([BIN, "tokenize", "--model", model, "--count"], { input: "Hello, world!\n" }).ms,
      );
      serve.push(await serveReady(env));
    }
    const nodeS = stats(node);

    // The large file: ours through the CLI, tiktoken-WASM in a fresh process of its own.
    const corpus = benchCorpus(mb).join("\n");
    const file = join(dir, "corpus.txt");
    writeFileSync(file, corpus);
    const tok = Tokenizer.fromCompiled(
      (await import("node:fs")).readFileSync(join(model, "tokenizer.ultralong.bin")),
    );
    const ranks: string[] = [];
    const specials: Record<string, number> = {};
    for (let id = 0; id < tok.vocabSize; id++) {
      if (tok.isSpecial(id)) specials[tok.decode([id])] = id;
      else ranks.push(`${Buffer.from(tok.tokenBytes(id)).toString("base64")} ${id}`);
    }
    writeFileSync(join(dir, "ranks.tiktoken"), ranks.join("\n"));
    writeFileSync(join(dir, "specials.json"), JSON.stringify(specials));
    const tiktokenArgs = [
      "--input-type=module",
      "-e",
      TIKTOKEN_CHILD,
      join(dir, "ranks.tiktoken"),
      join(dir, "specials.json"),
      LLAMA3_PATTERN,
      file,
    ];
    const ours: number[] = [];
    const tiktoken: number[] = [];
    let counts = { ours: 0, tiktoken: 0 };
    for (let i = 0; i < 3; i++) {
      const a = timed([BIN, "tokenize", "--model", model, "--file", file, "--count"]);
      const b = timed(tiktokenArgs);
      ours.push(a.ms);
      tiktoken.push(b.ms);
      counts = { ours: Number(a.stdout), tiktoken: Number(b.stdout) };
    }
    const oursS = stats(ours);
    const tikS = stats(tiktoken);
    const helpS = stats(help);
    const countS = stats(count);
    const serveS = stats(serve);
    console.log(
      JSON.stringify(
        {
          benchmark: "cli",
          peer: { "node -e 0": nodeS },
          startup: {
            help: { ...helpS, overNodeMs: helpS.medianMs - nodeS.medianMs },
            tokenizeCountOneLine: { ...countS, overNodeMs: countS.medianMs - nodeS.medianMs },
            serveUntilReady: { ...serveS, overNodeMs: serveS.medianMs - nodeS.medianMs },
          },
          coldLargeFile: {
            megabytes: Buffer.byteLength(corpus) / 1e6,
            tokens: counts,
            ours: oursS,
            tiktokenWasm: tikS,
            tiktokenOverOurs: tikS.medianMs / oursS.medianMs,
          },
          targets: {
            helpWithin250msOfNode: helpS.medianMs - nodeS.medianMs <= 250,
            tokenizeCountUnder500ms: countS.medianMs < 500,
            coldLargeFileTwiceTiktoken: tikS.medianMs / oursS.medianMs >= 2,
            sameTokenCount: counts.ours === counts.tiktoken,
          },
        },
        null,
        2,
      ),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
