// Shared setup for the tests that run the edge as it is deployed (Workers bundle in workerd, Lambda
// bundle with Function URL events): a real model function on loopback serving a tiny generated
// model, one tenant with one key, and the edge bundled by the deploy's own bundler.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sha256Hex } from "../../core/hash/sha256.ts";
import { type LocalServer, startLocal } from "../../functions/entries/local.ts";
import { bundleEdge, type EdgePlatform } from "../../infra/deploy/bundle.ts";
import { startWorkerd, type WorkerdServer } from "../harness/workerd.ts";
import { testModelDir } from "./models.ts";

export interface DeployedEdgeFixture {
  key: string;
  secret: string;
  /** The key file JSON the edge is configured with. */
  apiKeys: string;
  local: LocalServer;
  /** The bundle's folder and its index.mjs. */
  bundleDir: string;
  bundleFile: string;
  /** The edge's settings as strings, the same for every platform. */
  settings: { modelUrl: string; modelId: string; maxContext: string };
  close(): Promise<void>;
}

export async function startDeployedEdgeFixture(
  platform: EdgePlatform,
  key: string,
  secret = "deployed-edge-test-signing-secret-0123456789",
): Promise<DeployedEdgeFixture> {
  const keys = {
    tenants: { t: { rpm: 0, maxOutputTokens: 32 } },
    keys: [{ sha256: await sha256Hex(key), tenant: "t" }],
  };
  const local = await startLocal({
    modelDir: await testModelDir(),
    modelId: "tiny",
    runtime: "reference",
    store: null,
    maxPositions: 4096,
    keys,
    secret,
    log: () => {},
  });
  const bundleDir = await mkdtemp(join(tmpdir(), `ultralong-${platform}-bundle-`));
  const { file } = await bundleEdge(process.cwd(), platform, bundleDir);
  return {
    key,
    secret,
    apiKeys: JSON.stringify(keys),
    local,
    bundleDir,
    bundleFile: file,
    settings: { modelUrl: local.modelUrl, modelId: "tiny", maxContext: "4096" },
    async close() {
      await local.close();
      await rm(bundleDir, { recursive: true, force: true });
    },
  };
}

/** The Workers bundle of a deployed-edge fixture running in the real workerd binary. */
export async function startWorkersEdge(
  apiKey: string,
): Promise<{ edge: DeployedEdgeFixture; worker: WorkerdServer; close(): Promise<void> }> {
  const edge = await startDeployedEdgeFixture("workers", apiKey);
  const worker = await startWorkerd({
    script: await readFile(edge.bundleFile, "utf8"),
    bindings: {
      API_KEYS: edge.apiKeys,
      SIGNING_SECRET: edge.secret,
      MODEL_URL: edge.settings.modelUrl,
      MODEL_ID: edge.settings.modelId,
      MAX_CONTEXT: edge.settings.maxContext,
    },
    allowLocalNetwork: true,
  }).catch(async (err) => {
    await edge.close();
    throw err;
  });
  return {
    edge,
    worker,
    async close() {
      await worker.stop();
      await edge.close();
    },
  };
}
