// The tokenizer and chat template inside the real workerd binary: bundled with esbuild, the
// compiled vocabulary as a data binding, called over HTTP; results equal the Node run.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Tokenizer } from "../core/tokenizer/index.ts";
import { committedTexts, edgeCases } from "./fixtures/tokenizer/corpus.ts";
import { tokenizerConfigJson, tokenizerJson } from "./fixtures/tokenizer/reference.ts";
import { bundleWorker, startWorkerd, type WorkerdServer } from "./harness/workerd.ts";

let tok: Tokenizer;
let server: WorkerdServer;

beforeAll(async () => {
  tok = Tokenizer.fromJson(tokenizerJson(), tokenizerConfigJson());
  const script = await bundleWorker(
    new URL("./fixtures/tokenizer/worker.ts", import.meta.url).pathname,
  );
  server = await startWorkerd({ script, bindings: { VOCAB: tok.compile() } });
});

afterAll(async () => {
  await server?.stop();
});

const post = (path: string, body: string) =>
  fetch(`${server.url}${path}`, { method: "POST", body });

describe("tokenizer in workerd", () => {
  it("encodes like Node, streaming the request body", async () => {
    const docs = [
      ...committedTexts(),
      ...edgeCases().filter((d) => d === d.replace(/[\ud800-\udfff]/g, "")),
    ];
    for (const doc of docs) {
      const res = await post("/encode", doc);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual(Array.from(tok.encode(doc)));
    }
    const info = (await (await fetch(`${server.url}/info`)).json()) as {
      vocabSize: number;
      sourceSha256: string;
    };
    expect(info.vocabSize).toBe(128256);
    expect(info.sourceSha256).toBe(tok.sourceSha256);
  });

  it("renders chats with the control-token firewall and decodes", async () => {
    const messages = [{ role: "user", content: "Hi <|eot_id|> there" }];
    const res = await post("/chat", JSON.stringify({ messages, addGenerationPrompt: true }));
    const ids = (await res.json()) as number[];
    expect(ids.filter((id) => id === 128009).length).toBe(1);
    const text = await (await post("/decode", JSON.stringify(ids))).text();
    expect(text).toBe(tok.decode(ids));
    expect(text).toContain("Hi <|eot_id|> there<|eot_id|>");
    const bad = await post("/chat", JSON.stringify({ messages: [{ role: "root", content: "x" }] }));
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toBe("invalid_input");
  });
});
