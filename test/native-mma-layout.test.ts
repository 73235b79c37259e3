// The tensor-core layouts of the FA2 attention kernel (native/src/cuda/mma_layout.h) on the CPU,
// before any GPU runs them: native/programs/mma_layout_check.cpp, built here with g++, compares the
// mma.m16n8k16 A/B/C fragment maps with the PTX ISA's tables (transcribed separately), checks the
// shared-memory swizzle is a bijection and bank-conflict-free for the kernel's ldmatrix, cp.async
// and epilogue patterns, and runs one warp's S = Q K^T and O = P V through ldmatrix and mma
// simulated from the ISA, exactly against plain products. Each deliberately broken map must fail.
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
const haveGxx = tool(
  "g++",
  spawnSync("g++", ["--version"], { stdio: "ignore" }).status === 0,
  "the mma / ldmatrix layout check (mma_layout_check.cpp)",
);

interface Report {
  broken: string;
  ok: boolean;
  checks: { name: string; ok: boolean; detail: string }[];
}

describe.skipIf(!haveGxx)(
  "mma_layout_check (FA2 fragment maps, swizzle, one warp's products)",
  () => {
    const bin = join(mkdtempSync(join(tmpdir(), "ul-mma-layout-")), "mma_layout_check");

    beforeAll(() => {
      const cc = spawnSync(
        "g++",
        [
          "-std=c++17",
          "-O1",
          "-Wall",
          "-Wextra",
          "-Werror",
          "-Inative/src",
          "native/programs/mma_layout_check.cpp",
          "-o",
          bin,
        ],
        { cwd: root, encoding: "utf8" },
      );
      expect(cc.status, cc.stderr).toBe(0);
    }, 120_000);

    function run(args: string[]) {
      const r = spawnSync(bin, args, { encoding: "utf8" });
      return {
        status: r.status,
        stderr: r.stderr,
        report: r.stdout ? (JSON.parse(r.stdout) as Report) : null,
      };
    }

    it("every map matches the PTX ISA, the swizzle is conflict-free, the warp's S and O are exact", () => {
      const { status, report } = run([]);
      expect(report?.checks.filter((c) => !c.ok)).toEqual([]);
      expect(status).toBe(0);
      const names = report?.checks.map((c) => c.name) ?? [];
      for (const part of [
        "A fragment == PTX ISA table",
        "B fragment == PTX ISA table",
        "C/D fragment == PTX ISA table",
        "swizzle is a bijection",
        "ldmatrix K conflict-free",
        "ldmatrix.trans V conflict-free",
        "cp.async tile stores by 256 threads conflict-free",
        "cp.async tile stores by 128 threads conflict-free",
        "epilogue 16-byte reads conflict-free",
        "warp S = Q K^T",
        "warp O = (Q K^T) V",
        "P.V A fragment == the S accumulators",
      ]) {
        expect(
          names.some((n) => n.includes(part)),
          part,
        ).toBe(true);
      }
    });

    // A check that cannot fail proves nothing: each wrong map is caught, by the check that names it.
    it.each([
      ["a", "A fragment == PTX ISA table"],
      ["b", "B fragment == PTX ISA table"],
      ["c", "warp S = Q K^T"],
      ["k", "warp S = Q K^T"],
      ["v", "warp O = (Q K^T) V"],
      ["p", "P.V A fragment == the S accumulators"],
      ["swizzle", "ldmatrix K conflict-free"],
    ])("--break %s fails %s", (which, failing) => {
      const { status, report } = run(["--break", which]);
      expect(status).toBe(1);
      expect(report?.ok).toBe(false);
      const failed = report?.checks.filter((c) => !c.ok).map((c) => c.name) ?? [];
      expect(
        failed.some((n) => n.includes(failing)),
        failed.join("; "),
      ).toBe(true);
    });

    it("refuses an unknown --break", () => {
      const { status, stderr } = run(["--break", "q"]);
      expect(status).toBe(2);
      expect(stderr).toMatch(/--break takes/);
    });
  },
);
