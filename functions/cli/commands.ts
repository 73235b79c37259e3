// Every `ultralong` subcommand with its one-line summary, loaded lazily so `ultralong tokenize` does
// not load the runtime and `ultralong --help` loads none of them (the summaries live here for that).
import type { Command } from "./command.ts";

export interface CommandEntry {
  /** One line for `ultralong --help`. */
  summary: string;
  load: () => Promise<{ command: Command }>;
}

export const commands: Record<string, CommandEntry> = {
  "make-model": {
    summary: "write a deterministic random Llama model directory (HF layout)",
    load: () => import("./commands/make-model.ts"),
  },
  inspect: {
    summary:
      "describe a model directory: config, parameters, KV bytes per token, fingerprint; the longest context a GPU holds",
    load: () => import("./commands/inspect.ts"),
  },
  generate: {
    summary: "generate text from a prompt with a model directory (streams to stdout)",
    load: () => import("./commands/generate.ts"),
  },
  snapshots: {
    summary: "list, remove and garbage-collect KV snapshots in a directory or S3 store",
    load: () => import("./commands/snapshots.ts"),
  },
  serve: {
    summary: "run the OpenAI-compatible HTTP API locally (edge + model function)",
    load: () => import("./commands/serve.ts"),
  },
  tokenize: {
    summary: "encode text or a chat with a model's Llama 3 tokenizer (ids as JSON, or a count)",
    load: () => import("./commands/tokenize.ts"),
  },
  plan: {
    summary:
      "plan where a context's KV lives (GPU, host memory, snapshot store) and what its prefill and decode cost",
    load: () => import("./commands/plan.ts"),
  },
  convert: {
    summary: "write a model directory as a llama.cpp GGUF file (--to gguf)",
    load: () => import("./commands/convert.ts"),
  },
  eval: {
    summary:
      "long-context evaluation (niah, ruler) against an OpenAI-compatible URL: JSON lines, heatmap SVG/PNG",
    load: () => import("./commands/eval.ts"),
  },
  detokenize: {
    summary: "decode Llama 3 token ids back to text",
    load: () => import("./commands/detokenize.ts"),
  },
};
