// The Node way to open a local model directory: DirectoryModelFiles, node:crypto SHA-256 and the
// fingerprint cache beside the model. Everything else that runs on Node calls this.

import { loadModel } from "../model/load.ts";
import type { LoadedModel } from "../model/weights.ts";
import {
  DirectoryFingerprintCache,
  type DirectoryFingerprintCacheOptions,
} from "./fingerprint-cache.ts";
import { createNodeSha256 } from "./hasher.ts";
import { DirectoryModelFiles } from "./model-files.ts";

export function loadModelDir(
  dir: string,
  opts: DirectoryFingerprintCacheOptions = {},
): Promise<LoadedModel> {
  const files = new DirectoryModelFiles(dir);
  return loadModel(files, {
    hasher: createNodeSha256,
    cache: new DirectoryFingerprintCache(files.name, opts),
  });
}
