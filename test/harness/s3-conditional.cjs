// S3 conditional writes for s3rver. s3rver 3.7 predates them (S3 added `If-None-Match: *` on
// PutObject in 2024) and ignores the header, so the harness adds S3's documented behaviour in front
// of its router: a PutObject with `If-None-Match: *` on a key that exists is answered 412
// PreconditionFailed, and conditional PUTs of one key are serialised so exactly one of two racing
// writers wins, as on S3. Everything else passes through unchanged. CommonJS so the in-process
// server (test/harness/s3.ts) and the child-process one (a `node -e` script) load the same file.
"use strict";

function conditionalPut(server) {
  const chains = new Map(); // "bucket/key" -> tail of the queue of conditional PUTs on that key
  return async function conditionalPutMiddleware(ctx, next) {
    const condition = ctx.headers["if-none-match"];
    if (ctx.method !== "PUT" || condition !== "*" || ctx.querystring.includes("uploadId")) {
      return next();
    }
    const [, bucket, ...rest] = decodeURIComponent(ctx.path).split("/");
    const key = rest.join("/");
    const id = `${bucket}/${key}`;
    const before = chains.get(id) ?? Promise.resolve();
    let release;
    const mine = new Promise((r) => (release = r));
    const tail = before.then(() => mine);
    chains.set(id, tail);
    await before;
    try {
      if (await server.store.existsObject(bucket, key)) {
        ctx.status = 412;
        ctx.type = "application/xml";
        ctx.body =
          '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PreconditionFailed</Code>' +
          "<Message>At least one of the pre-conditions you specified did not hold</Message>" +
          "<Condition>If-None-Match</Condition></Error>";
        return;
      }
      await next();
    } finally {
      release();
      if (chains.get(id) === tail) chains.delete(id);
    }
  };
}

/** Puts the conditional-write middleware first in a (not yet running) s3rver's Koa stack. */
function addConditionalWrites(server) {
  server.middleware.unshift(conditionalPut(server));
  return server;
}

module.exports = { addConditionalWrites };
