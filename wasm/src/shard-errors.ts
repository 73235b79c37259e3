// shard.mjs is plain JS and cannot import core/errors.ts; it marks errors with a `code`. This maps
// them to the typed errors (and passes everything else, including CancelledError, through).
import { LimitError, UltralongError } from "../../core/errors.ts";

export function rethrowShardError(err: unknown): never {
  if (err instanceof UltralongError) throw err;
  const code = (err as { code?: unknown } | null)?.code;
  if (code === "limit_exceeded") throw new LimitError((err as Error).message, { cause: err });
  throw err;
}
