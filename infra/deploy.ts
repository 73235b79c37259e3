// `npm run deploy -- [--dry-run] [--region R] [--model s3://bucket/dir/] [--max-context 1M]
//   [--kv-dtype bf16|fp8] [--model-context 1M] [--gpu-type T] [--max-instances N] [--snapshot-days N]
//   [--idle-minutes N] [--image URI] [--name N] [--model-id ID] [--out DIR]`
//
// Bundles the edge, synthesizes the CDK stack, checks its security invariants and prints what it
// would create. Without --dry-run it then deploys the synthesized assembly with the AWS CDK CLI
// (credentials from the usual AWS environment; the account and region bootstrapped once with
// `npx cdk bootstrap aws://ACCOUNT/REGION`; Docker to build the model image unless --image).
// --dry-run needs no AWS account, no Docker and no --model (a placeholder URI, said so in the
// report).

import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { UltralongError } from "../core/errors.ts";
import { CUDA_KV_DTYPES, memoryFor, planArithmetic } from "../core/model/capacity.ts";
import { ULTRALONG_8B } from "../core/model/ultralong-8b.ts";
import { bundleEdge } from "./deploy/bundle.ts";
import { PLACEHOLDER_MODEL_URI, resolveDeployConfig } from "./deploy/config.ts";
import { GPU_TYPES, gpuMemoryBytes } from "./deploy/gpu.ts";
import { buildStack, createApp } from "./deploy/stack.ts";
import { summarize, type Template, validateTemplate } from "./deploy/validate.ts";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");

/** The deploy's command line: strict, so a misspelt flag is refused (one line) before anything. */
export function parseDeployArgs(argv: string[]) {
  const { values } = parseArgs({
    args: argv,
    options: {
      "dry-run": { type: "boolean" },
      region: { type: "string" },
      model: { type: "string" },
      "gpu-type": { type: "string" },
      "max-instances": { type: "string" },
      "snapshot-days": { type: "string" },
      "idle-minutes": { type: "string" },
      image: { type: "string" },
      name: { type: "string" },
      "model-id": { type: "string" },
      "max-context": { type: "string" },
      "model-context": { type: "string" },
      "kv-dtype": { type: "string" },
      out: { type: "string" },
    },
    strict: true,
  });
  return values;
}

export async function deploy(argv: string[], env: Record<string, string | undefined>) {
  const values = parseDeployArgs(argv);
  const { "dry-run": dryRun, out, ...flags } = values;
  const config = resolveDeployConfig(flags, env);
  if (!dryRun) preflight(config.modelIsPlaceholder, config.modelImage);
  const outdir = out ? resolve(out) : await mkdtemp(join(tmpdir(), "ultralong-cdk-"));
  const edge = await bundleEdge(root, "lambda", join(outdir, "edge-bundle"));

  const app = createApp(join(outdir, "cdk.out"));
  const stack = buildStack(app, config, { edgeBundleDir: dirname(edge.file), repoRoot: root });
  const assembly = app.synth();
  const artifact = assembly.getStackByName(stack.stackName);
  const template = JSON.parse(
    readFileSync(join(assembly.directory, artifact.templateFile), "utf8"),
  ) as Template;
  const problems = validateTemplate(template);
  const plan = memoryFor(ULTRALONG_8B, CUDA_KV_DTYPES[config.kvDtype], config.maxContext);
  const report = {
    stack: stack.stackName,
    region: config.region,
    gpu: {
      type: config.gpuType,
      ...GPU_TYPES[config.gpuType],
      maxInstances: config.maxInstances,
      kvDtype: config.kvDtype,
      maxContext: config.maxContext,
      // one GPU, one engine: UltraLong-8B's weights + maxContext positions of KV + reserve
      memory: planArithmetic(plan, gpuMemoryBytes(config.gpuType)),
    },
    model: {
      uri: config.modelUri,
      placeholder: config.modelIsPlaceholder,
      ...(config.modelIsPlaceholder
        ? { note: "placeholder URI (no --model given): a real deploy needs --model s3://…" }
        : {}),
    },
    edgeBundleBytes: edge.bytes,
    assembly: assembly.directory,
    resources: summarize(template),
    problems,
    dryRun: Boolean(dryRun),
  };
  console.log(JSON.stringify(report, null, 2));
  if (problems.length > 0) {
    throw new UltralongError("invalid_template", `template breaks ${problems.length} invariant(s)`);
  }
  if (dryRun) return;
  const cdk = join(root, "node_modules", ".bin", "cdk");
  const r = spawnSync(cdk, ["deploy", "--app", assembly.directory, "--require-approval", "never"], {
    stdio: "inherit",
  });
  if (r.status !== 0) {
    throw new UltralongError(
      "deploy_failed",
      `cdk deploy exited ${r.status} (a first deploy in an account and region needs \`npx cdk bootstrap aws://ACCOUNT/${config.region}\` once; see docs/deploy.md)`,
    );
  }
}

/** What a real deploy needs that a dry run does not, checked before anything is built. */
function preflight(modelIsPlaceholder: boolean, modelImage: string | null): void {
  if (modelIsPlaceholder) {
    throw new UltralongError(
      "missing_model",
      `--model is required to deploy: s3://bucket/prefix/ of the uploaded model directory (without it only --dry-run runs, with ${PLACEHOLDER_MODEL_URI})`,
    );
  }
  if (modelImage === null && spawnSync("docker", ["version"], { stdio: "ignore" }).status !== 0) {
    throw new UltralongError(
      "missing_docker",
      "docker is not running or not installed: the model image is built with Docker (buildx) during the deploy; start it, or pass --image URI of a pushed image",
    );
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    await deploy(process.argv.slice(2), process.env);
  } catch (err) {
    const usage = String((err as { code?: unknown }).code ?? "").startsWith("ERR_PARSE_ARGS");
    if (err instanceof UltralongError || usage) {
      console.error(`deploy: ${(err as Error).message}`);
      process.exitCode = 1;
    } else {
      throw err;
    }
  }
}
