// The `ultralong` CLI as tests drive it: one subcommand through the real entry in this process
// (main, with captured stdout/stderr and an empty stdin), and `ultralong serve` as a child process
// started until it has printed its banner (the curl line ends it).
import { type ChildProcess, spawn } from "node:child_process";
import { PassThrough, Writable } from "node:stream";
import { main } from "../../functions/cli/main.ts";

class Sink extends Writable {
  text = "";
  override _write(chunk: Buffer, _enc: string, done: () => void) {
    this.text += chunk.toString("utf8");
    done();
  }
}

/** `ultralong <command> ...args` in-process, with an empty environment. */
export async function runCommand(command: string, args: string[]) {
  const stdout = new Sink();
  const stderr = new Sink();
  const stdin = new PassThrough();
  stdin.end();
  const status = await main([command, ...args], { stdin, stdout, stderr, env: {} });
  return { status, stdout: stdout.text, stderr: stderr.text };
}

/**
 * `ultralong serve ...args` as a child process, resolved once stdout holds the whole banner (it
 * ends with the curl line's body); rejects if the process exits first. The caller stops `child`.
 */
export async function startServe(
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ child: ChildProcess; out: string; err: string }> {
  const child = spawn(process.execPath, ["functions/cli/bin.js", "serve", ...args], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stderr!.on("data", (d) => {
    err += d;
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (d) => {
      out += d;
      if (out.includes('"max_tokens":16}')) resolve();
    });
    child.once("exit", (code) => reject(new Error(`serve exited ${code}: ${err}`)));
  });
  return { child, out, err };
}
