// Every `ultralong` subcommand, loaded lazily so `ultralong tokenize` does not load the runtime.
import type { Command } from "./command.ts";

export const commands: Record<string, () => Promise<{ command: Command }>> = {
  "make-model": () => import("./commands/make-model.ts"),
  inspect: () => import("./commands/inspect.ts"),
  generate: () => import("./commands/generate.ts"),
  snapshots: () => import("./commands/snapshots.ts"),
  serve: () => import("./commands/serve.ts"),
  tokenize: () => import("./commands/tokenize.ts"),
  detokenize: () => import("./commands/detokenize.ts"),
};
