// Bundles an edge entry file with esbuild: one ESM file per platform. The Lambda bundle leaves the
// AWS SDK out (the Node.js Lambda runtimes ship v3); the Workers bundle is fully self-contained.

import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { build } from "esbuild";
import { llama31TokenizerFiles } from "../../core/node/make-model.ts";
import { Tokenizer } from "../../core/tokenizer/index.ts";
import { COMPILED_TOKENIZER_FILE } from "../../core/tokenizer/load.ts";

export type EdgePlatform = "lambda" | "workers";

/**
 * The Node.js major of the edge Lambda's runtime (stack.ts LAMBDA_RUNTIME, nodejs24.x), which the
 * bundle targets. The edge's source stays within Node 20 (package.json engines), so the same
 * bundle also runs on a local Node 20, as test/deploy-lambda.test.ts does.
 */
export const LAMBDA_NODE_MAJOR = 24;

export const EDGE_ENTRIES: Record<EdgePlatform, string> = {
  lambda: "functions/entries/edge-lambda.ts",
  workers: "infra/workers/entry.ts",
};

/**
 * The compiled Llama 3.1 vocabulary with its chat template (UltraLong-8B ships Llama 3.1's
 * tokenizer unchanged). The Lambda reads it from its package; Workers get it as a data binding.
 */
export async function compiledLlama31Tokenizer(): Promise<Uint8Array> {
  const files = await llama31TokenizerFiles();
  const text = new TextDecoder();
  return Tokenizer.fromJson(
    text.decode(files.tokenizer),
    text.decode(files.tokenizerConfig),
  ).compile();
}

/**
 * Writes `outDir/index.mjs` and returns its path and size. The compiled vocabulary goes beside it
 * (`tokenizer.ultralong.bin`): the Lambda reads it from its package; the Workers bundle embeds it
 * (what wrangler's Data rule does for infra/workers/wrangler.toml).
 */
export async function bundleEdge(
  root: string,
  platform: EdgePlatform,
  outDir: string,
): Promise<{ file: string; bytes: number }> {
  await mkdir(outDir, { recursive: true });
  const file = join(outDir, "index.mjs");
  const vocabFile = join(outDir, COMPILED_TOKENIZER_FILE);
  const vocab = await compiledLlama31Tokenizer();
  await writeFile(vocabFile, vocab);
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
      ? { platform: "node", target: `node${LAMBDA_NODE_MAJOR}`, external: ["@aws-sdk/*"] }
      : {
          platform: "browser",
          target: "es2022",
          conditions: ["workerd", "worker", "browser"],
          loader: { ".bin": "binary" },
          plugins: [
            {
              name: "vocabulary",
              setup(b) {
                b.onResolve({ filter: /tokenizer\.ultralong\.bin$/ }, () => ({ path: vocabFile }));
              },
            },
          ],
        }),
  });
  const code = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
  const bytes = platform === "lambda" ? code + vocab.byteLength : code;
  return { file, bytes };
}
