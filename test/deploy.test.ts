// The deploy app synthesized offline, asserted on its CloudFormation: encryption, streaming URL,
// IAM boundaries (the edge cannot read snapshots; the model cannot read API keys), lifecycle rules,
// scale to zero. And the `npm run deploy -- --dry-run` command itself, with no cloud credentials.
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Template } from "aws-cdk-lib/assertions";
import { beforeAll, describe, expect, it } from "vitest";
import { bundleEdge } from "../infra/deploy/bundle.ts";
import { resolveDeployConfig } from "../infra/deploy/config.ts";
import { buildStack, createApp, FILES_PREFIX, SNAPSHOT_PREFIX } from "../infra/deploy/stack.ts";
import { validateTemplate } from "../infra/deploy/validate.ts";

const root = join(import.meta.dirname, "..");
type Json = Record<string, unknown>;

let template: Template;
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
  const stack = buildStack(app, config, { edgeBundleDir: dirname(edge.file), repoRoot: root });
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
    template.hasResourceProperties("AWS::Lambda::Function", {
      Runtime: "nodejs20.x",
      Handler: "index.handler",
    });
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
});

describe("npm run deploy -- --dry-run", () => {
  const env = { ...process.env, AWS_ACCESS_KEY_ID: "", AWS_SECRET_ACCESS_KEY: "", AWS_PROFILE: "" };

  it("synthesizes and reports what it would create, with no AWS account", () => {
    const r = spawnSync(
      process.execPath,
      [
        "node_modules/tsx/dist/cli.mjs",
        "infra/deploy.ts",
        "--dry-run",
        "--model",
        "s3://my-models/ultralong-1m/",
        "--gpu-type",
        "p5en.48xlarge",
      ],
      { cwd: root, encoding: "utf8", env, timeout: 120_000 },
    );
    expect(r.stderr).not.toMatch(/Error/);
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout.slice(r.stdout.indexOf("{")));
    expect(report.dryRun).toBe(true);
    expect(report.problems).toEqual([]);
    expect(report.gpu.type).toBe("p5en.48xlarge");
    expect(report.resources["AWS::Lambda::Url"]).toBe(1);
    expect(report.edgeBundleBytes).toBeGreaterThan(1000);
  });

  it("refuses a bad setting with one line naming it", () => {
    const r = spawnSync(
      process.execPath,
      ["node_modules/tsx/dist/cli.mjs", "infra/deploy.ts", "--dry-run", "--gpu-type", "k80"],
      { cwd: root, encoding: "utf8", env },
    );
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain("--gpu-type 'k80' is not supported");
  });
});
