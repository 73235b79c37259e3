// One validator for chat messages: each role and message shape is accepted or refused over HTTP
// (POST /v1/tokenize on a real socket, which renders the chat as /v1/chat/completions does) exactly
// as core's renderer accepts or refuses it: the same ids, or the same message and param.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { renderChat } from "../core/chat/index.ts";
import { ChatMessageError } from "../core/chat/messages.ts";
import { sha256Hex } from "../core/hash/sha256.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import type { Tokenizer } from "../core/tokenizer/index.ts";
import { type LocalServer, startLocal } from "../functions/entries/local.ts";
import { loadDirTokenizer } from "../functions/node/tokenizer-cache.ts";
import { testModelDir } from "./support/models.ts";

const KEY = "key-chat-roles-0123456789";
let s: LocalServer;
let tok: Tokenizer;

beforeAll(async () => {
  const dir = await testModelDir();
  tok = await loadDirTokenizer(dir, (await loadModelDir(dir)).files);
  s = await startLocal({
    modelDir: dir,
    modelId: "tiny",
    runtime: "reference",
    store: null,
    maxPositions: 4096,
    keys: {
      tenants: { a: { maxPromptTokens: 4000, rpm: 0 } },
      keys: [{ sha256: await sha256Hex(KEY), tenant: "a" }],
    },
    log: () => {},
  });
});
afterAll(async () => {
  await s?.close();
});

const call = {
  id: "c1",
  type: "function",
  function: { name: "get_weather", arguments: '{"city": "Paris"}' },
};

// [what, messages, accepted]
const cases: [string, unknown[], boolean][] = [
  ["system", [{ role: "system", content: "Be brief." }], true],
  ["user", [{ role: "user", content: "Hi" }], true],
  [
    "user with text parts",
    [
      {
        role: "user",
        content: [
          { type: "text", text: "a" },
          { type: "text", text: "b" },
        ],
      },
    ],
    true,
  ],
  ["user with a name", [{ role: "user", content: "Hi", name: "ann" }], true],
  [
    "assistant",
    [
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello" },
    ],
    true,
  ],
  [
    "assistant with null content",
    [
      { role: "user", content: "Hi" },
      { role: "assistant", content: null },
    ],
    true,
  ],
  [
    "assistant tool call and the tool's answer",
    [
      { role: "user", content: "Weather?" },
      { role: "assistant", content: null, tool_calls: [call] },
      { role: "tool", tool_call_id: "c1", content: '{"temp_c": 21}' },
    ],
    true,
  ],
  ["unknown fields ignored", [{ role: "user", content: "Hi", audio: null }], true],
  ["developer", [{ role: "developer", content: "x" }], false],
  ["ipython", [{ role: "ipython", content: "x" }], false],
  ["function", [{ role: "function", name: "f", content: "x" }], false],
  ["no role", [{ content: "x" }], false],
  ["tool without tool_call_id", [{ role: "tool", content: "x" }], false],
  ["tool_call_id on a user message", [{ role: "user", content: "x", tool_call_id: "c1" }], false],
  ["tool calls on a user message", [{ role: "user", content: "x", tool_calls: [call] }], false],
  [
    "tool call arguments not JSON",
    [{ role: "assistant", tool_calls: [{ function: { name: "f", arguments: "{" } }] }],
    false,
  ],
  ["user without content", [{ role: "user" }], false],
  ["user with null content", [{ role: "user", content: null }], false],
  ["empty parts", [{ role: "user", content: [] }], false],
  [
    "image part",
    [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }],
    false,
  ],
  ["a refusal", [{ role: "assistant", content: "x", refusal: "no" }], false],
];

describe("a message is accepted or refused over HTTP as by the renderer", () => {
  for (const [what, messages, accepted] of cases) {
    it(`${what}: ${accepted ? "accepted" : "refused"}`, async () => {
      let want: { ids: number[] } | { message: string; param: string };
      try {
        const ids = renderChat(tok, tok.chatTemplate!, messages, { addGenerationPrompt: true });
        want = { ids: Array.from(ids) };
      } catch (err) {
        if (!(err instanceof ChatMessageError)) throw err;
        want = { message: err.message, param: err.param };
      }
      expect("ids" in want).toBe(accepted);
      const res = await fetch(`${s.url}/v1/tokenize`, {
        method: "POST",
        headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "tiny", messages }),
      });
      const body = (await res.json()) as {
        tokens?: number[];
        error?: { message: string; param: string; type: string };
      };
      if ("ids" in want) {
        expect(res.status).toBe(200);
        expect(body.tokens).toEqual(want.ids);
      } else {
        expect(res.status).toBe(400);
        expect(body.error?.type).toBe("invalid_request_error");
        expect({ message: body.error?.message, param: body.error?.param }).toEqual(want);
      }
    });
  }
});
