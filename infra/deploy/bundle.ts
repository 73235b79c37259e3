// Bundles an edge entry file with esbuild: one ESM file per platform. The Lambda bundle leaves the
// AWS SDK out (the Node 20 Lambda runtime ships v3); the Workers bundle is fully self-contained.

import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { build } from "esbuild";

export type EdgePlatform = "lambda" | "workers";

export const EDGE_ENTRIES: Record<EdgePlatform, string> = {
  lambda: "functions/platform/lambda.ts",
  workers: "functions/platform/workers.ts",
};

/** Writes `outDir/index.mjs` and returns its path and size. */
export async function bundleEdge(
  root: string,
  platform: EdgePlatform,
  outDir: string,
): Promise<{ file: string; bytes: number }> {
  await mkdir(outDir, { recursive: true });
  const file = join(outDir, "index.mjs");
  const result = await build({
    entryPoints: [join(root, EDGE_ENTRIES[platform])],
    outfile: file,
    bundle: true,
    format: "esm",
    minify: true,
    sourcemap: false,
    metafile: true,
    logLevel: "silent",
    ...(platform === "lambda"
      ? { platform: "node", target: "node20", external: ["@aws-sdk/*"] }
      : { platform: "browser", target: "es2022", conditions: ["workerd", "worker", "browser"] }),
  });
  const bytes = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
  return { file, bytes };
}
