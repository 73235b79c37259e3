// The S3 SnapshotStore against a real s3rver, directly and through the fault proxy.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NotFoundError } from "../core/errors.ts";
import { S3Store, type S3StoreOptions } from "../core/kv/s3-store.ts";
import { openStore } from "../core/node/snapshot-dir.ts";
import {
  type FaultProxy,
  firstN,
  randomFaults,
  startS3BehindProxy,
} from "./harness/fault-proxy.ts";
import { type S3Server, storeOptions } from "./harness/s3.ts";

const MiB = 1 << 20;
let s3: S3Server;
let proxy: FaultProxy;

function bytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function store(endpoint: string, extra: Partial<S3StoreOptions> = {}): S3Store {
  return new S3Store({
    ...storeOptions(s3, endpoint),
    prefix: "t/",
    partBytes: 5 * MiB,
    multipartThresholdBytes: 6 * MiB,
    sleep: async () => {},
    retry: { attempts: 6 },
    ...extra,
  });
}

let stop: () => Promise<void>;
beforeAll(async () => {
  ({ s3, proxy, close: stop } = await startS3BehindProxy());
});
afterAll(() => stop?.());

describe("S3Store on s3rver", () => {
  it("puts, gets whole and ranged, heads, lists, moves and deletes", async () => {
    const st = store(s3.endpoint);
    const small = bytes(1000, 1);
    await st.put("a/one", small);
    expect(await st.get("a/one")).toEqual(small);
    expect(await st.get("a/one", { offset: 10, length: 20 })).toEqual(small.subarray(10, 30));
    expect((await st.head("a/one"))?.size).toBe(1000);
    expect(await st.head("a/none")).toBeNull();
    await expect(st.get("a/none")).rejects.toBeInstanceOf(NotFoundError);
    await st.put("a/two", bytes(10, 2));
    await st.put("b/three", bytes(10, 3));
    const keys: string[] = [];
    for await (const o of st.list("a/")) keys.push(o.key);
    expect(keys.sort()).toEqual(["a/one", "a/two"]);
    await st.move("a/two", "q/a/two");
    expect(await st.head("a/two")).toBeNull();
    expect(await st.get("q/a/two")).toEqual(bytes(10, 2));
    await st.delete("q/a/two");
    await st.delete("q/a/two");
    expect(await st.head("q/a/two")).toBeNull();
    await expect(st.put("../escape", small)).rejects.toThrow(/invalid snapshot key/);
  });

  it("uploads large objects in parts and reads them back with parallel ranged GETs", async () => {
    const st = store(s3.endpoint);
    const big = bytes(13 * MiB + 123, 4);
    await st.put("big/x", big);
    expect((await st.head("big/x"))?.size).toBe(big.length);
    const back = await st.get("big/x");
    expect(back.length).toBe(big.length);
    expect(Buffer.compare(back, big)).toBe(0);
    const mid = await st.get("big/x", { offset: 4 * MiB, length: 7 * MiB });
    expect(Buffer.compare(mid, big.subarray(4 * MiB, 11 * MiB))).toBe(0);
  });

  it("openStore reads endpoint and path style from the environment", async () => {
    const st = openStore(`s3://${s3.bucket}/env-prefix`, { env: s3.env });
    expect(st.name).toBe(`s3://${s3.bucket}/env-prefix/`);
    await st.put("k", bytes(5, 5));
    expect(await st.get("k")).toEqual(bytes(5, 5));
    const direct = store(s3.endpoint, { prefix: "env-prefix/" });
    expect(await direct.get("k")).toEqual(bytes(5, 5));
  });
});

describe("S3Store through the fault proxy", () => {
  const cases: [string, Parameters<typeof firstN>[1]][] = [
    ["5xx", { kind: "status", status: 500 }],
    ["503 SlowDown", { kind: "throttle" }],
    ["connection reset before the response", { kind: "reset" }],
    ["connection reset mid-body", { kind: "reset-mid-body" }],
    ["truncated body", { kind: "truncate" }],
    ["slow response", { kind: "slow", delayMs: 40, pieces: 4 }],
  ];
  for (const [name, fault] of cases) {
    it(`survives ${name} on PUT and GET`, async () => {
      const st = store(proxy.endpoint);
      const data = bytes(7 * MiB + 5, name.length);
      const key = `faults/${name.replace(/[^a-z0-9]+/gi, "-")}`;
      const before = { ...proxy.injected };
      proxy.setSchedule(firstN(2, fault));
      await st.put(key, data);
      proxy.setSchedule(firstN(2, fault, (r) => r.method === "GET"));
      const back = await st.get(key);
      proxy.setSchedule(() => null);
      expect(Buffer.compare(back, data)).toBe(0);
      const kind = Object.keys(proxy.injected).find(
        (k) => k.startsWith(fault.kind) || k === fault.kind,
      );
      expect(kind && proxy.injected[kind] - (before[kind] ?? 0)).toBeGreaterThan(0);
    });
  }

  it("a random mix of faults on many operations never yields wrong bytes", async () => {
    const st = store(proxy.endpoint, { retry: { attempts: 8 } });
    const total = () => Object.values(proxy.injected).reduce((a, b) => a + b, 0);
    const before = total();
    proxy.setSchedule(
      randomFaults({
        seed: 7,
        rate: 0.3,
        faults: [
          { kind: "status", status: 503 },
          { kind: "throttle" },
          { kind: "reset" },
          { kind: "reset-mid-body" },
          { kind: "truncate" },
          { kind: "slow", delayMs: 10 },
        ],
      }),
    );
    try {
      for (let i = 0; i < 8; i++) {
        const data = bytes(200_000 + i * 7919, 100 + i);
        await st.put(`mix/${i}`, data);
        expect(Buffer.compare(await st.get(`mix/${i}`), data)).toBe(0);
      }
    } finally {
      proxy.setSchedule(() => null);
    }
    // The mix did hit: at a rate of 0.3 over these requests, faults were injected.
    expect(total() - before).toBeGreaterThan(0);
  });
});
