// The real workerd binary (Cloudflare Workers' runtime) for tests: a generated Cap'n Proto config in
// a fresh temp directory, listening on 127.0.0.1 with an OS-chosen port. workerd reports the port
// on its control descriptor (`--control-fd`) once the socket is listening, so startup neither
// guesses a free port nor polls; a worker that fails to load fails `startWorkerd` with workerd's
// own stderr.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";

export const WORKERD_BIN = new URL(
  "../../node_modules/@cloudflare/workerd-linux-64/bin/workerd",
  import.meta.url,
).pathname;

export type WorkerModuleType = "esModule" | "commonJsModule" | "text" | "data" | "wasm" | "json";

export interface WorkerModule {
  /** Import name, e.g. "worker.js" or "vocab.bin". */
  name: string;
  type: WorkerModuleType;
  content: string | Uint8Array;
}

/** A binding on `env`: text (string), bytes (ArrayBuffer on env), or any JSON value. */
export type WorkerBinding = string | Uint8Array | { json: unknown };

export interface WorkerdOptions {
  /** One ES module (e.g. an esbuild bundle) as the whole worker. Give this or `modules`. */
  script?: string;
  /** Modules; the first is the main module. */
  modules?: WorkerModule[];
  bindings?: Record<string, WorkerBinding>;
  /** Default "2025-01-01". */
  compatibilityDate?: string;
  compatibilityFlags?: string[];
  /** Let the worker's fetch() reach loopback and private addresses (a server the test started). */
  allowLocalNetwork?: boolean;
  /** Milliseconds to wait for the socket. Default 30 s. */
  startTimeoutMs?: number;
}

export interface WorkerdServer {
  /** http://127.0.0.1:<port> */
  url: string;
  /** Everything workerd wrote to stderr so far (worker console output, errors). */
  logs(): string;
  stop(): Promise<void>;
}

const capnpString = (s: string) => JSON.stringify(s); // capnp text literals use the same escapes

export async function startWorkerd(opts: WorkerdOptions): Promise<WorkerdServer> {
  const modules =
    opts.modules ??
    (opts.script !== undefined
      ? [{ name: "worker.js", type: "esModule" as const, content: opts.script }]
      : []);
  if (modules.length === 0) throw new Error("startWorkerd: give `script` or `modules`");
  const dir = await mkdtemp(join(tmpdir(), "ultralong-workerd-"));
  let files = 0;
  // Every payload goes through `embed` from its own file, so no content needs capnp escaping.
  const embed = async (content: string | Uint8Array) => {
    const file = `f${files++}`;
    await writeFile(join(dir, file), content);
    return `embed ${capnpString(file)}`;
  };
  const moduleLines: string[] = [];
  for (const m of modules)
    moduleLines.push(`(name = ${capnpString(m.name)}, ${m.type} = ${await embed(m.content)})`);
  const bindingLines: string[] = [];
  for (const [name, value] of Object.entries(opts.bindings ?? {})) {
    const kind = typeof value === "string" ? "text" : value instanceof Uint8Array ? "data" : "json";
    const content =
      typeof value === "string" || value instanceof Uint8Array ? value : JSON.stringify(value.json);
    bindingLines.push(`(name = ${capnpString(name)}, ${kind} = ${await embed(content)})`);
  }
  const flags = (opts.compatibilityFlags ?? []).map(capnpString).join(", ");
  const config = `using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [(name = "main", worker = .worker)${opts.allowLocalNetwork ? ', (name = "internet", network = (allow = ["public", "private", "local"]))' : ""}],
  sockets = [(name = "http", address = "127.0.0.1:0", http = (), service = "main")],
);
const worker :Workerd.Worker = (
  modules = [${moduleLines.join(", ")}],
  bindings = [${bindingLines.join(", ")}],
  compatibilityDate = ${capnpString(opts.compatibilityDate ?? "2025-01-01")},
  compatibilityFlags = [${flags}],
);
`;
  await writeFile(join(dir, "config.capnp"), config);

  const child = spawn(WORKERD_BIN, ["serve", join(dir, "config.capnp"), "--control-fd=3"], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stdout?.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<number | null>((resolve) =>
    child.once("exit", (code) => resolve(code)),
  );
  const cleanup = async () => {
    await stopChild(child, exited);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const port = await waitForPort(
      child.stdio[3] as Readable,
      exited,
      opts.startTimeoutMs ?? 30_000,
      () => stderr,
    );
    return {
      url: `http://127.0.0.1:${port}`,
      logs: () => stderr,
      stop: cleanup,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** Reads workerd's control messages (JSON lines) until the "http" socket reports its port. */
function waitForPort(
  control: Readable,
  exited: Promise<number | null>,
  timeoutMs: number,
  logs: () => string,
): Promise<number> {
  return new Promise((resolve, reject) => {
    let buffered = "";
    const timer = setTimeout(
      () => reject(new Error(`workerd did not listen within ${timeoutMs} ms:\n${logs()}`)),
      timeoutMs,
    );
    control.on("data", (d: Buffer) => {
      buffered += d.toString();
      let nl = buffered.indexOf("\n");
      while (nl >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        nl = buffered.indexOf("\n");
        try {
          const msg = JSON.parse(line) as { event?: string; socket?: string; port?: number };
          if (msg.event === "listen" && msg.socket === "http" && typeof msg.port === "number") {
            clearTimeout(timer);
            resolve(msg.port);
          }
        } catch {
          // not a control message we know; keep reading
        }
      }
    });
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`workerd exited (${code}) before listening:\n${logs()}`));
    });
  });
}

/** SIGTERM, then SIGKILL if it has not exited after 5 s. */
async function stopChild(child: ChildProcess, exited: Promise<unknown>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(timer);
}

/**
 * Bundles a worker for workerd the way core code must run there: one ESM file for a neutral
 * platform. Throws if the bundle imports a `node:` module (core is Web APIs only).
 * `entry` is a file path, or `{ contents, resolveDir }` for a worker written inline.
 */
export async function bundleWorker(
  entry: string | { contents: string; resolveDir: string },
): Promise<string> {
  const { build } = await import("esbuild");
  const bundle = await build({
    ...(typeof entry === "string"
      ? { entryPoints: [entry] }
      : { stdin: { ...entry, sourcefile: "worker.ts", loader: "ts" as const } }),
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    write: false,
    logLevel: "silent",
  });
  const script = bundle.outputFiles[0].text;
  if (/from\s*"node:/.test(script)) throw new Error("worker bundle imports a node: module");
  return script;
}
