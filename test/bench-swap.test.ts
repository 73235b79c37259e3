// `npm run bench -- swap --quick` end to end (the 2-layer test model, s3rver started by the bench):
// the JSON parses, every place swapped every length (the bench itself checks each restore against
// the KV it saved, and fails otherwise), the stored objects are the sealed snapshot format (a little
// more than the payload), and the ratios are the figures' quotients. No timing is asserted. Bad
// arguments are refused in one line.
import { describe, expect, it } from "vitest";
import { runProcess } from "./support/models.ts";

const bench = (args: string[]) =>
  runProcess(process.execPath, [
    "node_modules/tsx/dist/cli.mjs",
    "test/bench/run.ts",
    "swap",
    ...args,
  ]);

interface Place {
  saveMs: number;
  restoreMs: number;
  storedBytes: number | null;
  recomputeOverSwap: number;
}

describe("npm run bench -- swap", () => {
  it("refuses an unknown argument and a bad length in one line", async () => {
    const unknown = await bench(["--bogus"]);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr.trim().split("\n")).toHaveLength(1);
    expect(unknown.stderr).toMatch(/^npm run bench -- swap: .*bogus/);
    const bad = await bench(["--tokens", "0"]);
    expect(bad.status).toBe(2);
    expect(bad.stderr.trim()).toBe(
      "npm run bench -- swap: --tokens takes lengths in [1, 131072], not 0",
    );
  });

  it("prints every place's save and restore for every length, with the peers and their ratios", async () => {
    const run = await bench(["--quick"]);
    expect(run.status, run.stderr).toBe(0);
    const out = JSON.parse(run.stdout) as {
      bench: string;
      results: {
        positions: number;
        kvBytes: number;
        ours: Record<string, Place>;
        peers: { recompute: { prefillMs: number }; rawFile: { writeReadMs: number } };
        ratios: Record<string, number>;
      }[];
    };
    expect(out.bench).toBe("swap");
    expect(out.results.map((r) => r.positions)).toEqual([64, 256]);
    const round = (x: number) => Number(x.toPrecision(3));
    for (const r of out.results) {
      expect(Object.keys(r.ours).sort()).toEqual(["directory", "hostMemory", "s3rver"]);
      expect(r.ours.hostMemory.storedBytes).toBeNull(); // nothing went to a store
      for (const place of ["directory", "s3rver"]) {
        // Sealed snapshot objects: the payload plus headers and tags, not a copy of something else.
        expect(r.ours[place].storedBytes).toBeGreaterThan(r.kvBytes);
        expect(r.ours[place].storedBytes).toBeLessThan(r.kvBytes + 4096);
      }
      for (const p of Object.values(r.ours)) {
        expect(p.recomputeOverSwap).toBeCloseTo(
          round(r.peers.recompute.prefillMs / (p.saveMs + p.restoreMs)),
          1,
        );
      }
      expect(r.ratios.recomputeOverS3Swap).toBe(r.ours.s3rver.recomputeOverSwap);
    }
  });
});
