// `npm run bench -- sampling` end to end on a small vocabulary: the JSON parses, every setting was
// measured on both shapes of logits, and the ratio is the figures' quotient. No timing is
// asserted. Bad arguments are refused in one line.
import { describe, expect, it } from "vitest";
import { runProcess } from "./support/models.ts";

const bench = (args: string[]) =>
  runProcess(process.execPath, [
    "node_modules/tsx/dist/cli.mjs",
    "test/bench/run.ts",
    "sampling",
    ...args,
  ]);

describe("npm run bench -- sampling", () => {
  it("refuses an unknown argument and a bad count in one line", async () => {
    for (const args of [["--bogus"], ["--reps", "0"], ["--vocab"]]) {
      const r = await bench(args);
      expect(r.status, args.join(" ")).toBe(2);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
      expect(r.stderr).toMatch(/^npm run bench -- sampling: /);
    }
  });

  it("measures every setting on both shapes, ours against the textbook", async () => {
    const r = await bench(["--vocab", "4096", "--reps", "20"]);
    expect(r.status, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as {
      bench: string;
      vocab: number;
      results: {
        setting: string;
        logits: string;
        oursMsPerToken: number;
        textbookMsPerToken: number;
        textbookOverOurs: number;
      }[];
    };
    expect(report.bench).toBe("sampling");
    expect(report.vocab).toBe(4096);
    expect(report.results).toHaveLength(16); // 8 settings x 2 shapes
    expect(new Set(report.results.map((x) => x.logits)).size).toBe(2);
    for (const x of report.results) {
      expect(x.oursMsPerToken, x.setting).toBeGreaterThan(0);
      expect(x.textbookMsPerToken, x.setting).toBeGreaterThan(0);
      const q = x.textbookMsPerToken / x.oursMsPerToken;
      expect(Math.abs(x.textbookOverOurs - q) / q, x.setting).toBeLessThan(0.01);
    }
  }, 60_000);
});
