// The deploy app synthesized offline, asserted on its CloudFormation: encryption, streaming URL,
// IAM boundaries (the edge cannot read snapshots; the model cannot read API keys), lifecycle rules,
// scale to zero, the Lambda runtime, the model container's context settings. The GPU type chosen
// from the context (checked against core/model/capacity.ts), docs/deploy.md's key example, table
// and commands against the code that reads them. And the `npm run deploy` command itself, with no
// cloud credentials.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Match, Template } from "aws-cdk-lib/assertions";
import { beforeAll, describe, expect, it } from "vitest";
import { LimitError } from "../core/errors.ts";
import { sha256Hex } from "../core/hash/sha256.ts";
import { CUDA_KV_DTYPES, type CudaKvDtypeName, memoryFor } from "../core/model/capacity.ts";
import { ULTRALONG_8B } from "../core/model/ultralong-8b.ts";
import { KeyRing } from "../functions/edge/keys.ts";
import { bundleEdge, LAMBDA_NODE_MAJOR } from "../infra/deploy/bundle.ts";
import { PLACEHOLDER_MODEL_URI, resolveDeployConfig } from "../infra/deploy/config.ts";
import {
  chooseGpuType,
  contextTable,
  GPU_TYPES,
  type GpuType,
  gpuMemoryBytes,
} from "../infra/deploy/gpu.ts";
import {
  buildStack,
  createApp,
  FILES_PREFIX,
  LAMBDA_RUNTIME,
  SNAPSHOT_PREFIX,
} from "../infra/deploy/stack.ts";
import { validateTemplate } from "../infra/deploy/validate.ts";
import { parseDeployArgs } from "../infra/deploy.ts";

const root = join(import.meta.dirname, "..");
type Json = Record<string, unknown>;

let template: Template;
let edgeBundleDir: string;
let json: { Resources: Record<string, { Type: string; Properties: Json }> };

/** The logical id of the one resource of `type` whose properties' JSON contains `text`. */
function logicalId(type: string, text: string): string {
  const ids = Object.entries(json.Resources)
    .filter(([, r]) => r.Type === type && JSON.stringify(r.Properties).includes(text))
    .map(([id]) => id);
  expect(ids, `${type} containing ${text}`).toHaveLength(1);
  return ids[0]!;
}

/** Every IAM statement attached to the role with this logical id. */
function statementsOf(roleId: string): Json[] {
  return Object.values(json.Resources)
    .filter(
      (r) =>
        r.Type === "AWS::IAM::Policy" &&
        JSON.stringify(r.Properties.Roles).includes(`"Ref":"${roleId}"`),
    )
    .flatMap((r) => (r.Properties.PolicyDocument as { Statement: Json[] }).Statement);
}

function refersTo(statement: Json, id: string): boolean {
  return JSON.stringify(statement.Resource).includes(id);
}

beforeAll(async () => {
  const out = mkdtempSync(join(tmpdir(), "ul-deploy-test-"));
  const edge = await bundleEdge(root, "lambda", join(out, "edge"));
  const app = createApp(join(out, "cdk.out"));
  const config = resolveDeployConfig({ model: "s3://my-models/ultralong-1m/" }, {});
  edgeBundleDir = dirname(edge.file);
  const stack = buildStack(app, config, { edgeBundleDir, repoRoot: root });
  template = Template.fromStack(stack);
  json = template.toJSON() as typeof json;
});

describe("deploy stack", () => {
  it("passes the deploy script's own invariant checks", () => {
    expect(validateTemplate(json)).toEqual([]);
  });

  it("keeps the bucket private, encrypted, TLS-only, with snapshot expiry and multipart cleanup", () => {
    template.hasResourceProperties("AWS::S3::Bucket", {
      BucketEncryption: {
        ServerSideEncryptionConfiguration: [
          { ServerSideEncryptionByDefault: { SSEAlgorithm: "AES256" } },
        ],
      },
      PublicAccessBlockConfiguration: {
        BlockPublicAcls: true,
        BlockPublicPolicy: true,
        IgnorePublicAcls: true,
        RestrictPublicBuckets: true,
      },
      LifecycleConfiguration: {
        Rules: [
          { Prefix: SNAPSHOT_PREFIX, ExpirationInDays: 7, Status: "Enabled" },
          { Prefix: `${SNAPSHOT_PREFIX}nonces/`, ExpirationInDays: 1, Status: "Enabled" },
          { AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 }, Status: "Enabled" },
        ],
      },
    });
    const policy = JSON.stringify(template.findResources("AWS::S3::BucketPolicy"));
    expect(policy).toContain('"aws:SecureTransport":"false"');
    expect(policy).toContain('"Effect":"Deny"');
  });

  it("serves the edge from a streaming function URL", () => {
    template.hasResourceProperties("AWS::Lambda::Url", {
      InvokeMode: "RESPONSE_STREAM",
      AuthType: "NONE",
    });
  });

  it("runs the edge on a supported Node.js Lambda runtime, the one the bundle targets", () => {
    // nodejs20.x is past its deprecation; 24.x is the newest the installed aws-cdk-lib names.
    template.hasResourceProperties("AWS::Lambda::Function", {
      Runtime: "nodejs24.x",
      Handler: "index.handler",
    });
    expect(LAMBDA_RUNTIME.name).toBe(`nodejs${LAMBDA_NODE_MAJOR}.x`);
  });

  it("tells the model container and the edge the context and KV dtype the GPU was sized for", () => {
    template.hasResourceProperties("AWS::ECS::TaskDefinition", {
      ContainerDefinitions: [
        {
          Environment: Match.arrayWith([
            { Name: "ULTRALONG_KV_DTYPE", Value: "bf16" },
            { Name: "ULTRALONG_MAX_CONTEXT", Value: "131072" },
          ]),
        },
      ],
    });
    template.hasResourceProperties("AWS::Lambda::Function", {
      Environment: { Variables: Match.objectLike({ ULTRALONG_MAX_CONTEXT: "131072" }) },
    });
    const launch = JSON.stringify(template.findResources("AWS::EC2::LaunchTemplate"));
    expect(launch).toContain('"InstanceType":"g6e.xlarge"');
  });

  it("never lets the edge read snapshots, nor the model read API keys", () => {
    const apiKeys = logicalId("AWS::SecretsManager::Secret", "read by the edge only");
    const signing = logicalId("AWS::SecretsManager::Secret", "HMAC secret");
    const edgeFn = json.Resources[logicalId("AWS::Lambda::Function", '"ULTRALONG_ROLE":"edge"')]!;
    const edgeRole = (edgeFn.Properties.Role as { "Fn::GetAtt": [string, string] })[
      "Fn::GetAtt"
    ][0];
    const taskRoles = Object.entries(json.Resources)
      .filter(
        ([, r]) =>
          r.Type === "AWS::IAM::Role" &&
          JSON.stringify(r.Properties).includes("ecs-tasks.amazonaws.com"),
      )
      .map(([id]) => id);
    expect(taskRoles.length).toBeGreaterThanOrEqual(2); // task role and execution role

    const edge = statementsOf(edgeRole);
    expect(edge.some((s) => refersTo(s, apiKeys))).toBe(true);
    expect(edge.some((s) => refersTo(s, signing))).toBe(true);
    const edgeS3 = JSON.stringify(edge.filter((s) => JSON.stringify(s.Action).includes("s3:")));
    expect(edgeS3).toContain(FILES_PREFIX);
    expect(edgeS3).not.toContain(SNAPSHOT_PREFIX);

    for (const role of taskRoles) {
      for (const s of statementsOf(role)) expect(refersTo(s, apiKeys)).toBe(false);
    }
    const model = taskRoles.flatMap(statementsOf);
    expect(JSON.stringify(model)).toContain(SNAPSHOT_PREFIX);
    expect(model.some((s) => refersTo(s, signing))).toBe(true);
  });

  it("gives the snapshot master key to the model task alone, and expires replay nonces", () => {
    const snapshotKey = logicalId("AWS::SecretsManager::Secret", "encrypts KV snapshots");
    const readers = Object.entries(json.Resources)
      .filter(([, r]) => r.Type === "AWS::IAM::Policy")
      .filter(([, r]) =>
        (r.Properties.PolicyDocument as { Statement: unknown[] }).Statement.some((st) =>
          refersTo(st as never, snapshotKey),
        ),
      )
      .flatMap(([, r]) => (r.Properties.Roles as { Ref: string }[]).map((x) => x.Ref));
    expect(readers.length).toBe(1);
    const reader = json.Resources[readers[0]]!;
    expect(JSON.stringify(reader.Properties)).toContain("ecs-tasks.amazonaws.com");
    // It reaches the container as ULTRALONG_SNAPSHOT_KEY, which serve --role model requires.
    template.hasResourceProperties("AWS::ECS::TaskDefinition", {
      ContainerDefinitions: Match.arrayWith([
        Match.objectLike({
          Secrets: Match.arrayWith([
            Match.objectLike({
              Name: "ULTRALONG_SNAPSHOT_KEY",
              ValueFrom: { Ref: snapshotKey },
            }),
          ]),
        }),
      ]),
    });
    template.hasResourceProperties("AWS::S3::Bucket", {
      LifecycleConfiguration: {
        Rules: Match.arrayWith([
          Match.objectLike({ Prefix: `${SNAPSHOT_PREFIX}nonces/`, ExpirationInDays: 1 }),
        ]),
      },
    });
  });

  it("runs the model on GPU capacity that scales to zero", () => {
    template.hasResourceProperties("AWS::ECS::Service", { DesiredCount: 0 });
    template.hasResourceProperties("AWS::ApplicationAutoScaling::ScalableTarget", {
      MinCapacity: 0,
      MaxCapacity: 2,
    });
    template.hasResourceProperties("AWS::AutoScaling::AutoScalingGroup", { MinSize: "0" });
    template.hasResourceProperties("AWS::ECS::TaskDefinition", {
      ContainerDefinitions: [
        {
          ResourceRequirements: [{ Type: "GPU", Value: "1" }],
          PortMappings: [{ ContainerPort: 8080 }],
        },
      ],
    });
    template.resourceCountIs("AWS::CloudWatch::Alarm", 4 + 2); // ours + the step-scaling pair
  });

  it("runs one engine per GPU: up to eight tasks on each 8-GPU instance", () => {
    const app = createApp(join(mkdtempSync(join(tmpdir(), "ul-deploy-test-")), "cdk.out"));
    const config = resolveDeployConfig(
      { model: "s3://my-models/ultralong-1m/", "gpu-type": "p5en.48xlarge", "max-instances": "1" },
      {},
    );
    const h200 = Template.fromStack(buildStack(app, config, { edgeBundleDir, repoRoot: root }));
    h200.hasResourceProperties("AWS::ApplicationAutoScaling::ScalableTarget", {
      MinCapacity: 0,
      MaxCapacity: 8,
    });
    h200.hasResourceProperties("AWS::AutoScaling::AutoScalingGroup", { MaxSize: "1" });
  });
});

const KV_NAMES = Object.keys(CUDA_KV_DTYPES) as CudaKvDtypeName[];

/** By brute force over the table: the cheapest type whose GPU holds the plan. */
function cheapestHolding(kv: CudaKvDtypeName, context: number): GpuType | undefined {
  const need = memoryFor(ULTRALONG_8B, CUDA_KV_DTYPES[kv], context).total;
  return (Object.keys(GPU_TYPES) as GpuType[])
    .filter((t) => gpuMemoryBytes(t) >= need)
    .sort((a, b) => GPU_TYPES[a].approxUsdPerHour - GPU_TYPES[b].approxUsdPerHour)[0];
}

describe("the GPU type follows the context", () => {
  it("picks the cheapest type whose one GPU holds weights + KV + reserve", () => {
    expect(chooseGpuType("bf16", 131_072)).toBe("g6e.xlarge");
    expect(chooseGpuType("bf16", 262_144)).toBe("p5.48xlarge"); // 48.8 GiB > an L40S's 45
    expect(chooseGpuType("bf16", 524_288)).toBe("p5en.48xlarge");
    expect(chooseGpuType("fp8", 262_144)).toBe("g6e.xlarge");
    expect(chooseGpuType("fp8", 1_048_576)).toBe("p5en.48xlarge"); // 80.9 GiB > an H100's 79.6
    for (const kv of KV_NAMES) {
      for (const context of [
        1, 100_000, 230_776, 230_777, 461_326, 514_704, 1_012_278, 1_012_401,
      ]) {
        const expected = cheapestHolding(kv, context);
        if (expected) expect(chooseGpuType(kv, context), `${kv} ${context}`).toBe(expected);
        else expect(() => chooseGpuType(kv, context)).toThrow(LimitError);
      }
    }
  });

  it("never serves past the model's context, however much KV the GPU holds", () => {
    const model = "s3://my-models/ultralong-1m/";
    const h200 = resolveDeployConfig({ model, "gpu-type": "p5en.48xlarge", "kv-dtype": "fp8" }, {});
    expect(h200.maxContext).toBe(1_048_576); // the GPU holds 2,023,569 fp8 positions
    expect(() =>
      resolveDeployConfig(
        { model, "max-context": "1500000", "kv-dtype": "fp8", "gpu-type": "p5en.48xlarge" },
        {},
      ),
    ).toThrow(
      "--max-context 1,500,000 is beyond the model's context of 1,048,576 positions (--model-context: its config.json max_position_embeddings)",
    );
    const two = resolveDeployConfig(
      { model, "gpu-type": "p5en.48xlarge", "kv-dtype": "fp8", "model-context": "2M" },
      {},
    );
    expect(two.maxContext).toBe(2_023_569);
  });

  it("takes --max-context as 1M/256K/plain integers and --kv-dtype bf16|fp8", () => {
    const model = "s3://my-models/ultralong-1m/";
    const fp8 = resolveDeployConfig({ model, "max-context": "1M", "kv-dtype": "fp8" }, {});
    expect([fp8.gpuType, fp8.maxContext, fp8.kvDtype]).toEqual(["p5en.48xlarge", 1_048_576, "fp8"]);
    const env = resolveDeployConfig({ model }, { ULTRALONG_MAX_CONTEXT: "256K" });
    expect([env.gpuType, env.maxContext]).toEqual(["p5.48xlarge", 262_144]);
    const plain = resolveDeployConfig({ model, "max-context": "200000" }, {});
    expect([plain.gpuType, plain.maxContext]).toEqual(["g6e.xlarge", 200_000]);
    // a type alone serves the longest context its GPU holds
    const h200 = resolveDeployConfig({ model, "gpu-type": "p5en.48xlarge" }, {});
    expect(h200.maxContext).toBe(1_012_278);
    expect(() => resolveDeployConfig({ "kv-dtype": "fp16" }, {})).toThrow(
      "--kv-dtype 'fp16' is not one of bf16, fp8",
    );
    expect(() => resolveDeployConfig({ "max-context": "1G" }, {})).toThrow(
      /^--max-context must be/,
    );
  });

  it("refuses a context no GPU holds, with the arithmetic on the largest", () => {
    expect(() => resolveDeployConfig({ "max-context": "1M" }, {})).toThrow(
      new LimitError(
        "--max-context 1,048,576 in bf16 fits on no listed GPU: weights 14.96 GiB + KV 128.00 GiB + reserve 1.87 GiB = 144.83 GiB > GPU 140.40 GiB on p5en.48xlarge (8x H200 141 GB), the largest, which holds at most 1,012,278 positions; --kv-dtype fp8 holds it",
      ),
    );
    expect(() => resolveDeployConfig({ "max-context": "4M", "kv-dtype": "fp8" }, {})).toThrow(
      /^--max-context 4,194,304 in fp8 fits on no listed GPU: weights 14\.96 GiB \+ KV 256\.\d\d GiB/,
    );
  });

  it("refuses an explicit --gpu-type too small for the context, with the arithmetic", () => {
    expect(() =>
      resolveDeployConfig({ "gpu-type": "g6e.xlarge", "max-context": "256K" }, {}),
    ).toThrow(
      "--gpu-type g6e.xlarge (1x L40S 48 GB) cannot hold --max-context 262,144 in bf16: weights 14.96 GiB + KV 32.00 GiB + reserve 1.87 GiB = 48.83 GiB > GPU 44.99 GiB; it holds at most 230,654 positions in bf16",
    );
  });
});

describe("docs/deploy.md", () => {
  const doc = readFileSync(join(root, "docs/deploy.md"), "utf8");

  it("shows the API-key file in the format the edge's parser takes", async () => {
    const blocks = [...doc.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1]!);
    expect(blocks).toHaveLength(1);
    const ring = new KeyRing(JSON.parse(blocks[0]!));
    const key = /For the key `([^`]+)`/.exec(doc)![1]!;
    expect(blocks[0]).toContain(await sha256Hex(key));
    const tenant = await ring.lookup(key);
    expect(tenant?.id).toBe("acme");
    expect(await ring.lookup(`${key}x`)).toBeNull();
  });

  it("has the context table the capacity plan computes", () => {
    expect(doc).toContain(`\n${contextTable()}\n`);
  });

  it("gives only deploy commands that the deploy accepts", () => {
    const commands = [...doc.replaceAll("\\\n", " ").matchAll(/npm run deploy -- ([^\n`#]+)/g)].map(
      (m) => m[1]!.trim().split(/\s+/),
    );
    expect(commands.length).toBeGreaterThanOrEqual(3);
    for (const argv of commands) {
      const { "dry-run": _dry, out: _out, ...flags } = parseDeployArgs(argv);
      expect(() => resolveDeployConfig(flags, {}), argv.join(" ")).not.toThrow();
    }
  });
});

describe("npm run deploy", () => {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    AWS_ACCESS_KEY_ID: "",
    AWS_SECRET_ACCESS_KEY: "",
    AWS_PROFILE: "",
  };
  for (const name of ["ULTRALONG_MODEL_URI", "ULTRALONG_MAX_CONTEXT", "ULTRALONG_GPU_TYPE"]) {
    delete env[name];
  }
  const deploy = (args: string[], extraEnv: NodeJS.ProcessEnv = {}) =>
    spawnSync(process.execPath, ["node_modules/tsx/dist/cli.mjs", "infra/deploy.ts", ...args], {
      cwd: root,
      encoding: "utf8",
      env: { ...env, ...extraEnv },
      timeout: 120_000,
    });
  const reportOf = (stdout: string) => JSON.parse(stdout.slice(stdout.indexOf("{")));

  it("--dry-run with no other flag synthesizes on a fresh clone, saying the model is a placeholder", () => {
    const r = deploy(["--dry-run"]);
    expect(r.stderr).not.toMatch(/Error/);
    expect(r.status).toBe(0);
    const report = reportOf(r.stdout);
    expect(report.dryRun).toBe(true);
    expect(report.problems).toEqual([]);
    expect(report.model).toMatchObject({ uri: PLACEHOLDER_MODEL_URI, placeholder: true });
    expect(report.model.note).toContain("placeholder");
    expect(report.gpu).toMatchObject({ type: "g6e.xlarge", kvDtype: "bf16", maxContext: 131_072 });
    expect(report.gpu.memory).toBe(
      "weights 14.96 GiB + KV 16.00 GiB + reserve 1.87 GiB = 32.83 GiB <= GPU 44.99 GiB",
    );
  });

  it("synthesizes and reports what it would create, with no AWS account", () => {
    const r = deploy([
      "--dry-run",
      "--model",
      "s3://my-models/ultralong-1m/",
      "--gpu-type",
      "p5en.48xlarge",
    ]);
    expect(r.stderr).not.toMatch(/Error/);
    expect(r.status).toBe(0);
    const report = reportOf(r.stdout);
    expect(report.dryRun).toBe(true);
    expect(report.problems).toEqual([]);
    expect(report.gpu.type).toBe("p5en.48xlarge");
    expect(report.gpu.maxContext).toBe(1_012_278); // the longest one H200 holds in bf16
    expect(report.model).toEqual({ uri: "s3://my-models/ultralong-1m/", placeholder: false });
    expect(report.resources["AWS::Lambda::Url"]).toBe(1);
    expect(report.edgeBundleBytes).toBeGreaterThan(1000);
  });

  it("refuses a bad setting with one line naming it", () => {
    const r = deploy(["--dry-run", "--gpu-type", "k80"]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain("--gpu-type 'k80' is not supported");
  });

  it("refuses a context no GPU holds with one line of arithmetic, before building anything", () => {
    const r = deploy(["--dry-run", "--max-context", "1M"]);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain(
      "weights 14.96 GiB + KV 128.00 GiB + reserve 1.87 GiB = 144.83 GiB > GPU 140.40 GiB on p5en.48xlarge",
    );
  });

  it("refuses a real deploy without --model with one line, before building anything", () => {
    const r = deploy([]);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toMatch(/^deploy: --model is required to deploy: s3:\/\/bucket\/prefix\//);
  });

  it("refuses a real deploy that would build the image with no Docker, with one line", () => {
    const r = deploy(["--model", "s3://my-models/ultralong-1m/"], { PATH: "/nonexistent" });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain("deploy: docker is not running or not installed");
    expect(r.stderr).toContain("--image URI");
  });
});
