// `--store` values: a directory path, or s3://bucket/prefix. Endpoint and addressing for
// self-hosted S3 come from the environment (flags override it in the CLI):
//   ULTRALONG_S3_ENDPOINT, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL
//   ULTRALONG_S3_PATH_STYLE=1|0 (default: 1 when a custom endpoint is set, else 0)
// Credentials and region follow the SDK's usual chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_REGION).

import { InvalidInputError } from "../errors.ts";

export type StoreSpec =
  | { kind: "dir"; path: string }
  | {
      kind: "s3";
      bucket: string;
      prefix: string;
      endpoint?: string;
      forcePathStyle: boolean;
      region?: string;
    };

export function parseStoreSpec(spec: string, env: Record<string, string | undefined>): StoreSpec {
  if (spec.startsWith("s3://")) {
    const rest = spec.slice("s3://".length);
    const slash = rest.indexOf("/");
    const bucket = slash < 0 ? rest : rest.slice(0, slash);
    let prefix = slash < 0 ? "" : rest.slice(slash + 1);
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
      throw new InvalidInputError(`'${spec}': '${bucket}' is not a valid S3 bucket name`);
    }
    if (prefix && !prefix.endsWith("/")) prefix += "/";
    const endpoint =
      env.ULTRALONG_S3_ENDPOINT || env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined;
    const style = env.ULTRALONG_S3_PATH_STYLE;
    const forcePathStyle =
      style === undefined || style === "" ? endpoint !== undefined : /^(1|true|yes)$/i.test(style);
    return {
      kind: "s3",
      bucket,
      prefix,
      endpoint,
      forcePathStyle,
      region: env.AWS_REGION || env.AWS_DEFAULT_REGION || undefined,
    };
  }
  if (spec.includes("://") && !spec.startsWith("file://")) {
    throw new InvalidInputError(
      `unsupported snapshot store '${spec}' (use a directory or s3://bucket/prefix)`,
    );
  }
  const path = spec.startsWith("file://") ? decodeURIComponent(new URL(spec).pathname) : spec;
  if (!path) throw new InvalidInputError("empty snapshot store path");
  return { kind: "dir", path };
}
