// `ultralong serve` as a user runs it: a fresh cache directory (the demo model is generated), the
// printed URL, demo key and curl line, and that curl line's request answered; SIGTERM stops it.
import type { ChildProcess } from "node:child_process";
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
    const exited = new Promise<number | null>((r) => child!.once("exit", (code) => r(code)));
    child!.kill("SIGTERM");
    expect(await exited).toBe(0);
    child = null;
  });
});
