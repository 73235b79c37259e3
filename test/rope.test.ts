// computeRope against fixtures written by the independent float64 PyTorch script
// test/reference/rope_reference.py (one per rope type and setting, UltraLong's yarn 128/256/512
// included), and the committed fixtures against a fresh run of that script when torch is here.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../core/model/config.ts";
import {
  computeRope,
  ropeContextLength,
  ropeCosSin,
  rotaryDim,
  yarnGetMscale,
} from "../core/model/rope.ts";
import { haveTorch, TORCH_PYTHON, tool } from "./support/tools.ts";

const FIXTURES = "test/fixtures/rope";

interface RopeFixture {
  name: string;
  config: Record<string, unknown>;
  seq_len: number | null;
  inv_freq: number[];
  attention_scaling: number;
  positions: number[];
  cos: number[][];
  sin: number[][];
}

function load(dir: string): RopeFixture[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .sort()
    .map((f) => JSON.parse(readFileSync(join(dir, f), "utf8")) as RopeFixture);
}

const fixtures = load(FIXTURES);

// Tolerances. Both sides compute in float64 from the same formulas but with different pow/exp
// implementations (V8 vs glibc through torch) and operation order (1/b^x vs b^-x, theta/factor vs
// 1/(factor*b^x)), so values agree to a few ulp: 1e-13 relative leaves 2-3 orders of headroom and
// still catches any formula slip (the smallest real effect, a 0.001 ramp nudge, is ~1e-4).
// cos/sin at position p inherit the invFreq ulp times the angle p*invFreq (<= 4.2e6 rad here):
// 4e6 * 1e-15 = 4e-9, so 1e-8 absolute.
const REL_INV_FREQ = 1e-13;
const ABS_COS_SIN = 1e-8;

function expectClose(actual: number, expected: number, rel: number, what: string) {
  const err = Math.abs(actual - expected) / Math.max(Math.abs(expected), Number.MIN_VALUE);
  if (!(err <= rel)) throw new Error(`${what}: ${actual} vs ${expected} (rel err ${err})`);
}

describe("computeRope matches the PyTorch reference fixtures", () => {
  it("has a fixture for every rope type, including UltraLong's yarn 128/256/512", () => {
    const names = fixtures.map((f) => f.name);
    for (const n of ["yarn_ultralong_1m", "yarn_ultralong_2m", "yarn_ultralong_4m", "llama3_31"]) {
      expect(names).toContain(n);
    }
    const types = new Set(fixtures.map((f) => parseConfig(JSON.stringify(f.config), f.name)));
    const ropeTypes = new Set([...types].map((c) => c.ropeScaling.ropeType));
    expect([...ropeTypes].sort()).toEqual(["default", "dynamic", "linear", "llama3", "yarn"]);
  });

  for (const fx of fixtures) {
    it(fx.name, () => {
      const config = parseConfig(JSON.stringify(fx.config), `${fx.name}.json`);
      const rope = computeRope(config, fx.seq_len === null ? {} : { seqLen: fx.seq_len });
      expect(rope.invFreq.length).toBe(fx.inv_freq.length);
      expect(rope.invFreq.length).toBe(rotaryDim(config) / 2);
      fx.inv_freq.forEach((v, i) => {
        expectClose(rope.invFreq[i], v, REL_INV_FREQ, `${fx.name} invFreq[${i}]`);
      });
      expectClose(rope.attentionScaling, fx.attention_scaling, 1e-15, `${fx.name} scaling`);

      const cos = new Float64Array(rope.invFreq.length);
      const sin = new Float64Array(rope.invFreq.length);
      fx.positions.forEach((p, k) => {
        ropeCosSin(rope, p, cos, sin);
        for (let i = 0; i < cos.length; i++) {
          expect(Math.abs(cos[i] - fx.cos[k][i])).toBeLessThanOrEqual(ABS_COS_SIN);
          expect(Math.abs(sin[i] - fx.sin[k][i])).toBeLessThanOrEqual(ABS_COS_SIN);
        }
      });
    });
  }
});

describe("rope properties", () => {
  const fixture = (name: string) => {
    const fx = fixtures.find((f) => f.name === name);
    if (!fx) throw new Error(`fixture ${name} missing`);
    return parseConfig(JSON.stringify(fx.config), name);
  };

  it("yarn keeps the fastest channels and divides the slowest by the factor", () => {
    const base = computeRope({
      ...fixture("yarn_ultralong_1m"),
      ropeScaling: { ropeType: "default" },
    });
    const yarn = computeRope(fixture("yarn_ultralong_1m"));
    const n = yarn.invFreq.length;
    expect(yarn.invFreq[0]).toBe(base.invFreq[0]);
    expectClose(yarn.invFreq[n - 1], base.invFreq[n - 1] / 128, 1e-15, "slowest");
    // temperature 0.1 ln(128) + 1
    expect(yarn.attentionScaling).toBeCloseTo(1 + 0.1 * Math.log(128), 15);
    expect(yarnGetMscale(1)).toBe(1);
  });

  it("the llama3 keys some yarn configs carry do not change yarn", () => {
    const a = computeRope(fixture("yarn_ultralong_1m"));
    const b = computeRope(fixture("yarn_ultralong_1m_llama3_keys"));
    expect(Array.from(b.invFreq)).toEqual(Array.from(a.invFreq));
  });

  it("dynamic frequencies change only past max_position_embeddings", () => {
    const c = fixture("dynamic_f2_init");
    const init = computeRope(c);
    expect(Array.from(computeRope(c, { seqLen: 1000 }).invFreq)).toEqual(Array.from(init.invFreq));
    expect(computeRope(c, { seqLen: 10000 }).invFreq[5]).toBeLessThan(init.invFreq[5]);
  });

  it("reports the context each setting is built for", () => {
    expect(ropeContextLength(fixture("yarn_ultralong_1m"))).toBe(1048576);
    expect(ropeContextLength(fixture("yarn_ultralong_4m"))).toBe(4194304);
    expect(ropeContextLength(fixture("yarn_no_original"))).toBe(4 * 4096);
    expect(ropeContextLength(fixture("llama3_31"))).toBe(131072);
    expect(ropeContextLength(fixture("default_hd64_theta10k"))).toBe(4096);
  });
});

describe.skipIf(!tool("torch", haveTorch(), "re-running the rope reference script"))(
  "committed rope fixtures are what test/reference/rope_reference.py writes",
  () => {
    it("regenerates identical fixtures", () => {
      const dir = mkdtempSync(join(tmpdir(), "rope-ref-"));
      try {
        const r = spawnSync(TORCH_PYTHON, ["test/reference/rope_reference.py", dir], {
          encoding: "utf8",
          timeout: 120_000,
        });
        expect(r.stderr).toBe("");
        expect(r.status).toBe(0);
        const fresh = load(dir);
        expect(fresh.map((f) => f.name)).toEqual(fixtures.map((f) => f.name));
        // Same machine class, same script: the JSON is identical, not just close.
        expect(fresh).toEqual(fixtures);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  },
);
