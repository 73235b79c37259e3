// Shared setup for the tests that run the edge as it is deployed (Workers bundle in workerd, Lambda
// bundle with Function URL events): a real model function on loopback serving a tiny generated
// model, one tenant with one key, and the edge bundled by the deploy's own bundler.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sha256Hex } from "../../core/hash/sha256.ts";
import { type LocalServer, startLocal } from "../../functions/platform/local.ts";
import { bundleEdge, type EdgePlatform } from "../../infra/deploy/bundle.ts";
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
