// The credential of an `Authorization: Bearer <token>` header, for both apps. The scheme name is
// case-insensitive (RFC 9110 section 11.1), so "bearer", "BEARER" and "Bearer" are the same; the
// token is one run of non-space characters (RFC 6750's b64token is narrower; keys are opaque).
export function bearerToken(header: string | undefined | null): string | null {
  const match = /^bearer[ \t]+(\S+)[ \t]*$/i.exec(header ?? "");
  return match ? match[1] : null;
}
