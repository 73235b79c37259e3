// The shape of one `ultralong` subcommand. Each lives in functions/cli/commands/<name>.ts and is
// listed, with its one-line summary, in functions/cli/commands.ts; main.ts loads only the one that
// runs.

import { type ParseArgsConfig, parseArgs } from "node:util";
import { InvalidInputError } from "../../core/errors.ts";

export interface Command {
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

/**
 * A command's argv parsed the way every subcommand wants it: strict (an unknown or malformed option
 * is a usage error that main.ts prints as one line, exit 2), positionals allowed unless
 * `allowPositionals` is false (then one is a usage error too).
 */
export function parseCommandArgs<const O extends NonNullable<ParseArgsConfig["options"]>>(
  argv: string[],
  options: O,
  { allowPositionals = true }: { allowPositionals?: boolean } = {},
) {
  return parseArgs({
    args: negativeValues(argv, options),
    options,
    strict: true,
    allowPositionals,
  });
}

const NEGATIVE_NUMBER = /^-(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/**
 * node:util's parseArgs takes `--temperature -1` for an option followed by another option and
 * refuses it as "ambiguous"; a string option followed by a negative number gets it as its value
 * (`--temperature=-1`), so the option's own validator decides whether -1 is in range.
 */
function negativeValues(
  argv: string[],
  options: NonNullable<ParseArgsConfig["options"]>,
): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      out.push(...argv.slice(i));
      break;
    }
    const name = arg.startsWith("--")
      ? arg.slice(2)
      : /^-[^-]$/.test(arg)
        ? Object.keys(options).find((k) => options[k].short === arg[1])
        : undefined;
    const next = argv[i + 1];
    if (
      name &&
      options[name]?.type === "string" &&
      next !== undefined &&
      NEGATIVE_NUMBER.test(next)
    ) {
      out.push(`--${name}=${next}`);
      i++;
    } else out.push(arg);
  }
  return out;
}

/** The one positional argument a command takes (`what` names it in the error). */
export function onePositional(positionals: string[], what: string): string {
  if (positionals.length !== 1) {
    throw new InvalidInputError(`expected one ${what}, got ${positionals.length} (see --help)`);
  }
  return positionals[0];
}

/** An optional non-negative integer option (`--name N`): undefined when absent, else the number. */
export function intOption(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
    throw new InvalidInputError(`--${name} must be a non-negative integer, got '${value}'`);
  }
  return Number(value);
}
