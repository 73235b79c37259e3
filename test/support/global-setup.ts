// vitest's globalSetup: one temporary root for the whole run, made the TMPDIR of every test
// process and of the processes they start, and removed when the run ends. vitest ends its forks
// without running their exit handlers, so scratch directories that each process meant to remove
// at exit stayed behind (1,101 of them, 76 GB in /tmp, after a day of runs on the development
// machine, until its disk was full and a run failed in 20 files for want of space).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export default function setup(): () => void {
  const root = mkdtempSync(join(tmpdir(), "ultralong-tests-"));
  process.env.TMPDIR = root;
  return () => rmSync(root, { recursive: true, force: true });
}
