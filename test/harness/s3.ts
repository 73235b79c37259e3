// A real S3-compatible server for tests: the `s3rver` npm package on a free loopback port, storing
// into a fresh temp directory, with one bucket created. Path-style addressing; s3rver's fixed
// credentials (S3RVER / S3RVER) are returned for the client. Conditional PUTs (`If-None-Match: *`)
// are added by ./s3-conditional.cjs.
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import S3rver from "s3rver";

const require = createRequire(import.meta.url);
/** test/harness/s3-conditional.cjs: S3's `If-None-Match: *` on PutObject, which s3rver lacks. */
const CONDITIONAL = fileURLToPath(new URL("./s3-conditional.cjs", import.meta.url));
const { addConditionalWrites } = require(CONDITIONAL) as {
  addConditionalWrites<T>(server: T): T;
};

export interface S3Server {
  /** http://127.0.0.1:<port> */
  endpoint: string;
  port: number;
  bucket: string;
  /** Where s3rver keeps objects (for tests that damage a stored object on purpose). */
  directory: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  /** Environment for `openStore("s3://bucket/prefix")` and child processes. */
  env: Record<string, string>;
  close(): Promise<void>;
}

function serverOptions(directory: string, bucket: string) {
  return {
    address: "127.0.0.1",
    port: 0,
    silent: true,
    directory,
    vhostBuckets: false,
    configureBuckets: [{ name: bucket, configs: [] }],
  };
}

function describeServer(
  port: number,
  bucket: string,
  directory: string,
  close: () => Promise<void>,
): S3Server {
  const endpoint = `http://127.0.0.1:${port}`;
  const credentials = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" };
  return {
    endpoint,
    port,
    bucket,
    directory,
    credentials,
    env: {
      ULTRALONG_S3_ENDPOINT: endpoint,
      ULTRALONG_S3_PATH_STYLE: "1",
      AWS_ACCESS_KEY_ID: credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
      AWS_REGION: "us-east-1",
    },
    async close() {
      await close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/**
 * s3rver in this process. `conditionalWrites: false` leaves s3rver as it ships (it ignores
 * `If-None-Match`), like an S3-compatible server that predates conditional writes.
 */
export async function startS3(
  opts: { bucket?: string; conditionalWrites?: boolean } = {},
): Promise<S3Server> {
  const bucket = opts.bucket ?? "snapshots";
  const directory = await mkdtemp(join(tmpdir(), "ultralong-s3rver-"));
  const plain = new S3rver(serverOptions(directory, bucket));
  const server = opts.conditionalWrites === false ? plain : addConditionalWrites(plain);
  const address = (await server.run()) as AddressInfo;
  return describeServer(address.port, bucket, directory, () => server.close());
}

/**
 * s3rver in a child process: for benchmarks, so the server's CPU work does not share the event
 * loop (and the core) with the client being measured, as on a real deployment.
 */
export async function startS3Process(opts: { bucket?: string } = {}): Promise<S3Server> {
  const bucket = opts.bucket ?? "snapshots";
  const directory = await mkdtemp(join(tmpdir(), "ultralong-s3rver-"));
  const code = `const S3rver = require("s3rver");
const { addConditionalWrites } = require(${JSON.stringify(CONDITIONAL)});
addConditionalWrites(new S3rver(${JSON.stringify(serverOptions(directory, bucket))}))
  .run().then((a) => console.log(JSON.stringify(a)));`;
  const child = spawn(process.execPath, ["-e", code], { stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise<number>((resolve, reject) => {
    let buf = "";
    child.stdout!.on("data", (d) => {
      buf += d;
      if (buf.includes("\n")) resolve((JSON.parse(buf.split("\n")[0]) as AddressInfo).port);
    });
    child.once("exit", (c) => reject(new Error(`s3rver child exited with ${c}`)));
  });
  return describeServer(port, bucket, directory, async () => {
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
  });
}

/** S3Store options for this server, optionally through another endpoint (the fault proxy). */
export function storeOptions(s3: S3Server, endpoint = s3.endpoint) {
  return {
    bucket: s3.bucket,
    endpoint,
    forcePathStyle: true,
    region: "us-east-1",
    credentials: s3.credentials,
  };
}
