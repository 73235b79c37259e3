// vLLM's tokenize and detokenize (also at /tokenize, /detokenize, where vLLM serves them): the ids a
// generation would see for the same request, so a client can count and budget before it sends.
import { Hono } from "hono";
import { isTokenId } from "../../../core/tokenizer/token-id.ts";
import { ParamError } from "../../http/http-errors.ts";
import { readJson } from "../body.ts";
import { type EdgeContext, type EdgeDeps, type EdgeEnv, Prompts } from "../context.ts";
import { parseChatRequest, parseCompletionRequest, requireModel } from "../openai-request.ts";

export function tokenizeRoutes(deps: EdgeDeps): Hono<EdgeEnv> {
  const { text, modelId } = deps;
  const prompts = new Prompts(deps);
  const app = new Hono<EdgeEnv>();

  const tokenize = async (c: EdgeContext) => {
    const body = await readJson(c.req.raw, deps.maxBodyBytes);
    if (body.model !== undefined) prompts.checkModel(requireModel(body));
    let ids: Int32Array;
    if (body.messages !== undefined) {
      ids = await prompts.chat(
        c.get("tenant"),
        parseChatRequest({ ...body, model: modelId }).messages,
      );
    } else {
      const req = parseCompletionRequest({ model: modelId, prompt: body.prompt });
      if (req.prompt.kind !== "text") throw new ParamError("prompt", "'prompt' must be a string");
      const addSpecial = body.add_special_tokens ?? true;
      if (typeof addSpecial !== "boolean")
        throw new ParamError(
          "add_special_tokens",
          "'add_special_tokens' must be a boolean",
          "invalid_type",
        );
      ids = addSpecial ? prompts.completion(req) : Int32Array.from(text.encode(req.prompt.text));
    }
    return c.json({ count: ids.length, max_model_len: deps.maxContext, tokens: [...ids] });
  };

  const detokenize = async (c: EdgeContext) => {
    const body = await readJson(c.req.raw, deps.maxBodyBytes);
    if (body.model !== undefined) prompts.checkModel(requireModel(body));
    const tokens = body.tokens;
    if (!Array.isArray(tokens))
      throw new ParamError("tokens", "'tokens' must be an array of token ids", "invalid_type");
    for (const [i, id] of tokens.entries()) {
      if (!isTokenId(id, text.vocabSize)) {
        throw new ParamError(
          "tokens",
          `tokens[${i}] = ${JSON.stringify(id)} is not a token id (0..${text.vocabSize - 1})`,
        );
      }
    }
    return c.json({ prompt: text.decode(tokens as number[]) });
  };

  for (const prefix of ["/v1", ""]) {
    app.post(`${prefix}/tokenize`, tokenize);
    app.post(`${prefix}/detokenize`, detokenize);
  }
  return app;
}
