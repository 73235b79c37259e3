// Security invariants checked on the synthesized template before anything is deployed. The deploy
// script refuses a template that breaks one; tests assert on the template independently.

interface Resource {
  Type: string;
  Properties?: Record<string, unknown>;
}
export interface Template {
  Resources: Record<string, Resource>;
}

function ofType(t: Template, type: string): [string, Resource][] {
  return Object.entries(t.Resources).filter(([, r]) => r.Type === type);
}

/** Human-readable violations; empty when the template is sound. */
export function validateTemplate(t: Template): string[] {
  const problems: string[] = [];
  for (const [id, r] of ofType(t, "AWS::S3::Bucket")) {
    const p = r.Properties ?? {};
    if (!p.BucketEncryption) problems.push(`bucket ${id} has no default encryption`);
    const block = p.PublicAccessBlockConfiguration as Record<string, boolean> | undefined;
    const all = [
      "BlockPublicAcls",
      "BlockPublicPolicy",
      "IgnorePublicAcls",
      "RestrictPublicBuckets",
    ];
    if (!block || !all.every((k) => block[k] === true)) {
      problems.push(`bucket ${id} does not block all public access`);
    }
  }
  const tlsOnly = ofType(t, "AWS::S3::BucketPolicy").some(([, r]) =>
    JSON.stringify(r.Properties).includes('"aws:SecureTransport":"false"'),
  );
  if (!tlsOnly) problems.push("no bucket policy denies requests without TLS");
  for (const [id, r] of ofType(t, "AWS::Lambda::Url")) {
    if (r.Properties?.InvokeMode !== "RESPONSE_STREAM") {
      problems.push(`function URL ${id} is not in RESPONSE_STREAM mode`);
    }
  }
  for (const [id, r] of ofType(t, "AWS::IAM::Policy")) {
    const text = JSON.stringify(r.Properties?.PolicyDocument ?? {});
    if (/"Action":"\*"|"Action":\["\*"\]/.test(text))
      problems.push(`policy ${id} allows every action`);
  }
  return problems;
}

/** Resource counts by type, for the dry-run summary. */
export function summarize(t: Template): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const r of Object.values(t.Resources)) counts[r.Type] = (counts[r.Type] ?? 0) + 1;
  return Object.fromEntries(Object.entries(counts).sort(([a], [b]) => a.localeCompare(b)));
}
