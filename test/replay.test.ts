// Replay across instances and restarts, with real processes: two model functions
// (`ultralong serve --role model`) share a signing secret and a snapshot store (a directory, and
// s3rver), as a deployment's instances do. A request signed once is served by one, refused by the
// other (the store's nonce ledger), and refused by the first after a restart.
import { type ChildProcess, spawn } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type S3Server, startS3 } from "./harness/s3.ts";
import { signedGenerate } from "./support/generate-request.ts";
import { scratchDir, testModelDir } from "./support/models.ts";

const SECRET = "replay-test-secret-0123456789abcdef";
const children = new Set<ChildProcess>();
afterAll(() => {
  for (const c of children) c.kill("SIGKILL");
});

/** Starts a model function; resolves with its URL and a stop function. */
function startModel(store: string, env: Record<string, string>) {
  return testModelDir().then(
    (model) =>
      new Promise<{ url: string; stop: () => Promise<void> }>((resolve, reject) => {
        const child = spawn(
          process.execPath,
          [
            "functions/cli/bin.js",
            "serve",
            "--role",
            "model",
            "--model",
            model,
            "--port",
            "0",
          ].concat(["--store", store, "--runtime", "reference"]),
          {
            env: {
              ...process.env,
              ...env,
              ULTRALONG_SIGNING_SECRET: SECRET,
              ULTRALONG_SALT_SECRET: "s".repeat(64),
              ULTRALONG_SNAPSHOT_KEY: "ab".repeat(32),
            },
            stdio: ["ignore", "pipe", "pipe"],
          },
        );
        children.add(child);
        let out = "";
        let err = "";
        child.stderr!.on("data", (d) => (err += d));
        child.stdout!.on("data", (d) => {
          out += d;
          const m = / on (http:\/\/\S+) /.exec(out);
          if (m)
            resolve({
              url: m[1],
              stop: () =>
                new Promise((done) => {
                  child.once("exit", () => done());
                  child.kill("SIGTERM");
                }),
            });
        });
        child.once("exit", (code) => {
          children.delete(child);
          reject(new Error(`model function exited ${code}: ${err}`));
        });
      }),
  );
}

const message = async (r: Response) =>
  ((await r.json()) as { error: { message: string } }).error.message;

describe("a signed request is served once by every instance sharing the store", () => {
  let s3: S3Server;
  beforeAll(async () => {
    s3 = await startS3();
  });
  afterAll(() => s3?.close());

  for (const kind of ["directory", "s3rver"] as const) {
    it(`${kind}: served by one instance, refused by the other and after a restart`, async () => {
      const store = kind === "directory" ? scratchDir("replay-store") : `s3://${s3.bucket}/replay`;
      const env = kind === "directory" ? {} : s3.env;
      const [a, b] = await Promise.all([startModel(store, env), startModel(store, env)]);
      const send = await signedGenerate(SECRET, Int32Array.from([1, 2]), { requestId: "replay" });
      const first = await send(a.url);
      expect(first.status).toBe(200);
      expect(await first.text()).toMatch(/event: usage/);
      const other = await send(b.url);
      expect(other.status).toBe(401);
      expect(await message(other)).toMatch(/replayed/);
      await a.stop();
      const restarted = await startModel(store, env);
      const again = await send(restarted.url);
      expect(again.status).toBe(401);
      expect(await message(again)).toMatch(/replayed|signed before this server started/);
      await Promise.all([b.stop(), restarted.stop()]);
    }, 120_000);
  }
});
