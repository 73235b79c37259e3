// Uploaded files in the real workerd binary (the Workers bundle, no worker threads there: the file
// is tokenized on the isolate's thread in slices). A file part gives the same ids as on the Node
// edge (worker thread) and as the text in place.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerdServer } from "./harness/workerd.ts";
import { type DeployedEdgeFixture, startWorkersEdge } from "./support/deployed-edge.ts";

let edge: DeployedEdgeFixture;
let worker: WorkerdServer;
let close: (() => Promise<void>) | undefined;
const KEY = "workerd-files-key-0123";

beforeAll(async () => {
  ({ edge, worker, close } = await startWorkersEdge(KEY));
});
afterAll(() => close?.());

const auth = { authorization: `Bearer ${KEY}` };

async function upload(base: string, text: string): Promise<string> {
  const form = new FormData();
  form.append("purpose", "user_data");
  form.append("file", new Blob([text], { type: "text/plain" }), "doc.txt");
  const r = await fetch(`${base}/v1/files`, { method: "POST", headers: auth, body: form });
  expect(r.status).toBe(200);
  return ((await r.json()) as { id: string }).id;
}

async function tokenize(base: string, content: unknown): Promise<number[]> {
  const r = await fetch(`${base}/v1/tokenize`, {
    method: "POST",
    headers: { ...auth, "content-type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content }] }),
  });
  expect(r.status).toBe(200);
  return ((await r.json()) as { tokens: number[] }).tokens;
}

describe("files in workerd", () => {
  it("a file part equals the Node edge's and the text in place", async () => {
    const text = `  \n${"Workers have no threads; café 😀 12345 it's fine.\n".repeat(4000)}end  `;
    const inPlace = await tokenize(worker.url, `Doc:${text}!`);
    for (const base of [worker.url, edge.local.url]) {
      const id = await upload(base, text);
      const parts = [
        { type: "text", text: "Doc:" },
        { type: "file", file: { file_id: id } },
        { type: "text", text: "!" },
      ];
      expect(await tokenize(base, parts)).toEqual(inPlace);
    }
  });
});
