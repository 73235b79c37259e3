#!/usr/bin/env node
// The `ultralong` command. The CLI is TypeScript run through tsx's loader, so a checkout needs no
// emit step and no stale build can run.
import { register } from "tsx/esm/api";

register();
const { main } = await import("./main.ts");
process.exitCode = await main(process.argv.slice(2), {
  stdin: process.stdin,
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
});
