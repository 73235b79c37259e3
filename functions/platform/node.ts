// Node entry: serve any of our Hono apps on a real socket (@hono/node-server). Logic lives in the
// apps; this only listens and closes.
import type { AddressInfo } from "node:net";
import { serve } from "@hono/node-server";

export interface FetchApp {
  fetch(request: Request): Response | Promise<Response>;
}

export interface NodeServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

export function listen(
  app: FetchApp,
  options: { port?: number; hostname?: string } = {},
): Promise<NodeServer> {
  const hostname = options.hostname ?? "127.0.0.1";
  return new Promise((resolve, reject) => {
    const server = serve(
      { fetch: app.fetch, port: options.port ?? 0, hostname },
      (info: AddressInfo) => {
        const host = hostname.includes(":") ? `[${hostname}]` : hostname;
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
      },
    );
    server.once("error", reject);
  });
}
