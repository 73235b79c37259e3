// The shape of one `ultralong` subcommand. Each lives in functions/cli/commands/<name>.ts and is
// listed in functions/cli/commands.ts; main.ts loads only the one that runs.

export interface Command {
  /** One line for `ultralong --help`. */
  summary: string;
  /** Full usage text for `ultralong <name> --help`. */
  usage: string;
  /** Runs the command; resolves to the exit status. Throw UltralongError for user-facing failures. */
  run(argv: string[], io: CommandIO): Promise<number>;
}

export interface CommandIO {
  stdin: NodeJS.ReadableStream;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
}
