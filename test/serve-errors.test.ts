// `ultralong serve` mistakes through the real CLI process: each ends in one line on stderr naming
// the problem and a non-zero exit, with nothing left running (a process that kept a socket or a
// worker open would never exit, and the test would time out). A port in use stays its holder's.
// Also: a negative number after an option is its value, so the option's validator judges it.
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { connect, createServer, type Server } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startLocal } from "../functions/entries/local.ts";
import { runUltralong, scratchDir, TINY, testModelDir } from "./support/models.ts";
import { haveEmcc, tool } from "./support/tools.ts";

const cache = scratchDir("cache");
const env = { ...process.env, XDG_CACHE_HOME: cache };
let modelDir: string;
let holder: Server;
let heldPort: number;

beforeAll(async () => {
  modelDir = await testModelDir();
  // A holder that greets each connection, so the test can tell who owns the port.
  holder = createServer((sock) => sock.end("holder\n")).listen(0, "127.0.0.1");
  await new Promise((r) => holder.once("listening", r));
  heldPort = (holder.address() as { port: number }).port;
});
afterAll(() => {
  holder?.close();
});

function greeting(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, "127.0.0.1");
    let got = "";
    sock.on("data", (d) => {
      got += d;
    });
    sock.on("close", () => resolve(got));
    sock.on("error", reject);
  });
}

/** One line on stderr that matches, nothing on stdout, exit status 1 or 2. */
function expectOneLine(r: { status: number | null; stdout: string; stderr: string }, re: RegExp) {
  expect(r.stdout).toBe("");
  const lines = r.stderr.trimEnd().split("\n");
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^ultralong serve: /);
  expect(lines[0]).toMatch(re);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  expect([1, 2]).toContain(r.status);
}

describe("ultralong serve: one line and a non-zero exit for each start-up mistake", () => {
  const keyFile = (name: string, text: string) => {
    const file = join(cache, name);
    writeFileSync(file, text);
    return file;
  };
  const cases: Array<[string, () => string[], RegExp]> = [
    ["a port out of range", () => ["--port", "99999"], /--port must be 0\.\.65535.*99999/],
    ["a negative port", () => ["--port", "-1"], /--port must be a non-negative integer, got '-1'/],
    [
      "a port in use",
      () => ["--port", String(heldPort)],
      /cannot listen on 127\.0\.0\.1:\d+: the port is in use/,
    ],
    [
      "an unreadable key file",
      () => ["--api-keys", join(cache, "absent.json")],
      /cannot read --api-keys .*absent\.json/,
    ],
    ["a key file that is a directory", () => ["--api-keys", cache], /cannot read --api-keys/],
    [
      "a key file that is not JSON",
      () => ["--api-keys", keyFile("bad.json", "{bad")],
      /bad\.json is not JSON/,
    ],
    [
      "a key file with a malformed hash",
      () => [
        "--api-keys",
        keyFile("hash.json", '{"tenants":{"a":{}},"keys":[{"sha256":"zz","tenant":"a"}]}'),
      ],
      /hash\.json: keys\[0\]\.sha256 is not 64 hex digits/,
    ],
    [
      "a key file naming an unknown tenant",
      () => [
        "--api-keys",
        keyFile(
          "tenant.json",
          `{"tenants":{},"keys":[{"sha256":"${"ab".repeat(32)}","tenant":"x"}]}`,
        ),
      ],
      /unknown tenant 'x'/,
    ],
    [
      "a key file with a limit that is not a number",
      () => ["--api-keys", keyFile("rpm.json", '{"tenants":{"a":{"rpm":"fast"}},"keys":[]}')],
      /tenants\.a\.rpm must be a non-negative integer, got "fast"/,
    ],
    [
      "a key file that is null",
      () => ["--api-keys", keyFile("null.json", "null")],
      /needs 'tenants' and 'keys'/,
    ],
    [
      "an API key with a space",
      () => ["--api-key", "my key 12345"],
      /--api-key must be at least 8 visible ASCII characters, with no spaces/,
    ],
    ["a short API key", () => ["--api-key", "short"], /--api-key must be at least 8/],
    [
      "an API key beside a key file",
      () => ["--api-key", "my-own-key-1234", "--api-keys", keyFile("k.json", "{}")],
      /--api-key sets the demo key; with --api-keys there is none/,
    ],
    ["an unknown runtime", () => ["--runtime", "nope"], /unknown runtime 'nope'/],
    // 192.0.2.1 is TEST-NET-1 (RFC 5737): never a machine's own address.
    [
      "a host that is not this machine's",
      () => ["--host", "192.0.2.1", "--port", "0"],
      /cannot listen on 192\.0\.2\.1:0: no such address/,
    ],
    ["zero KV positions", () => ["--max-positions", "0"], /--max-positions must be at least 1/],
    [
      "a zero prefill cap",
      () => ["--max-prefill-tokens", "0"],
      /--max-prefill-tokens must be at least 1/,
    ],
    ["a bad KV dtype", () => ["--kv-dtype", "f7"], /--kv-dtype must be/],
    ["a bad weight format", () => ["--weights", "int4"], /--weights must be f32, bf16 or int8/],
    [
      "device KV positions on a runtime without tiers",
      () => ["--runtime", "reference", "--device-kv-positions", "64"],
      /--device-kv-positions needs a runtime with tiered KV \(native-wasm, cuda\), not 'reference'/,
    ],
    [
      "negative device KV positions",
      () => ["--device-kv-positions", "-64"],
      /--device-kv-positions must be a non-negative integer/,
    ],
    ["a bad role", () => ["--role", "edge"], /--role must be both or model/],
    ["an unknown option", () => ["--prot", "8080"], /Unknown option '--prot'/],
    [
      "a missing model directory",
      () => ["--model", join(cache, "none")],
      /no such model directory/,
    ],
  ];
  // native-wasm exists only where emscripten built it; without it `--runtime` refuses first.
  if (tool("emcc", haveEmcc(), "serve --runtime native-wasm --weights int8")) {
    cases.push([
      "a weight format the runtime does not hold",
      () => ["--runtime", "native-wasm", "--weights", "int8"],
      /runtime 'native-wasm' holds weights as f32, not int8/,
    ]);
    cases.push([
      "device KV positions that are not whole KV blocks",
      () => ["--runtime", "native-wasm", "--device-kv-positions", "65"],
      /deviceKvPositions must be a whole number of 64-position KV blocks/,
    ]);
  }
  for (const [name, args, re] of cases) {
    it(name, async () => {
      const r = await runUltralong(["serve", "--model", modelDir, "--no-store", ...args()], env);
      expectOneLine(r, re);
    });
  }

  it("the port in use is still its holder's, and only its holder's", async () => {
    await runUltralong(
      ["serve", "--model", modelDir, "--no-store", "--port", String(heldPort)],
      env,
    );
    expect(await greeting(heldPort)).toBe("holder\n");
  });

  it("a start refused after the runtime's workers and the model function are up closes them all", async () => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "test/start-refused.child.ts", modelDir, String(heldPort)],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    const status = await new Promise<number | null>((r) => child.once("exit", r));
    expect(out).toMatch(
      new RegExp(`^refused: cannot listen on 127\\.0\\.0\\.1:${heldPort}: the port is in use`),
    );
    expect(status).toBe(0);
    expect(await greeting(heldPort)).toBe("holder\n");
  });
});

describe("serve --weights", () => {
  it("int8 weights: the runtime holds them, /readyz says so, and the server answers", async () => {
    // int8 needs head_dim, hidden and FFN in multiples of 32 (wasm/src/plan.ts checkShapes).
    const dir = await testModelDir({ ...TINY, hidden: 128, heads: 4, kvHeads: 2, ffn: 256 });
    const server = await startLocal({
      modelDir: dir,
      runtime: "wasm",
      threads: 1,
      weightFormat: "int8",
      store: null,
      log: () => {},
    });
    try {
      expect(server.engine.info()).toMatchObject({ runtime: "wasm", weights: "int8" });
      const headers = { authorization: `Bearer ${server.metricsKey}` };
      const ready = await (await fetch(`${server.modelUrl}/readyz`, { headers })).json();
      expect(ready).toMatchObject({ weights: "int8" });
    } finally {
      await server.close();
    }
  });
});

describe("startLocal refusals", () => {
  it("a runtime refused while the tokenizer loads is the start's error, not an unhandled rejection", async () => {
    await expect(
      startLocal({ modelDir, runtime: "wasm", maxPositions: 0, store: null }),
    ).rejects.toThrow(/maxPositions must be a positive integer/);
  });
});

describe("negative numbers are option values", () => {
  it("generate --temperature -1 reaches the validator, which refuses it by its range", async () => {
    const r = await runUltralong(
      ["generate", "--model", modelDir, "--prompt", "hi", "--temperature", "-1"],
      env,
    );
    expect(r.stderr).not.toMatch(/ambiguous/);
    expect(r.stderr.trim()).toBe("ultralong generate: temperature must be >= 0");
    expect(r.status).toBe(1);
  });

  it("--presence-penalty -0.5 is accepted as a value", async () => {
    const r = await runUltralong(
      [
        "generate",
        "--model",
        modelDir,
        "--prompt",
        "hi",
        "--presence-penalty",
        "-0.5",
        "--max-tokens",
        "1",
        "--temperature",
        "0",
      ],
      env,
    );
    expect(r.stderr).not.toMatch(/presence|ambiguous/);
    expect(r.status).toBe(0);
  });
});
