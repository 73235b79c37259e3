// Deploy configuration: flags first, then environment, then defaults. Every value is validated
// here so a bad setting fails before anything is synthesized, with one line naming it.

import { InvalidInputError } from "../../core/errors.ts";

/** GPU instance types we support for the model function, with what they hold. */
export const GPU_TYPES = {
  // 1x H200 141 GB: UltraLong-8B bf16 (16 GB) + ~1M tokens of bf16 KV (128 GB) or ~2M in fp8.
  "p5en.48xlarge": { gpus: 8, gpuMemoryGiB: 141, note: "8x H200 141 GB (one engine per GPU)" },
  "p5.48xlarge": { gpus: 8, gpuMemoryGiB: 80, note: "8x H100 80 GB" },
  // 1x L40S 48 GB: weights + ~250K tokens of bf16 KV; the cheapest GPU that serves the 1M model
  // with KV offload or fp8 KV for shorter documents.
  "g6e.xlarge": { gpus: 1, gpuMemoryGiB: 48, note: "1x L40S 48 GB" },
  "g6e.12xlarge": { gpus: 4, gpuMemoryGiB: 48, note: "4x L40S 48 GB" },
} as const;
export type GpuType = keyof typeof GPU_TYPES;

export interface DeployConfig {
  /** Stack name and resource name prefix. */
  name: string;
  region: string;
  /** Where the model function gets its weights at start: s3://bucket/prefix/ of an HF directory. */
  modelUri: string;
  gpuType: GpuType;
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
  /** Most tokens of context the edge accepts (prompt + output). */
  maxContext: number;
}

const DEFAULTS = {
  name: "UltraLong",
  region: "us-east-1",
  modelUri: "s3://REPLACE-ME/models/Llama-3.1-8B-UltraLong-1M-Instruct-bf16/",
  gpuType: "g6e.xlarge",
  maxInstances: 2,
  snapshotRetentionDays: 7,
  idleMinutes: 15,
  modelId: "ultralong-8b-1m",
  maxContext: 1_048_576,
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
  const gpuType = pick("gpu-type", "ULTRALONG_GPU_TYPE") ?? DEFAULTS.gpuType;
  if (!(gpuType in GPU_TYPES)) {
    throw new InvalidInputError(
      `--gpu-type '${gpuType}' is not supported (one of: ${Object.keys(GPU_TYPES).join(", ")})`,
    );
  }
  const modelUri = pick("model", "ULTRALONG_MODEL_URI") ?? DEFAULTS.modelUri;
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
    gpuType: gpuType as GpuType,
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
    maxContext: positiveInt(
      "--max-context",
      pick("max-context", "ULTRALONG_MAX_CONTEXT") ?? String(DEFAULTS.maxContext),
    ),
  };
}

/** Bucket and prefix of an s3:// URI (validated by resolveDeployConfig). */
export function parseS3Uri(uri: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/]+)\/(.*)$/.exec(uri);
  if (!m) throw new InvalidInputError(`not an s3:// URI: '${uri}'`);
  return { bucket: m[1]!, prefix: m[2]! };
}
