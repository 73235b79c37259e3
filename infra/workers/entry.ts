// The Cloudflare Workers edge as deployed: functions/entries/edge-workers.ts with the compiled Llama 3.1
// vocabulary embedded as a Data module, so the only bindings left are the settings in
// wrangler.toml and the two secrets. A TOKENIZER binding, when present, wins (tests use it).
import edge from "../../functions/entries/edge-workers.ts";
import vocabulary from "./tokenizer.ultralong.bin";

type Env = Parameters<typeof edge.fetch>[1];

export default {
  fetch(request: Request, env: Omit<Env, "TOKENIZER"> & { TOKENIZER?: ArrayBuffer }) {
    const bytes = vocabulary as ArrayBuffer | Uint8Array;
    const embedded = bytes instanceof Uint8Array ? (bytes.slice().buffer as ArrayBuffer) : bytes;
    return edge.fetch(request, { ...env, TOKENIZER: env.TOKENIZER ?? embedded });
  },
};
