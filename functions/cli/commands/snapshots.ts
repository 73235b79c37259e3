// `ultralong snapshots ls|rm|gc`: retention for KV snapshot stores (a directory or s3://bucket/prefix).

import { InvalidInputError } from "../../../core/errors.ts";
import { toHex } from "../../../core/hash/hex.ts";
import { parseSnapshotHeader, SNAPSHOT_HEADER_BYTES } from "../../../core/kv/format.ts";
import { QUARANTINE_ROOT, SNAPSHOT_KEY_ROOT } from "../../../core/kv/snapshot-cache.ts";
import type { ObjectInfo, SnapshotStore } from "../../../core/kv/store.ts";
import { openStore } from "../../../core/node/snapshot-dir.ts";
import { NONCE_PREFIX } from "../../../core/protocol/nonce-ledger.ts";
import { type Command, parseCommandArgs } from "../command.ts";

const usage = `usage: ultralong snapshots <ls|rm|gc> [options] [KEY...]

  ls   list snapshot objects (key, size, age) and totals
  rm   delete the objects named by KEY... or matching --prefix (with --older-than, only older ones)
  gc   delete snapshots, quarantined objects and replay nonces older than --older-than (default 7d); with
       --orphans also chunks whose previous chunk is gone (they can never be restored)

options:
  --store S         a directory or s3://bucket/prefix (default: $XDG_CACHE_HOME or ~/.cache
                    /ultralong/snapshots; S3 endpoint and path style from ULTRALONG_S3_ENDPOINT or
                    AWS_ENDPOINT_URL_S3 and ULTRALONG_S3_PATH_STYLE, credentials as the AWS SDK)
  --s3-endpoint URL custom S3 endpoint (overrides ULTRALONG_S3_ENDPOINT)
  --s3-path-style   path-style addressing (overrides ULTRALONG_S3_PATH_STYLE)
  --prefix P        only keys starting with P (e.g. kv/v1/<model>/<tenant>/ or quarantine/)
  --older-than D    only objects last modified more than D ago: 90s, 30m, 12h, 7d, 2w
  --orphans         (gc) also delete chunks whose previous chunk is absent
  --dry-run         (rm, gc) print what would be deleted, delete nothing
  --json            (ls) one JSON object per line
`;

const UNITS: Record<string, number> = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 };

export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)([smhdw]?)$/.exec(text.trim());
  if (!m) throw new InvalidInputError(`bad duration '${text}' (use e.g. 90s, 30m, 12h, 7d, 2w)`);
  if (m[2] === "" && Number(m[1]) !== 0)
    throw new InvalidInputError(`duration '${text}' needs a unit`);
  return Number(m[1]) * (UNITS[m[2]] ?? 0);
}

function human(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}

function age(ms: number): string {
  const s = Math.max(0, ms / 1000);
  if (s < 120) return `${Math.round(s)}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

async function collect(
  store: SnapshotStore,
  prefixes: string[],
  olderThanMs: number | null,
  now: number,
) {
  const out: ObjectInfo[] = [];
  for (const p of prefixes) {
    for await (const o of store.list(p)) {
      if (olderThanMs === null || now - o.lastModified > olderThanMs) out.push(o);
    }
  }
  return out.sort((a, b) => (a.key < b.key ? -1 : 1));
}

/** Chunks whose previous chunk (by the previous chain key in their header) is not in the store. */
async function orphans(store: SnapshotStore, objects: ObjectInfo[]): Promise<ObjectInfo[]> {
  const present = new Set(objects.map((o) => o.key));
  const out: ObjectInfo[] = [];
  for (const o of objects) {
    if (!o.key.startsWith(SNAPSHOT_KEY_ROOT)) continue;
    try {
      const header = await parseSnapshotHeader(
        await store.get(o.key, { offset: 0, length: Math.min(SNAPSHOT_HEADER_BYTES, o.size) }),
      );
      if (header.previousKey === null) continue;
      const dir = o.key.slice(0, o.key.lastIndexOf("/") + 1);
      const prev = `${dir}${toHex(header.previousKey)}`;
      if (!present.has(prev) && (await store.head(prev)) === null) out.push(o);
    } catch {
      out.push(o); // unreadable header: it can never be restored either
    }
  }
  return out;
}

export const command: Command = {
  usage,
  async run(argv, io) {
    const { values, positionals } = parseCommandArgs(argv, {
      store: { type: "string" },
      "s3-endpoint": { type: "string" },
      "s3-path-style": { type: "boolean" },
      prefix: { type: "string" },
      "older-than": { type: "string" },
      orphans: { type: "boolean" },
      "dry-run": { type: "boolean" },
      json: { type: "boolean" },
    });
    const [verb, ...keys] = positionals;
    if (verb !== "ls" && verb !== "rm" && verb !== "gc") {
      throw new InvalidInputError(`expected ls, rm or gc, got '${verb ?? ""}' (see --help)`);
    }
    const env = { ...io.env };
    if (values["s3-endpoint"] !== undefined) env.ULTRALONG_S3_ENDPOINT = values["s3-endpoint"];
    if (values["s3-path-style"]) env.ULTRALONG_S3_PATH_STYLE = "1";
    const store = openStore(values.store, { env });
    const now = Date.now();
    const olderThan =
      values["older-than"] !== undefined
        ? parseDuration(values["older-than"])
        : verb === "gc"
          ? 7 * UNITS.d
          : null;
    const prefix = values.prefix;

    if (verb === "ls") {
      const objects = await collect(store, [prefix ?? ""], olderThan, now);
      let total = 0;
      for (const o of objects) {
        total += o.size;
        io.stdout.write(
          values.json
            ? `${JSON.stringify(o)}\n`
            : `${human(o.size).padStart(10)}  ${age(now - o.lastModified).padStart(4)}  ${o.key}\n`,
        );
      }
      if (!values.json)
        io.stdout.write(`${objects.length} objects, ${human(total)} in ${store.name}\n`);
      return 0;
    }

    let doomed: ObjectInfo[];
    if (verb === "rm") {
      if (keys.length > 0 && prefix !== undefined) {
        throw new InvalidInputError("give KEY... or --prefix, not both");
      }
      if (keys.length === 0 && prefix === undefined) {
        throw new InvalidInputError(
          "rm needs KEY... or --prefix (use --prefix '' to remove everything)",
        );
      }
      if (keys.length > 0) {
        doomed = [];
        for (const k of keys) {
          const info = await store.head(k);
          if (info && (olderThan === null || now - info.lastModified > olderThan))
            doomed.push(info);
          else if (!info) io.stderr.write(`ultralong snapshots: ${k}: not found\n`);
        }
      } else {
        doomed = await collect(store, [prefix!], olderThan, now);
      }
    } else {
      const roots = prefix !== undefined ? [prefix] : [SNAPSHOT_KEY_ROOT, QUARANTINE_ROOT];
      // One listing: the old objects, and with --orphans the rest checked for a missing parent.
      const all = await collect(store, roots, null, now);
      doomed = all.filter((o) => olderThan === null || now - o.lastModified > olderThan);
      if (values.orphans) {
        const chosen = new Set(doomed.map((o) => o.key));
        const left = all.filter((o) => !chosen.has(o.key));
        for (const o of await orphans(store, left)) doomed.push(o);
      }
      // The replay ledger's nonces (core/protocol/nonce-ledger.ts) matter for a minute; S3
      // expires them by a lifecycle rule, a directory store here.
      if (prefix === undefined)
        doomed.push(...(await collect(store, [NONCE_PREFIX], olderThan, now)));
    }
    let bytes = 0;
    for (const o of doomed) {
      if (!values["dry-run"]) await store.delete(o.key);
      bytes += o.size;
      io.stdout.write(`${values["dry-run"] ? "would delete" : "deleted"} ${o.key}\n`);
    }
    io.stdout.write(
      `${values["dry-run"] ? "would delete" : "deleted"} ${doomed.length} objects, ${human(bytes)} from ${store.name}\n`,
    );
    return 0;
  },
};
