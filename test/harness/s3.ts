// A real S3-compatible server for tests: the `s3rver` npm package on a free loopback port, storing
// into a fresh temp directory, with one bucket created. Path-style addressing; s3rver's fixed
// credentials (S3RVER / S3RVER) are returned for the client.
import { mkdtemp, rm } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import S3rver from "s3rver";

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

export async function startS3(opts: { bucket?: string } = {}): Promise<S3Server> {
  const bucket = opts.bucket ?? "snapshots";
  const directory = await mkdtemp(join(tmpdir(), "ultralong-s3rver-"));
  const server = new S3rver({
    address: "127.0.0.1",
    port: 0,
    silent: true,
    directory,
    vhostBuckets: false,
    configureBuckets: [{ name: bucket, configs: [] }],
  });
  const address = (await server.run()) as AddressInfo;
  const endpoint = `http://127.0.0.1:${address.port}`;
  const credentials = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" };
  return {
    endpoint,
    port: address.port,
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
      await server.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/**
 * startS3 in a child process: for benchmarks, so the server's CPU work does not share the event
 * loop (and the core) with the client being measured, as on a real deployment.
 */
export async function startS3Process(opts: { bucket?: string } = {}): Promise<S3Server> {
  const { spawn } = await import("node:child_process");
  const bucket = opts.bucket ?? "snapshots";
  const directory = await mkdtemp(join(tmpdir(), "ultralong-s3rver-"));
  const code = `const S3rver = require("s3rver");
new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: ${JSON.stringify(directory)},
  vhostBuckets: false, configureBuckets: [{ name: ${JSON.stringify(bucket)}, configs: [] }] })
  .run().then((a) => console.log(JSON.stringify(a)));`;
  const child = spawn(process.execPath, ["-e", code], { stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise<number>((resolve, reject) => {
    let buf = "";
    child.stdout!.on("data", (d) => {
      buf += d;
      const line = buf.split("\n")[0];
      if (buf.includes("\n")) resolve((JSON.parse(line) as AddressInfo).port);
    });
    child.on("exit", (c) => reject(new Error(`s3rver child exited with ${c}`)));
  });
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
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
      await rm(directory, { recursive: true, force: true });
    },
  };
}
