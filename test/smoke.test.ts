import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";

describe("ultralong CLI", () => {
  it("prints usage and exits 2 with no command", () => {
    const r = spawnSync(process.execPath, ["functions/cli/bin.js"], { encoding: "utf8" });
    expect(r.status).toBe(2);
    expect(r.stdout).toContain("usage: ultralong");
  });

  it("names an unknown command on one line", () => {
    const r = spawnSync(process.execPath, ["functions/cli/bin.js", "frobnicate"], {
      encoding: "utf8",
    });
    expect(r.status).toBe(2);
    expect(r.stderr.trim()).toBe("ultralong: unknown command 'frobnicate' (try: ultralong --help)");
  });
});
