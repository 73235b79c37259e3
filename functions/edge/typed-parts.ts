// Joining the parts of a stream (body chunks, id batches) into one typed array.

/** One array of `parts` in order (the part itself when there is one). */
export function joinParts<T extends Uint8Array | Int32Array>(
  parts: T[],
  make: (n: number) => T,
): T {
  if (parts.length === 1) return parts[0];
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
