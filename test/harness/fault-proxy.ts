// An HTTP proxy that sits in front of a real server (s3rver in the tests) and injects the faults a
// real object store and network produce, on a schedule the test chooses:
//   status          answer 5xx (or any status) with an S3 XML error, without forwarding
//   throttle        503 SlowDown, S3's throttling answer
//   reset           destroy the connection before any response
//   reset-mid-body  forward the status and headers and part of the body, then destroy the socket
//   truncate        forward a short body whose Content-Length is rewritten to match (looks complete)
//   bitflip         flip one bit of the response body (or, with target "request", of the uploaded
//                   body, which damages the stored object itself)
//   slow            delay before answering and dribble the body out in pieces
// Body faults apply only to exchanges that carry a body; `injected` counts faults actually applied.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { rng } from "../fixtures/tokenizer/corpus.ts";
import { type S3Server, startS3 } from "./s3.ts";

export type Fault =
  | { kind: "status"; status?: number; code?: string }
  | { kind: "throttle" }
  | { kind: "reset" }
  | { kind: "reset-mid-body"; afterBytes?: number }
  | { kind: "truncate"; keepBytes?: number }
  | { kind: "bitflip"; target?: "response" | "request"; offset?: number }
  | { kind: "slow"; delayMs: number; pieces?: number };

export interface ProxiedRequest {
  /** 0-based count of requests seen by this proxy. */
  index: number;
  method: string;
  /** Path and query, e.g. "/bucket/kv/x?partNumber=2&uploadId=...". */
  url: string;
  /** The request carries a Range header (a ranged GET). */
  ranged: boolean;
}

export type FaultSchedule = (req: ProxiedRequest) => Fault | null;

export interface FaultProxy {
  endpoint: string;
  /** Faults actually applied, by kind. */
  injected: Record<string, number>;
  requests: number;
  setSchedule(schedule: FaultSchedule): void;
  close(): Promise<void>;
}

/** A deterministic PRNG (mulberry32) so a failing schedule can be replayed from its seed. */
export const seededRandom = rng;

/** Each request matching `when` gets a fault with probability `rate`, drawn from `faults`. */
export function randomFaults(opts: {
  seed: number;
  rate: number;
  faults: Fault[];
  when?: (req: ProxiedRequest) => boolean;
}): FaultSchedule {
  const random = seededRandom(opts.seed);
  return (req) => {
    if (opts.when && !opts.when(req)) return null;
    if (random() >= opts.rate) return null;
    return opts.faults[Math.floor(random() * opts.faults.length)];
  };
}

/** The first `count` requests matching `when` get `fault`, the rest pass. */
export function firstN(
  count: number,
  fault: Fault,
  when?: (req: ProxiedRequest) => boolean,
): FaultSchedule {
  let left = count;
  return (req) => {
    if ((when && !when(req)) || left <= 0) return null;
    left--;
    return fault;
  };
}

const noFaults: FaultSchedule = () => null;

function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    stream.on("data", (d: Buffer) => parts.push(d));
    stream.on("end", () => resolve(Buffer.concat(parts)));
    stream.on("error", reject);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function flipBit(body: Buffer, offset?: number): Buffer {
  const copy = Buffer.from(body);
  const at = Math.min(copy.length - 1, offset ?? Math.floor(copy.length / 2));
  copy[at] ^= 0x10;
  return copy;
}

function s3Error(res: http.ServerResponse, status: number, code: string): void {
  const xml = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>injected by fault proxy</Message><RequestId>fault</RequestId></Error>`;
  res.writeHead(status, {
    "content-type": "application/xml",
    "content-length": Buffer.byteLength(xml),
  });
  res.end(xml);
}

export async function startFaultProxy(opts: {
  target: string;
  schedule?: FaultSchedule;
}): Promise<FaultProxy> {
  const target = new URL(opts.target);
  let schedule = opts.schedule ?? noFaults;
  const injected: Record<string, number> = {};
  let requests = 0;
  const count = (kind: string) => {
    injected[kind] = (injected[kind] ?? 0) + 1;
  };
  const agent = new http.Agent({ keepAlive: true });

  const server = http.createServer(async (req, res) => {
    const index = requests++;
    const body = await readAll(req);
    const fault = schedule({
      index,
      method: req.method ?? "GET",
      url: req.url ?? "/",
      ranged: "range" in req.headers,
    });
    if (fault?.kind === "status") {
      count("status");
      return s3Error(res, fault.status ?? 500, fault.code ?? "InternalError");
    }
    if (fault?.kind === "throttle") {
      count("throttle");
      return s3Error(res, 503, "SlowDown");
    }
    if (fault?.kind === "reset") {
      count("reset");
      req.socket.destroy();
      return;
    }
    let upload = body;
    if (fault?.kind === "bitflip" && fault.target === "request" && body.length > 0) {
      count("bitflip-request");
      upload = flipBit(body, fault.offset);
    }
    if (fault?.kind === "slow") await sleep(fault.delayMs);

    const upstream = http.request(
      {
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
        agent,
      },
      async (up) => {
        let data = await readAll(up);
        const headers = { ...up.headers };
        delete headers["transfer-encoding"];
        const status = up.statusCode ?? 502;
        const hasBody = data.length > 0 && req.method === "GET" && status < 300;
        if (hasBody && fault?.kind === "reset-mid-body") {
          count("reset-mid-body");
          res.writeHead(status, { ...headers, "content-length": String(data.length) });
          res.write(
            data.subarray(0, Math.min(data.length - 1, fault.afterBytes ?? data.length >> 1)),
          );
          setTimeout(() => res.socket?.destroy(), 5);
          return;
        }
        if (hasBody && fault?.kind === "truncate") {
          count("truncate");
          data = data.subarray(0, Math.min(data.length - 1, fault.keepBytes ?? data.length >> 1));
        }
        if (hasBody && fault?.kind === "bitflip" && fault.target !== "request") {
          count("bitflip-response");
          data = flipBit(data, fault.offset);
        }
        res.writeHead(status, { ...headers, "content-length": String(data.length) });
        if (fault?.kind === "slow") {
          count("slow");
          const pieces = Math.max(1, fault.pieces ?? 4);
          const step = Math.ceil(data.length / pieces) || 1;
          for (let at = 0; at < data.length; at += step) {
            res.write(data.subarray(at, at + step));
            await sleep(fault.delayMs / pieces);
          }
          res.end();
          return;
        }
        res.end(data);
      },
    );
    upstream.on("error", () => res.socket?.destroy());
    upstream.end(upload);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    injected,
    get requests() {
      return requests;
    },
    setSchedule(s) {
      schedule = s;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      agent.destroy();
    },
  };
}

/** s3rver with a fault proxy in front, for suites that need both; close() stops both. */
export async function startS3BehindProxy(): Promise<{
  s3: S3Server;
  proxy: FaultProxy;
  close(): Promise<void>;
}> {
  const s3 = await startS3();
  const proxy = await startFaultProxy({ target: s3.endpoint });
  return {
    s3,
    proxy,
    async close() {
      await proxy.close();
      await s3.close();
    },
  };
}
