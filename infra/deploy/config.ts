// Deploy configuration: flags first, then environment, then defaults. Every value is validated
// here so a bad setting fails before anything is synthesized, with one line naming it.

import { InvalidInputError } from "../../core/errors.ts";
import { CUDA_KV_DTYPES, type CudaKvDtypeName } from "../../core/model/capacity.ts";
import { parseTokenCount } from "../../core/model/quantities.ts";
import { checkGpuHolds, chooseGpuType, GPU_TYPES, type GpuType, gpuContext } from "./gpu.ts";

/**
 * The model URI a deploy without --model synthesizes with: a valid-looking bucket that is not the
 * user's, so `--dry-run` works on a fresh clone; a real deploy refuses it (deploy.ts).
 */
export const PLACEHOLDER_MODEL_URI = "s3://placeholder-model-bucket/models/ultralong-8b-1m/";

export interface DeployConfig {
  /** Stack name and resource name prefix. */
  name: string;
  region: string;
  /** Where the model function gets its weights at start: s3://bucket/prefix/ of an HF directory. */
  modelUri: string;
  /** True when no --model was given and modelUri is PLACEHOLDER_MODEL_URI (dry runs only). */
  modelIsPlaceholder: boolean;
  /** One GPU of it holds the weights plus maxContext positions of KV in kvDtype (gpu.ts). */
  gpuType: GpuType;
  /** The model function's KV cache dtype. */
  kvDtype: CudaKvDtypeName;
  /** Upper bound of GPU instances (the service scales to zero when idle). */
  maxInstances: number;
  /** Days after which KV snapshots expire. */
  snapshotRetentionDays: number;
  /** Minutes of no requests before the model service scales to zero. */
  idleMinutes: number;
  /** A pre-built model image URI; when absent the image is built from infra/docker/model.Dockerfile. */
  modelImage: string | null;
  /** The model name clients send (`model` in requests, GET /v1/models). */
  modelId: string;
  /** Most tokens of context (prompt + output): what the edge accepts and the engine allocates. */
  maxContext: number;
}

const DEFAULTS = {
  name: "UltraLong",
  region: "us-east-1",
  kvDtype: "bf16",
  maxInstances: 2,
  snapshotRetentionDays: 7,
  idleMinutes: 15,
  modelId: "ultralong-8b-1m",
  // With neither --max-context nor --gpu-type: serve's own default (--max-positions 131072), which
  // the cheapest type holds in bf16. 1M needs fp8 on an H200 (docs/deploy.md's table).
  maxContext: 131_072,
  // UltraLong-8B-1M's max_position_embeddings; the 2M and 4M variants need --model-context.
  modelContext: 1_048_576,
} as const;

function positiveInt(name: string, raw: string): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) {
    throw new InvalidInputError(`${name} must be a positive integer, got '${raw}'`);
  }
  return n;
}

/**
 * `flags` from the command line (kebab-case names without dashes), `env` from the environment
 * (ULTRALONG_* names). Flags win.
 */
export function resolveDeployConfig(
  flags: Record<string, string | undefined>,
  env: Record<string, string | undefined>,
): DeployConfig {
  const pick = (flag: string, envName: string): string | undefined => flags[flag] ?? env[envName];
  const kvDtype = pick("kv-dtype", "ULTRALONG_KV_DTYPE") ?? DEFAULTS.kvDtype;
  if (!(kvDtype in CUDA_KV_DTYPES)) {
    throw new InvalidInputError(
      `--kv-dtype '${kvDtype}' is not one of ${Object.keys(CUDA_KV_DTYPES).join(", ")}`,
    );
  }
  const kv = kvDtype as CudaKvDtypeName;
  const askedType = pick("gpu-type", "ULTRALONG_GPU_TYPE");
  if (askedType !== undefined && !(askedType in GPU_TYPES)) {
    throw new InvalidInputError(
      `--gpu-type '${askedType}' is not supported (one of: ${Object.keys(GPU_TYPES).join(", ")})`,
    );
  }
  const rawContext = pick("max-context", "ULTRALONG_MAX_CONTEXT");
  const askedContext =
    rawContext === undefined ? undefined : parseTokenCount("--max-context", rawContext);
  // Either one decides the other: a type serves the longest context it holds; a context picks the
  // cheapest type that holds it. Both given: the type must hold the context.
  // The model's own context (max_position_embeddings): the served context never exceeds it, however
  // much KV a GPU could hold (an H200 holds 2M positions in fp8; the 1M model's RoPE ends at 1M).
  const modelContext = parseTokenCount(
    "--model-context",
    pick("model-context", "ULTRALONG_MODEL_CONTEXT") ?? String(DEFAULTS.modelContext),
  );
  let gpuType: GpuType;
  let maxContext: number;
  if (askedType !== undefined) {
    gpuType = askedType as GpuType;
    maxContext = askedContext ?? Math.min(gpuContext(gpuType, kv), modelContext);
    checkGpuHolds(gpuType, kv, maxContext);
  } else {
    maxContext = askedContext ?? DEFAULTS.maxContext;
    gpuType = chooseGpuType(kv, maxContext);
  }
  if (maxContext > modelContext) {
    throw new InvalidInputError(
      `--max-context ${maxContext.toLocaleString("en-US")} is beyond the model's context of ${modelContext.toLocaleString("en-US")} positions (--model-context: its config.json max_position_embeddings)`,
    );
  }
  const givenUri = pick("model", "ULTRALONG_MODEL_URI");
  const modelUri = givenUri ?? PLACEHOLDER_MODEL_URI;
  if (!/^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\/.+/.test(modelUri)) {
    throw new InvalidInputError(
      `--model must be s3://bucket/prefix/ of a model directory, got '${modelUri}'`,
    );
  }
  const region =
    pick("region", "ULTRALONG_REGION") ??
    env.AWS_REGION ??
    env.AWS_DEFAULT_REGION ??
    DEFAULTS.region;
  if (!/^[a-z]{2}(-[a-z]+)+-\d$/.test(region)) {
    throw new InvalidInputError(`--region '${region}' is not an AWS region name`);
  }
  const name = pick("name", "ULTRALONG_STACK_NAME") ?? DEFAULTS.name;
  if (!/^[A-Za-z][A-Za-z0-9-]{0,63}$/.test(name)) {
    throw new InvalidInputError(
      `--name '${name}' must be letters, digits and '-', starting with a letter`,
    );
  }
  const modelImage = pick("image", "ULTRALONG_MODEL_IMAGE") ?? null;
  return {
    name,
    region,
    modelUri,
    modelIsPlaceholder: givenUri === undefined,
    gpuType,
    kvDtype: kv,
    maxInstances: positiveInt(
      "--max-instances",
      pick("max-instances", "ULTRALONG_MAX_INSTANCES") ?? String(DEFAULTS.maxInstances),
    ),
    snapshotRetentionDays: positiveInt(
      "--snapshot-days",
      pick("snapshot-days", "ULTRALONG_SNAPSHOT_DAYS") ?? String(DEFAULTS.snapshotRetentionDays),
    ),
    idleMinutes: positiveInt(
      "--idle-minutes",
      pick("idle-minutes", "ULTRALONG_IDLE_MINUTES") ?? String(DEFAULTS.idleMinutes),
    ),
    modelImage,
    modelId: pick("model-id", "ULTRALONG_MODEL_ID") ?? DEFAULTS.modelId,
    maxContext,
  };
}

/** Bucket and prefix of an s3:// URI (validated by resolveDeployConfig). */
export function parseS3Uri(uri: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/]+)\/(.*)$/.exec(uri);
  if (!m) throw new InvalidInputError(`not an s3:// URI: '${uri}'`);
  return { bucket: m[1]!, prefix: m[2]! };
}
