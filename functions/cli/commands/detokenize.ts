// `ultralong detokenize --model DIR [IDS...]`: Llama 3 token ids (arguments, or a JSON array on
// stdin) back to text.

import { InvalidInputError } from "../../../core/errors.ts";
import { type Command, parseCommandArgs } from "../command.ts";
import { loadCliTokenizer } from "./tokenize.ts";

const usage = `usage: ultralong detokenize --model DIR [--skip-special] [IDS...]

Decodes token ids to text. Ids are given as arguments (numbers, or one JSON array) or, with none,
as a JSON array on stdin. Bytes that do not form whole UTF-8 characters print as U+FFFD.

options:
  --model DIR        model directory with tokenizer.json
  --skip-special     leave out special tokens (<|begin_of_text|>, <|eot_id|>, ...)
  --no-cache         do not write the compiled vocabulary beside tokenizer.json
`;

function parseIds(text: string): number[] {
  let v: unknown;
  try {
    v = JSON.parse(
      text.trim().startsWith("[")
        ? text
        : `[${text
            .trim()
            .split(/[\s,]+/)
            .join(",")}]`,
    );
  } catch (err) {
    throw new InvalidInputError(`ids must be a JSON array of integers: ${(err as Error).message}`);
  }
  if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x)))
    throw new InvalidInputError("ids must be a JSON array of integers");
  return v as number[];
}

export const command: Command = {
  usage,
  async run(argv, io) {
    const { values, positionals } = parseCommandArgs(argv, {
      model: { type: "string" },
      "skip-special": { type: "boolean" },
      "no-cache": { type: "boolean" },
    });
    if (!values.model) throw new InvalidInputError("--model DIR is required (see --help)");
    let text = positionals.join(" ");
    if (positionals.length === 0) {
      for await (const chunk of io.stdin)
        text += typeof chunk === "string" ? chunk : new TextDecoder().decode(chunk as Uint8Array);
    }
    const ids = parseIds(text);
    const tok = await loadCliTokenizer(values.model, !values["no-cache"]);
    io.stdout.write(tok.decode(ids, { skipSpecialTokens: values["skip-special"] === true }));
    io.stdout.write("\n");
    return 0;
  },
};
