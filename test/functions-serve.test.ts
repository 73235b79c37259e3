// `ultralong serve` as a user runs it: a fresh cache directory (the demo model is generated), the
// printed URL, demo key and curl line, and that curl line's request answered; SIGTERM stops it. The
// demo key is made once (mode 0600, in the cache directory) and is the same at the next start;
// --api-key sets it.
import type { ChildProcess } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { startServe } from "./support/cli.ts";
import { scratchDir } from "./support/models.ts";

let child: ChildProcess | null = null;
afterAll(() => {
  child?.kill("SIGKILL");
});

/** Splits a shell line the way sh would for the quoting the serve command uses (single quotes). */
function shellWords(line: string): string[] {
  const words: string[] = [];
  const re = /'([^']*)'|(\S+)/g;
  for (let m = re.exec(line); m; m = re.exec(line)) words.push(m[1] ?? m[2]);
  return words;
}

describe("ultralong serve", () => {
  it("generates the demo model, prints a working curl line, and stops on SIGTERM", async () => {
    const cache = scratchDir("cache");
    const served = await startServe(["--port", "0", "--no-store", "--runtime", "reference"], {
      ...process.env,
      XDG_CACHE_HOME: cache,
    });
    child = served.child;
    const { out, err } = served;
    expect(err).toMatch(/generated a small demo model/);
    expect(out).toMatch(/demo API key: ul-demo-[0-9a-f]{32}/);
    const curl = out
      .slice(out.indexOf("curl "))
      .replace(/\\\n\s*/g, " ")
      .split("\n")[0];
    const words = shellWords(curl);
    expect(words[0]).toBe("curl");
    const headers: Record<string, string> = {};
    let body = "";
    for (let i = 2; i < words.length; i += 2) {
      if (words[i] === "-H") {
        const [k, ...v] = words[i + 1].split(":");
        headers[k.trim().toLowerCase()] = v.join(":").trim();
      } else if (words[i] === "-d") body = words[i + 1];
    }
    expect(headers.authorization).toMatch(/^Bearer ul-demo-/);
    const res = await fetch(words[1], { method: "POST", headers, body });
    expect(res.status).toBe(200);
    const json = (await res.json()) as { object: string; usage: { completion_tokens: number } };
    expect(json.object).toBe("chat.completion");
    expect(json.usage.completion_tokens).toBeGreaterThan(0);
    const keyFile = join(cache, "ultralong/demo-api-key");
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    expect(headers.authorization).toBe(`Bearer ${readFileSync(keyFile, "utf8")}`);
    const exited = new Promise<number | null>((r) => child!.once("exit", (code) => r(code)));
    child!.kill("SIGTERM");
    expect(await exited).toBe(0);
    child = null;

    // The next start serves the same key; --api-key another, which is not kept.
    const args = ["--port", "0", "--no-store", "--runtime", "reference"];
    const env = { ...process.env, XDG_CACHE_HOME: cache };
    const again = await startServe(args, env);
    child = again.child;
    expect(again.out).toContain(`demo API key: ${readFileSync(keyFile, "utf8")}`);
    child.kill("SIGKILL");
    const own = await startServe([...args, "--api-key", "my-own-key-1234"], env);
    child = own.child;
    expect(own.out).toMatch(/^demo API key: my-own-key-1234$/m);
    const url = own.out.match(/on (http:\/\/127\.0\.0\.1:\d+)/)![1];
    const models = (key: string) =>
      fetch(`${url}/v1/models`, { headers: { Authorization: `Bearer ${key}` } });
    expect((await models("my-own-key-1234")).status).toBe(200);
    expect((await models(readFileSync(keyFile, "utf8"))).status).toBe(401);
    expect(readFileSync(keyFile, "utf8")).toMatch(/^ul-demo-[0-9a-f]{32}$/);
    child.kill("SIGKILL");
    child = null;
  });
});
