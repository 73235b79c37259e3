// `npm run deploy -- [--dry-run] [--region R] [--model s3://bucket/dir/] [--gpu-type T]
//   [--max-instances N] [--snapshot-days N] [--idle-minutes N] [--image URI] [--name N]
//   [--model-id ID] [--max-context N] [--out DIR]`
//
// Bundles the edge, synthesizes the CDK stack, checks its security invariants and prints what it
// would create. Without --dry-run it then deploys the synthesized assembly with the AWS CDK CLI
// (credentials from the usual AWS environment). --dry-run needs no AWS account.

import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { UltralongError } from "../core/errors.ts";
import { bundleEdge } from "./deploy/bundle.ts";
import { GPU_TYPES, resolveDeployConfig } from "./deploy/config.ts";
import { buildStack, createApp } from "./deploy/stack.ts";
import { summarize, type Template, validateTemplate } from "./deploy/validate.ts";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");

export async function deploy(argv: string[], env: Record<string, string | undefined>) {
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
      out: { type: "string" },
    },
    strict: true,
  });
  const { "dry-run": dryRun, out, ...flags } = values;
  const config = resolveDeployConfig(flags, env);
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
  const report = {
    stack: stack.stackName,
    region: config.region,
    gpu: { type: config.gpuType, ...GPU_TYPES[config.gpuType], maxInstances: config.maxInstances },
    model: config.modelUri,
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
  if (r.status !== 0) throw new UltralongError("deploy_failed", `cdk deploy exited ${r.status}`);
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
