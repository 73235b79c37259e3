// Every `ultralong` subcommand, loaded lazily so `ultralong tokenize` does not load the runtime.
import type { Command } from "./command.ts";

export const commands: Record<string, () => Promise<{ command: Command }>> = {};
