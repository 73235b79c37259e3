import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // One temporary root per run, removed at its end (test/support/global-setup.ts).
    globalSetup: ["test/support/global-setup.ts"],
    // Two cores on the reference machine: run files in forks, one per core.
    pool: "forks",
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
