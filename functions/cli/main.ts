// `ultralong <command> [args]`: dispatch, help, and the one place CLI errors become a single line on
// stderr with a non-zero exit.
import { UltralongError } from "../../core/errors.ts";
import type { CommandIO } from "./command.ts";
import { commands } from "./commands.ts";

export async function main(argv: string[], io: CommandIO): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    const lines = ["usage: ultralong <command> [options]", "", "commands:"];
    for (const [key, { summary }] of Object.entries(commands)) {
      lines.push(`  ${key.padEnd(14)} ${summary}`);
    }
    lines.push("", "`ultralong <command> --help` shows a command's options.");
    io.stdout.write(`${lines.join("\n")}\n`);
    return name === undefined ? 2 : 0;
  }
  const entry = commands[name];
  if (!entry) {
    io.stderr.write(`ultralong: unknown command '${name}' (try: ultralong --help)\n`);
    return 2;
  }
  const { command } = await entry.load();
  if (rest.includes("--help") || rest.includes("-h")) {
    io.stdout.write(`${command.usage.trimEnd()}\n`);
    return 0;
  }
  try {
    return await command.run(rest, io);
  } catch (err) {
    const usageError = String((err as { code?: unknown }).code ?? "").startsWith("ERR_PARSE_ARGS");
    if (err instanceof UltralongError || usageError) {
      io.stderr.write(`ultralong ${name}: ${(err as Error).message.split("\n")[0]}\n`);
      return err instanceof UltralongError ? 1 : 2;
    }
    throw err;
  }
}
