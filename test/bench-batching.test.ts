// `npm run bench -- batching --quick` end to end (a tiny generated model, a short document, a real
// `ultralong serve` and llama.cpp through node-llama-cpp): the JSON parses, every cell asked every
// question on both sides, none of our answers was lost or differed from the same question asked
// alone, and the ratios are the figures' quotients. No timing is asserted. Bad arguments are
// refused in one line before anything starts.
import { describe, expect, it } from "vitest";
import { runProcess } from "./support/models.ts";
import { serveOptions } from "./support/serve-client.ts";
import { tool } from "./support/tools.ts";

const haveLlamaCpp = await import("node-llama-cpp").then(
  () => true,
  () => false,
);

const bench = (args: string[]) =>
  runProcess(process.execPath, [
    "node_modules/tsx/dist/cli.mjs",
    "test/bench/run.ts",
    "batching",
    ...args,
  ]);

interface Figures {
  clients: number;
  requests: number;
  outputTokens: number;
  wallMs: number;
  aggregateDecodeTokensPerSec: number;
  lost: number;
  wrong: number;
  wrongFromToken: { min: number | null; p50: number | null };
  sameAnswersAsLlamaCpp?: number;
}

describe("npm run bench -- batching", () => {
  it("refuses an unknown argument, a bad count or temperature and --max-seqs serve does not have, in one line", async () => {
    const unknown = await bench(["--quick", "--bogus"]);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr.trim()).toBe(
      "npm run bench -- batching: unknown argument '--bogus' (--quick, --staggered, --clients, --doc-tokens, --tokens, --max-seqs, --questions, --max-prefill-tokens, --temperature)",
    );
    const hot = await bench(["--quick", "--temperature", "3"]);
    expect(hot.status).toBe(2);
    expect(hot.stderr.trim()).toBe(
      "npm run bench -- batching: --temperature takes a number in [0, 2], got '3'",
    );
    const zero = await bench(["--clients", "4,0"]);
    expect(zero.status).toBe(2);
    expect(zero.stderr.trim()).toBe(
      "npm run bench -- batching: --clients takes integers of at least 1, got '0'",
    );
    if (!(await serveOptions()).has("--max-seqs")) {
      const seqs = await bench(["--quick", "--max-seqs", "4"]);
      expect(seqs.status).toBe(2);
      expect(seqs.stderr).toMatch(/has no --max-seqs/);
    }
  }, 60_000);

  it.skipIf(!tool("node-llama-cpp", haveLlamaCpp, "the batching benchmark's smoke run"))(
    "--quick: every cell answered every question, ours all right, ratios from the figures",
    async () => {
      // One server: batched where serve batches (the bench's default would add a second, one
      // sequence at a time), else the only one there is.
      const batched = (await serveOptions()).has("--max-seqs");
      const r = await bench([
        ...["--quick", "--clients", "3", "--doc-tokens", "64", "--tokens", "4"],
        ...(batched ? ["--max-seqs", "3"] : []),
      ]);
      expect(r.status, r.stderr).toBe(0);
      const report = JSON.parse(r.stdout) as {
        bench: string;
        settings: { questionsPerCell: number; maxTokens: number };
        ours: { modes: { mode: string }[] };
        cells: {
          clients: number;
          ours: Record<string, Figures>;
          llamaCpp: Figures;
          ratios: Record<string, { aggregateDecodeTokensPerSec: number }>;
        }[];
        targets: { atClients: number; lostOrWrong: { value: number; met: boolean } };
      };
      expect(report.bench).toBe("batching");
      expect(report.settings.questionsPerCell).toBe(3);
      // 1 client always runs: the answers asked alone.
      expect(report.cells.map((c) => c.clients)).toEqual([1, 3]);
      expect(report.targets.atClients).toBe(3);
      expect(report.targets.lostOrWrong).toEqual({ value: 0, target: 0, met: true });
      const modes = report.ours.modes.map((m) => m.mode);
      expect(modes).toEqual([
        batched ? "max-seqs 3" : "one sequence at a time (serve has no --max-seqs)",
      ]);
      for (const cell of report.cells) {
        expect(Object.keys(cell.ours)).toEqual(modes);
        for (const f of [...Object.values(cell.ours), cell.llamaCpp]) {
          expect(f.clients).toBe(cell.clients);
          expect(f.requests).toBe(3);
          expect(f.lost).toBe(0);
          expect(f.outputTokens).toBeGreaterThan(0);
          expect(f.outputTokens).toBeLessThanOrEqual(3 * 4);
        }
        for (const mode of modes) {
          const ours = cell.ours[mode];
          expect(ours.wrong).toBe(0);
          expect(ours.wrongFromToken).toEqual({ min: null, p50: null });
          expect(ours.sameAnswersAsLlamaCpp).toBeLessThanOrEqual(3);
          // Within the rounding of the two figures (0.1 tokens/s) and of the ratio (3 digits).
          const quotient =
            ours.aggregateDecodeTokensPerSec / cell.llamaCpp.aggregateDecodeTokensPerSec;
          expect(
            Math.abs(cell.ratios[mode].aggregateDecodeTokensPerSec / quotient - 1),
          ).toBeLessThan(0.02);
        }
      }
    },
    120_000,
  );
});
