// The reference runtime and the sequence driver inside the real workerd binary (Cloudflare
// Workers' runtime): core bundled with esbuild for a neutral platform (no node: imports), the model
// files as data bindings, a generation requested over HTTP. Tokens and logprobs equal the Node run.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eosTokenIds, SequenceDriver } from "../core/engine/driver.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { bundleWorker, startWorkerd, type WorkerdServer } from "./harness/workerd.ts";
import { SMALL_VOCAB, testModelDir } from "./support/models.ts";

/** The worker: ModelFiles over its bindings, then loadModel -> reference runtime -> driver. */
const WORKER = `
import { loadModel } from "../core/model/load.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import { SequenceDriver, eosTokenIds } from "../core/engine/driver.ts";

function filesOf(env) {
  const bytes = (f) => {
    const b = env[f.replaceAll(".", "_")];
    if (!b) throw new Error("no such file " + f);
    return new Uint8Array(b);
  };
  return {
    name: "bindings",
    list: async () => ["config.json", "generation_config.json", "model.safetensors"],
    readBytes: async (f) => bytes(f),
    readText: async (f) => new TextDecoder().decode(bytes(f)),
    stat: async (f) => ({ size: bytes(f).byteLength, mtimeMs: 0 }),
    open: async (f) => {
      const all = bytes(f);
      return {
        name: f,
        size: async () => all.byteLength,
        read: async (offset, length) => all.slice(offset, offset + length),
      };
    },
  };
}

export default {
  async fetch(request, env) {
    const body = await request.json();
    const model = await loadModel(filesOf(env));
    const runtime = await createReferenceRuntime({ model, maxPositions: 64 });
    const driver = new SequenceDriver(runtime, { eosTokenIds: eosTokenIds(model), chunkTokens: 5 });
    const events = [];
    for await (const e of driver.generate(body)) events.push(e);
    return Response.json({ runtime: runtime.info.name, events });
  },
};
`;

interface Ev {
  type: string;
  id?: number;
  logprob?: number;
  doneTokens?: number;
  finishReason?: string;
}

let server: WorkerdServer;
let dir: string;

beforeAll(async () => {
  dir = await testModelDir(SMALL_VOCAB);
  const script = await bundleWorker({
    contents: WORKER,
    resolveDir: new URL(".", import.meta.url).pathname,
  });
  const file = (f: string) => new Uint8Array(readFileSync(join(dir, f)));
  server = await startWorkerd({
    script,
    bindings: {
      config_json: file("config.json"),
      generation_config_json: file("generation_config.json"),
      model_safetensors: file("model.safetensors"),
    },
  });
});

afterAll(async () => {
  await server?.stop();
});

describe("reference runtime and driver in workerd", () => {
  it("generates the same tokens and logprobs as in Node", async () => {
    const request = {
      prompt: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
      maxTokens: 6,
      sampling: { temperature: 0.9, topP: 0.95, seed: 3, logprobs: 2 },
    };
    const res = await fetch(server.url, { method: "POST", body: JSON.stringify(request) });
    expect(res.status, server.logs()).toBe(200);
    const got = (await res.json()) as { runtime: string; events: Ev[] };
    expect(got.runtime).toBe("reference");

    const model = await loadModelDir(dir);
    const runtime = await createReferenceRuntime({ model, maxPositions: 64 });
    const driver = new SequenceDriver(runtime, {
      eosTokenIds: eosTokenIds(model),
      chunkTokens: 5,
    });
    const want: Ev[] = [];
    for await (const e of driver.generate(request)) want.push(e);

    const tokens = (evs: Ev[]) => evs.filter((e) => e.type === "token");
    expect(tokens(got.events).map((e) => e.id)).toEqual(tokens(want).map((e) => e.id));
    // Equal up to the last bits: workerd's V8 may round Math.exp / Math.log differently.
    tokens(got.events).forEach((e, i) => {
      expect(Math.abs(e.logprob! - tokens(want)[i].logprob!)).toBeLessThan(1e-9);
    });
    const progress = (evs: Ev[]) =>
      evs.filter((e) => e.type === "progress").map((e) => e.doneTokens);
    expect(progress(got.events)).toEqual([0, 5, 10, 12]);
    expect(progress(got.events)).toEqual(progress(want));
    expect(got.events.at(-1)).toMatchObject({ type: "done", finishReason: "length" });
  });
});
