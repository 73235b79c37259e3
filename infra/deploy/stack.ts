// The AWS deployment as one CDK stack: S3 for snapshots and files, the edge as a Lambda behind a
// function URL in RESPONSE_STREAM mode, the model function as a GPU container on ECS that scales to
// zero, secrets in Secrets Manager, least-privilege IAM, logs and alarms. docs/deploy.md says why
// ECS-on-EC2 was chosen over SageMaker.

import {
  App,
  aws_applicationautoscaling as appscaling,
  aws_autoscaling as autoscaling,
  aws_cloudwatch as cloudwatch,
  Duration,
  aws_ec2 as ec2,
  aws_ecr_assets as ecrAssets,
  aws_ecs as ecs,
  aws_elasticloadbalancingv2 as elbv2,
  aws_iam as iam,
  aws_lambda as lambda,
  aws_logs as logs,
  RemovalPolicy,
  SecretValue,
  Stack,
  aws_s3 as s3,
  aws_secretsmanager as secretsmanager,
} from "aws-cdk-lib";
import { NONCE_PREFIX } from "../../core/protocol/nonce-ledger.ts";
import { type DeployConfig, parseS3Uri } from "./config.ts";
import { GPU_TYPES } from "./gpu.ts";

/** Key prefixes in the bucket. IAM is scoped by prefix: the edge never reads snapshots. */
export const SNAPSHOT_PREFIX = "snapshots/";
export const FILES_PREFIX = "files/";

export interface StackAssets {
  /** Folder holding the bundled edge handler (index.mjs exporting `handler`). */
  edgeBundleDir: string;
  /** Repository root: the Docker build context of the model image. */
  repoRoot: string;
}

const MODEL_PORT = 8080;

/** The edge Lambda's runtime: nodejs${LAMBDA_NODE_MAJOR}.x (bundle.ts targets that Node). */
export const LAMBDA_RUNTIME = lambda.Runtime.NODEJS_24_X;

/** The CDK app with the feature flags this stack relies on. */
export function createApp(outdir: string): App {
  return new App({
    outdir,
    context: {
      // Launch configurations are retired for new accounts; the GPU group uses a launch template.
      "@aws-cdk/aws-autoscaling:generateLaunchTemplateInsteadOfLaunchConfig": true,
    },
  });
}

export function buildStack(app: App, config: DeployConfig, assets: StackAssets): Stack {
  const stack = new Stack(app, config.name, {
    env: { region: config.region },
    description:
      "UltraLong-8B as a function: Lambda edge, GPU model function on ECS, S3 KV snapshots",
  });
  const gpu = GPU_TYPES[config.gpuType];

  // --- Storage: snapshots and uploaded files -------------------------------------------------
  const bucket = new s3.Bucket(stack, "Store", {
    encryption: s3.BucketEncryption.S3_MANAGED,
    blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
    enforceSSL: true,
    versioned: false,
    objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
    removalPolicy: RemovalPolicy.RETAIN,
    lifecycleRules: [
      {
        id: "expire-snapshots",
        prefix: SNAPSHOT_PREFIX,
        expiration: Duration.days(config.snapshotRetentionDays),
      },
      // The replay ledger's nonce objects (core/protocol/nonce-ledger.ts): a nonce matters only
      // inside the 60 s signature window; a day keeps the count of tiny objects low.
      {
        id: "expire-nonces",
        prefix: `${SNAPSHOT_PREFIX}${NONCE_PREFIX}`,
        expiration: Duration.days(1),
      },
      { id: "abort-incomplete-multipart", abortIncompleteMultipartUploadAfter: Duration.days(1) },
    ],
  });

  // --- Secrets: API keys (edge only) and the edge-to-model signing secret (both) --------------
  const apiKeys = new secretsmanager.Secret(stack, "ApiKeys", {
    description:
      "Key file JSON (functions/edge/keys.ts): tenants and SHA-256 hashes of API keys; read by the edge only",
    // Starts empty (no key works) and holds only hashes; the operator adds keys after deploying.
    secretStringValue: SecretValue.unsafePlainText(JSON.stringify({ tenants: {}, keys: [] })),
  });
  const signingSecret = new secretsmanager.Secret(stack, "SigningSecret", {
    description: "HMAC secret the edge signs model-function requests with",
    generateSecretString: { passwordLength: 64, excludePunctuation: true },
  });
  // Per-tenant snapshot salts derive from this; it must outlive container restarts or every
  // tenant's snapshots become unreachable. Model function only.
  const saltSecret = new secretsmanager.Secret(stack, "SaltSecret", {
    description: "Secret the model function derives per-tenant snapshot salts from",
    generateSecretString: { passwordLength: 64, excludePunctuation: true },
  });
  // The master key KV snapshots are sealed under (AES-256-GCM per tenant, HKDF): 64 letters and
  // digits, which ULTRALONG_SNAPSHOT_KEY reads as base64 (48 bytes). Model function only: whoever
  // can write the bucket cannot forge or read snapshots without it. Rotation: put the new key first
  // and the old one after a comma (functions/node/snapshot-keys.ts).
  const snapshotKey = new secretsmanager.Secret(stack, "SnapshotKey", {
    description: "Master key that encrypts KV snapshots; read by the model function only",
    generateSecretString: { passwordLength: 64, excludePunctuation: true },
  });

  // --- Network: private subnets for the model service and the edge's path to it -------------
  const vpc = new ec2.Vpc(stack, "Vpc", {
    maxAzs: 2,
    natGateways: 1,
    subnetConfiguration: [
      { name: "public", subnetType: ec2.SubnetType.PUBLIC },
      { name: "private", subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
    ],
    gatewayEndpoints: { S3: { service: ec2.GatewayVpcEndpointAwsService.S3 } },
  });
  const edgeSg = new ec2.SecurityGroup(stack, "EdgeSg", { vpc, allowAllOutbound: true });
  const albSg = new ec2.SecurityGroup(stack, "ModelAlbSg", { vpc, allowAllOutbound: true });
  albSg.addIngressRule(edgeSg, ec2.Port.tcp(80), "edge to model function");

  // --- Model function: GPU containers on ECS, scaling to zero when idle ----------------------
  const cluster = new ecs.Cluster(stack, "Cluster", {
    vpc,
    containerInsightsV2: ecs.ContainerInsights.ENABLED,
  });
  const asg = new autoscaling.AutoScalingGroup(stack, "GpuAsg", {
    vpc,
    vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
    instanceType: new ec2.InstanceType(config.gpuType),
    machineImage: ecs.EcsOptimizedImage.amazonLinux2023(ecs.AmiHardwareType.GPU),
    minCapacity: 0,
    maxCapacity: config.maxInstances,
    requireImdsv2: true,
    blockDevices: [
      {
        deviceName: "/dev/xvda",
        volume: autoscaling.BlockDeviceVolume.ebs(200, { encrypted: true }),
      },
    ],
  });
  const capacity = new ecs.AsgCapacityProvider(stack, "GpuCapacity", {
    autoScalingGroup: asg,
    enableManagedScaling: true,
    enableManagedTerminationProtection: false,
    targetCapacityPercent: 100,
  });
  cluster.addAsgCapacityProvider(capacity);

  const modelLogs = new logs.LogGroup(stack, "ModelLogs", {
    retention: logs.RetentionDays.ONE_MONTH,
    removalPolicy: RemovalPolicy.DESTROY,
  });
  const task = new ecs.Ec2TaskDefinition(stack, "ModelTask", {
    networkMode: ecs.NetworkMode.AWS_VPC,
  });
  const image = config.modelImage
    ? ecs.ContainerImage.fromRegistry(config.modelImage)
    : ecs.ContainerImage.fromAsset(assets.repoRoot, {
        file: "infra/docker/model.Dockerfile",
        // The GPU instances are x86_64: an image built on an arm64 machine must still be amd64.
        platform: ecrAssets.Platform.LINUX_AMD64,
        exclude: ["node_modules", ".git", "native/build", "wasm/build", "cdk.out", "**/.tmp"],
      });
  const model = parseS3Uri(config.modelUri);
  const container = task.addContainer("model", {
    image,
    gpuCount: 1,
    memoryReservationMiB: 8192,
    logging: ecs.LogDrivers.awsLogs({ logGroup: modelLogs, streamPrefix: "model" }),
    portMappings: [{ containerPort: MODEL_PORT }],
    environment: {
      ULTRALONG_ROLE: "model",
      ULTRALONG_MODEL_URI: config.modelUri,
      // The engine's KV cache: its dtype (bf16 | fp8) and positions, which one GPU of the chosen
      // type holds beside the weights (infra/deploy/gpu.ts).
      ULTRALONG_KV_DTYPE: config.kvDtype,
      ULTRALONG_MAX_CONTEXT: String(config.maxContext),
      ULTRALONG_STORE: `s3://${bucket.bucketName}/${SNAPSHOT_PREFIX}`,
      ULTRALONG_FILES: `s3://${bucket.bucketName}/${FILES_PREFIX}`,
      PORT: String(MODEL_PORT),
    },
    secrets: {
      ULTRALONG_SIGNING_SECRET: ecs.Secret.fromSecretsManager(signingSecret),
      ULTRALONG_SALT_SECRET: ecs.Secret.fromSecretsManager(saltSecret),
      ULTRALONG_SNAPSHOT_KEY: ecs.Secret.fromSecretsManager(snapshotKey),
    },
    healthCheck: {
      command: ["CMD-SHELL", `curl -fs http://localhost:${MODEL_PORT}/healthz || exit 1`],
      startPeriod: Duration.minutes(10),
    },
  });
  void container;

  // The model role: snapshots read/write, files read, weights read; nothing else. The signing
  // secret reaches the container through the execution role (granted by ecs.Secret above).
  bucket.grantReadWrite(task.taskRole, `${SNAPSHOT_PREFIX}*`);
  bucket.grantRead(task.taskRole, `${FILES_PREFIX}*`);
  task.taskRole.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ["s3:GetObject"],
      resources: [`arn:aws:s3:::${model.bucket}/${model.prefix}*`],
    }),
  );
  task.taskRole.addToPrincipalPolicy(
    new iam.PolicyStatement({
      actions: ["s3:ListBucket"],
      resources: [`arn:aws:s3:::${model.bucket}`],
      conditions: { StringLike: { "s3:prefix": [`${model.prefix}*`] } },
    }),
  );

  const serviceSg = new ec2.SecurityGroup(stack, "ModelSg", { vpc, allowAllOutbound: true });
  serviceSg.addIngressRule(albSg, ec2.Port.tcp(MODEL_PORT), "ALB to model containers");
  const service = new ecs.Ec2Service(stack, "ModelService", {
    cluster,
    taskDefinition: task,
    desiredCount: 0,
    securityGroups: [serviceSg],
    vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
    capacityProviderStrategies: [{ capacityProvider: capacity.capacityProviderName, weight: 1 }],
    // Each task holds one GPU (its engine's weights and KV), and a deployment may not place a new
    // task beside the old one on the same GPU: the old tasks stop first (a short gap, no doubling).
    minHealthyPercent: 0,
    maxHealthyPercent: 100,
  });

  const alb = new elbv2.ApplicationLoadBalancer(stack, "ModelAlb", {
    vpc,
    internetFacing: false,
    securityGroup: albSg,
    // Long prefills stream progress events; keep idle connections well past one event interval.
    idleTimeout: Duration.seconds(900),
  });
  const listener = alb.addListener("Http", { port: 80, open: false });
  const targets = listener.addTargets("Model", {
    port: MODEL_PORT,
    protocol: elbv2.ApplicationProtocol.HTTP,
    targets: [service],
    healthCheck: { path: "/healthz", interval: Duration.seconds(30) },
    deregistrationDelay: Duration.seconds(30),
  });

  // Scale to zero: request count drives the task count; any request while at zero (the ALB answers
  // 503 with no targets, the edge retries with progress events) scales out to one.
  // One task = one engine = one GPU (ECS hands each task its own GPU), so a multi-GPU type runs
  // up to one task per GPU of every instance; the capacity provider adds instances as tasks need.
  const scaling = service.autoScaleTaskCount({
    minCapacity: 0,
    maxCapacity: config.maxInstances * gpu.gpus,
  });
  scaling.scaleOnMetric("ScaleOnRequests", {
    metric: alb.metrics.requestCount({ period: Duration.minutes(1), statistic: "Sum" }),
    scalingSteps: [
      { upper: 0, change: -1 },
      { lower: 1, change: +1 },
    ],
    adjustmentType: appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
    evaluationPeriods: config.idleMinutes,
    cooldown: Duration.minutes(5),
  });

  // --- Edge: Lambda with a streaming function URL ---------------------------------------------
  const edgeLogs = new logs.LogGroup(stack, "EdgeLogs", {
    retention: logs.RetentionDays.ONE_MONTH,
    removalPolicy: RemovalPolicy.DESTROY,
  });
  const edge = new lambda.Function(stack, "Edge", {
    // nodejs20.x is past its deprecation (Node 20's end of life, 2026-04-30); 24.x is the newest
    // the installed aws-cdk-lib names and AWS supports.
    runtime: LAMBDA_RUNTIME,
    architecture: lambda.Architecture.ARM_64,
    handler: "index.handler",
    code: lambda.Code.fromAsset(assets.edgeBundleDir),
    memorySize: 1024,
    timeout: Duration.minutes(15),
    logGroup: edgeLogs,
    vpc,
    vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
    securityGroups: [edgeSg],
    environment: {
      // Names read by functions/entries/edge-lambda.ts.
      ULTRALONG_ROLE: "edge",
      ULTRALONG_MODEL_URL: `http://${alb.loadBalancerDnsName}`,
      ULTRALONG_MODEL_ID: config.modelId,
      ULTRALONG_MAX_CONTEXT: String(config.maxContext),
      ULTRALONG_API_KEYS_ARN: apiKeys.secretArn,
      ULTRALONG_SIGNING_SECRET_ARN: signingSecret.secretArn,
      ULTRALONG_FILES: `s3://${bucket.bucketName}/${FILES_PREFIX}`,
    },
  });
  apiKeys.grantRead(edge);
  signingSecret.grantRead(edge);
  bucket.grantReadWrite(edge, `${FILES_PREFIX}*`);
  const url = edge.addFunctionUrl({
    authType: lambda.FunctionUrlAuthType.NONE, // callers authenticate with API keys at the edge
    invokeMode: lambda.InvokeMode.RESPONSE_STREAM,
  });

  // --- Alarms -----------------------------------------------------------------------------------
  new cloudwatch.Alarm(stack, "EdgeErrors", {
    metric: edge.metricErrors({ period: Duration.minutes(5) }),
    threshold: 5,
    evaluationPeriods: 1,
    alarmDescription: "edge Lambda errors (5 in 5 minutes)",
  });
  new cloudwatch.Alarm(stack, "EdgeThrottles", {
    metric: edge.metricThrottles({ period: Duration.minutes(5) }),
    threshold: 1,
    evaluationPeriods: 1,
    alarmDescription: "edge Lambda throttled",
  });
  new cloudwatch.Alarm(stack, "Model5xx", {
    metric: targets.metrics.httpCodeTarget(elbv2.HttpCodeTarget.TARGET_5XX_COUNT, {
      period: Duration.minutes(5),
    }),
    threshold: 5,
    evaluationPeriods: 1,
    alarmDescription: "model function 5xx responses",
  });
  new cloudwatch.Alarm(stack, "ModelUnhealthy", {
    metric: targets.metrics.unhealthyHostCount({ period: Duration.minutes(5) }),
    threshold: 1,
    evaluationPeriods: 2,
    alarmDescription: "model function targets failing health checks",
  });

  stack.exportValue(url.url, { name: `${config.name}-FunctionUrl` });
  stack.exportValue(bucket.bucketName, { name: `${config.name}-Bucket` });
  // docs/deploy.md: where the operator puts the key file, and the edge to refresh after.
  stack.exportValue(apiKeys.secretArn, { name: `${config.name}-ApiKeysSecret` });
  stack.exportValue(edge.functionName, { name: `${config.name}-EdgeFunction` });
  stack.addMetadata(
    "ultralong:gpu",
    `${config.gpuType}: ${gpu.gpus}x ${gpu.gpu}, one engine per GPU, ${config.maxContext} positions of ${config.kvDtype} KV`,
  );
  return stack;
}
