// Joining the parts of a stream (body chunks, id batches) into one typed array.

/** One array of `parts` in order (the part itself when there is one of the type made). */
export function joinParts<T extends Uint8Array | Int32Array>(
  parts: ArrayLike<number>[],
  make: (n: number) => T,
): T {
  const one = make(0);
  if (parts.length === 1 && parts[0] instanceof one.constructor) return parts[0] as T;
  let n = 0;
  for (const p of parts) n += p.length;
  const out = make(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
