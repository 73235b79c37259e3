// `ultralong tokenize --model DIR [--file F] [--chat] [--count]`: text (or a chat) to Llama 3 token
// ids, printed as a JSON array or as a count. Plain text is streamed through the encoder, so a
// multi-gigabyte file never sits in memory whole.

import { createReadStream } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { renderChat } from "../../../core/chat/index.ts";
import { InvalidInputError, NotFoundError } from "../../../core/errors.ts";
import { DirectoryModelFiles } from "../../../core/node/model-files.ts";
import { Tokenizer } from "../../../core/tokenizer/index.ts";
import { COMPILED_TOKENIZER_FILE, loadTokenizer } from "../../../core/tokenizer/load.ts";
import { type Command, type CommandIO, parseCommandArgs } from "../command.ts";

const usage = `usage: ultralong tokenize --model DIR [--file F] [--chat] [--count] [options]

Encodes text from stdin (or --file) with the model directory's tokenizer and prints the ids as a
JSON array, or with --count just their number. Special-token strings such as "<|eot_id|>" in the
text are ordinary text unless --allow-special is given.

options:
  --model DIR            model directory with tokenizer.json (and tokenizer_config.json)
  --file F               read F instead of stdin
  --chat                 input is a JSON messages array (OpenAI shape), or {"messages": [...],
                         "tools": [...]}; rendered with the model's chat_template
  --generation-prompt    with --chat: end with the assistant header (what a server sends)
  --count                print the number of ids only
  --allow-special        match special-token strings in plain text (trusted input only)
  --no-cache             do not write ${COMPILED_TOKENIZER_FILE} beside tokenizer.json

The first run on a directory compiles the vocabulary into ${COMPILED_TOKENIZER_FILE} (checked
against tokenizer.json by hash on every load), so later runs start in milliseconds.
`;

/** Loads the tokenizer and, unless told not to, leaves a compiled copy beside it (best effort). */
export async function loadCliTokenizer(dir: string, cache: boolean): Promise<Tokenizer> {
  const files = new DirectoryModelFiles(dir);
  const names = await files.list();
  const tok = await loadTokenizer(files);
  if (cache && names.includes("tokenizer.json")) {
    let current = false;
    if (names.includes(COMPILED_TOKENIZER_FILE)) {
      try {
        const existing = Tokenizer.fromCompiled(await files.readBytes(COMPILED_TOKENIZER_FILE));
        current = existing.sourceSha256 === tok.sourceSha256;
      } catch {
        // unreadable: replace it
      }
    }
    if (!current) {
      await writeFile(join(files.name, COMPILED_TOKENIZER_FILE), tok.compile()).catch(
        () => undefined,
      );
    }
  }
  return tok;
}

async function* chunks(file: string | undefined, io: CommandIO): AsyncGenerator<string> {
  const stream = file ? createReadStream(file) : io.stdin;
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true }); // a leading U+FEFF is text too
  try {
    for await (const chunk of stream) {
      yield decoder.decode(
        typeof chunk === "string" ? new TextEncoder().encode(chunk) : (chunk as Uint8Array),
        { stream: true },
      );
    }
  } catch (err) {
    if ((err as { code?: string }).code === "ENOENT")
      throw new NotFoundError(`${file}: no such file`);
    throw err;
  }
  yield decoder.decode();
}

export const command: Command = {
  usage,
  async run(argv, io) {
    // Text comes from stdin or --file: a positional argument is a usage error.
    const { values } = parseCommandArgs(
      argv,
      {
        model: { type: "string" },
        file: { type: "string" },
        chat: { type: "boolean" },
        "generation-prompt": { type: "boolean" },
        count: { type: "boolean" },
        "allow-special": { type: "boolean" },
        "no-cache": { type: "boolean" },
      },
      { allowPositionals: false },
    );
    if (!values.model) throw new InvalidInputError("--model DIR is required (see --help)");
    const tok = await loadCliTokenizer(values.model, !values["no-cache"]);

    if (values.chat) {
      let text = "";
      for await (const c of chunks(values.file, io)) text += c;
      let input: unknown;
      try {
        input = JSON.parse(text);
      } catch (err) {
        throw new InvalidInputError(`--chat input is not JSON: ${(err as Error).message}`);
      }
      const obj = Array.isArray(input)
        ? { messages: input }
        : (input as { messages?: unknown; tools?: unknown[] });
      if (!tok.chatTemplate)
        throw new NotFoundError(`${values.model}: tokenizer_config.json has no chat_template`);
      const ids = renderChat(tok, tok.chatTemplate, obj?.messages, {
        addGenerationPrompt: values["generation-prompt"] === true,
        tools: obj?.tools,
      });
      io.stdout.write(values.count ? `${ids.length}\n` : `${JSON.stringify(Array.from(ids))}\n`);
      return 0;
    }

    const encoder = tok.createEncoder({ allowSpecial: values["allow-special"] === true });
    let count = 0;
    let first = true;
    const emit = (ids: Int32Array) => {
      count += ids.length;
      if (values.count || ids.length === 0) return;
      io.stdout.write((first ? "[" : ",") + ids.join(","));
      first = false;
    };
    for await (const c of chunks(values.file, io)) emit(encoder.push(c));
    emit(encoder.end());
    if (values.count) io.stdout.write(`${count}\n`);
    else io.stdout.write(first ? "[]\n" : "]\n");
    return 0;
  },
};
