// node:crypto's SHA-256 behind core/hash's Hasher interface (several times faster than the pure-TS
// one, which platforms without node:crypto use).
import { createHash } from "node:crypto";
import type { HasherFactory } from "../hash/sha256.ts";

export const nodeSha256: HasherFactory = () => {
  const h = createHash("sha256");
  return {
    update: (bytes) => {
      h.update(bytes);
    },
    digest: () => new Uint8Array(h.digest()),
    digestHex: () => h.digest("hex"),
  };
};
