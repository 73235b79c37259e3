// node:crypto's SHA-256 in core/hash's two shapes: the Node fast path, injected wherever Node runs
// (several times faster than crypto.subtle one-shot, which copies its input first, and than the
// pure-TS streaming hasher that platforms without node:crypto use).
import { createHash } from "node:crypto";
import type { OneShotSha256, StreamingSha256Factory } from "../hash/sha256.ts";

/** One-shot: pass as `sha256` to createSnapshotCache, encodeSnapshot, createDriverEngine. */
export const nodeSha256: OneShotSha256 = async (data) =>
  new Uint8Array(createHash("sha256").update(data).digest());

/** Streaming: pass as `hasher` to loadModel (the model fingerprint). */
export const createNodeSha256: StreamingSha256Factory = () => {
  const h = createHash("sha256");
  return {
    update: (bytes) => {
      h.update(bytes);
    },
    digest: () => new Uint8Array(h.digest()),
  };
};
