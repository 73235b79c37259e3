// Node entry: serve any of our Hono apps on a real socket (@hono/node-server). Logic lives in the
// apps; this only listens and closes, and turns what Node itself refuses (a port out of range or
// in use, a body cut mid-stream) into the same typed errors and JSON bodies as the apps.
import type { Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { serve } from "@hono/node-server";
import { InvalidInputError, NotAvailableError } from "../../core/errors.ts";
import { describeError, IncompleteBodyError } from "../http/http-errors.ts";

export interface FetchApp {
  fetch(request: Request): Response | Promise<Response>;
}

export interface NodeServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** A TCP port to listen on: an integer 0..65535 (0 = any free port). */
export function checkPort(port: number, what = "port"): number {
  if (!Number.isInteger(port) || port < 0 || port > 65_535)
    throw new InvalidInputError(`${what} must be 0..65535 (0 = any free port), got ${port}`);
  return port;
}

/** Why `listen` failed, in words a person acts on (EADDRINUSE, EACCES, EADDRNOTAVAIL, ...). */
function listenError(err: NodeJS.ErrnoException, where: string): Error {
  const why =
    err.code === "EADDRINUSE"
      ? "the port is in use by another process"
      : err.code === "EACCES"
        ? "permission denied (ports below 1024 need privileges)"
        : err.code === "EADDRNOTAVAIL"
          ? "no such address on this machine"
          : err.message;
  return new NotAvailableError(`cannot listen on ${where}: ${why}`, { cause: err });
}

// Node's HTTP parser reports a body that ends before its Content-Length (or last chunk) as a
// client error, which by default answers a bare "400 Bad Request" with no body. Answer in OpenAI's
// shape instead; the app, whose body read fails with the same IncompleteBodyError, logs it.
function onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  const response = (socket as Socket & { _httpMessage?: { headersSent: boolean } })._httpMessage;
  if (socket.writable && !response?.headersSent && err.code !== "ECONNRESET") {
    const d = describeError(
      err.code === "HPE_INVALID_EOF_STATE"
        ? new IncompleteBodyError()
        : new InvalidInputError(`malformed HTTP request (${err.code ?? err.message})`),
    );
    const body = JSON.stringify(d.body);
    // end(), not destroy(): the answer is flushed before the socket closes.
    socket.end(
      `HTTP/1.1 ${d.status} Bad Request\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  } else socket.destroy();
}

export async function listen(
  app: FetchApp,
  options: { port?: number; hostname?: string } = {},
): Promise<NodeServer> {
  const hostname = options.hostname ?? "127.0.0.1";
  const port = checkPort(options.port ?? 0);
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  return new Promise((resolve, reject) => {
    const server = serve({ fetch: app.fetch, port, hostname }, (info: AddressInfo) => {
      server.off("error", onListenError);
      resolve({
        url: `http://${host}:${info.port}`,
        port: info.port,
        close: () =>
          new Promise<void>((done) => {
            // Streams in flight end when their sockets close; do not wait on idle keep-alives.
            (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
            server.close(() => done());
          }),
      });
    }) as Server;
    const onListenError = (err: NodeJS.ErrnoException) => {
      server.close();
      reject(listenError(err, `${host}:${port}`));
    };
    server.once("error", onListenError);
    server.on("clientError", onClientError);
  });
}

/**
 * Fails as `listen` would if `port` on `hostname` cannot be listened on now, then frees it: lets a
 * command refuse a port in use, or a host that is not this machine's, before it spends seconds
 * loading a model. Port 0 checks the host alone.
 */
export async function checkCanListen(port: number, hostname = "127.0.0.1"): Promise<void> {
  const probe = await listen(
    { fetch: () => new Response(null, { status: 503 }) },
    { port, hostname },
  );
  await probe.close();
}
