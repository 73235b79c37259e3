import { describe, expect, it } from "vitest";
import {
  applyPenalties,
  argmax,
  createRng,
  drawTempered,
  logSumExp,
  PenaltyState,
  Sampler,
  type SamplingOptions,
  survivors,
  topLogprobs,
  validateSamplingOptions,
} from "../core/engine/sampling.ts";
import { InvalidInputError } from "../core/errors.ts";

/** Logits of a given probability vector (log p), as f32. */
function logitsOf(probs: number[]): Float32Array {
  return Float32Array.from(probs, (p) => Math.log(p));
}

/** Random logits with a realistic spread (a few likely tokens, a long tail). */
function randomLogits(n: number, seed: number, spread = 4): Float32Array {
  const rng = createRng(seed);
  return Float32Array.from({ length: n }, () => {
    const u = rng();
    return spread * Math.log(u / (1 - u) + 1e-9);
  });
}

/**
 * Brute force, straight from the definitions (vLLM's order: min-p, top-k, top-p), for comparison
 * with the histogram implementation: sort everything, cut.
 */
function bruteSurvivors(scaled: Float32Array, o: SamplingOptions): Set<number> {
  const ids = Array.from(scaled.keys()).sort((a, b) => scaled[b] - scaled[a] || a - b);
  const max = scaled[ids[0]];
  const e = (i: number) => Math.exp(scaled[i] - max);
  let kept = ids;
  if (o.minP) kept = kept.filter((i) => e(i) >= (o.minP ?? 0));
  if (o.topK && kept.length > o.topK) {
    const kth = scaled[kept[o.topK - 1]];
    kept = kept.filter((i) => scaled[i] >= kth);
  }
  if (o.topP !== undefined && o.topP < 1) {
    const z = kept.reduce((a, i) => a + e(i), 0);
    const out: number[] = [];
    let before = 0;
    for (const i of kept) {
      if (before >= o.topP * z) break;
      out.push(i);
      before += e(i);
    }
    kept = out;
  }
  return new Set(kept);
}

describe("createRng", () => {
  it("gives the same stream for the same seed and a different one for another seed", () => {
    const take = (seed: number) => {
      const r = createRng(seed);
      return Array.from({ length: 8 }, () => r());
    };
    expect(take(42)).toEqual(take(42));
    expect(take(42)).not.toEqual(take(43));
    // Seeds differing only above bit 32 still give different streams.
    expect(take(1)).not.toEqual(take(1 + 2 ** 32));
  });

  it("draws uniformly in [0, 1)", () => {
    const r = createRng(7);
    const bins = new Array(10).fill(0);
    const n = 100_000;
    for (let i = 0; i < n; i++) {
      const u = r();
      expect(u >= 0 && u < 1).toBe(true);
      bins[Math.floor(u * 10)]++;
    }
    // Each bin ~ Binomial(n, 0.1): sd = 95; 6 sd is a bound a correct generator never crosses here.
    for (const b of bins) expect(Math.abs(b - n / 10)).toBeLessThan(6 * 95);
  });
});

describe("survivors", () => {
  it("top-p keeps the minimal nucleus", () => {
    const scaled = logitsOf([0.5, 0.3, 0.15, 0.05]);
    const kept = (topP: number) => Array.from(survivors(scaled, { topP }).ids).sort();
    // The mass before token 2 is 0.8: below 0.81 it is needed, at 0.8 it is not.
    expect(kept(0.79)).toEqual([0, 1]);
    expect(kept(0.81)).toEqual([0, 1, 2]);
    expect(kept(0.4)).toEqual([0]);
    expect(kept(0.999)).toEqual([0, 1, 2, 3]);
  });

  it("min-p keeps p >= min_p * p_max", () => {
    const scaled = logitsOf([0.4, 0.3, 0.2, 0.08, 0.02]);
    const kept = (minP: number) => Array.from(survivors(scaled, { minP }).ids).sort();
    expect(kept(0.49)).toEqual([0, 1, 2]); // threshold 0.196
    expect(kept(0.51)).toEqual([0, 1]);
    expect(kept(0.049)).toEqual([0, 1, 2, 3, 4]); // threshold 0.0196
  });

  it("top-k keeps the k most likely, and ties with the k-th", () => {
    const scaled = Float32Array.from([1, 3, 2, 2, 0, 2]);
    expect(Array.from(survivors(scaled, { topK: 1 }).ids)).toEqual([1]);
    expect(Array.from(survivors(scaled, { topK: 2 }).ids)).toEqual([1, 2, 3, 5]);
    expect(Array.from(survivors(scaled, { topK: 5 }).ids)).toEqual([1, 2, 3, 5, 0]);
  });

  it("matches a brute-force sort on random logits for every filter combination", () => {
    const combos: SamplingOptions[] = [
      { topP: 0.9 },
      { topP: 0.5 },
      { topP: 0.99 },
      { topK: 40 },
      { topK: 1000 },
      { topK: 5000 }, // above the heap's 1024: the histogram's top-k
      { topK: 1024, minP: 0.3 },
      { minP: 0.05 },
      { minP: 0.2, topP: 0.8 },
      { topK: 50, topP: 0.7 },
      { minP: 0.01, topK: 200, topP: 0.95 },
    ];
    const rising = Float32Array.from({ length: 20_000 }, (_, i) => i / 1000);
    for (const [seed, spread] of [
      [1, 4],
      [2, 0.3],
      [3, 12],
      [4, 0], // rising logits: every id enters top-k's heap, which hands over to the histogram
    ]) {
      const scaled = spread === 0 ? rising : randomLogits(20_000, seed, spread);
      for (const o of combos) {
        const got = survivors(scaled, o);
        expect(new Set(got.ids), `${JSON.stringify(o)} spread ${spread}`).toEqual(
          bruteSurvivors(scaled, o),
        );
        const max = Math.max(...scaled);
        got.ids.forEach((id, i) => {
          expect(got.weights[i]).toBeCloseTo(Math.exp(scaled[id] - max), 12);
        });
      }
    }
  });
});

describe("penalties", () => {
  it("apply repetition to prompt and output tokens, presence and frequency to output only", () => {
    const state = new PenaltyState(6);
    state.addPrompt([0, 1]);
    state.addOutput(1);
    state.addOutput(2);
    state.addOutput(2);
    const logits = Float32Array.from([2, -2, 1, 3, -1, 0.5]);
    applyPenalties(logits, state, {
      repetitionPenalty: 2,
      presencePenalty: 0.5,
      frequencyPenalty: 0.25,
    });
    expect(logits[0]).toBeCloseTo(2 / 2); // prompt only: repetition
    expect(logits[1]).toBeCloseTo(-2 * 2 - (1 * 0.25 + 0.5)); // prompt and output once
    expect(logits[2]).toBeCloseTo(1 / 2 - (2 * 0.25 + 0.5)); // output twice
    expect(Array.from(logits.subarray(3))).toEqual([3, -1, 0.5]); // never seen: untouched
  });

  it("steer greedy decoding away from repeated tokens", () => {
    const logits = Float32Array.from([5, 4.9, 0]);
    const plain = new Sampler({ temperature: 0 }, 3);
    expect(plain.sample(logits).id).toBe(0);
    expect(plain.sample(logits).id).toBe(0);
    const penalised = new Sampler({ temperature: 0, frequencyPenalty: 0.5 }, 3);
    expect(penalised.sample(logits).id).toBe(0);
    expect(penalised.sample(logits).id).toBe(1); // 5 - 0.5 < 4.9
    const repetition = new Sampler({ temperature: 0, repetitionPenalty: 1.1 }, 3);
    repetition.addPrompt([0]);
    expect(repetition.sample(logits).id).toBe(1); // 5 / 1.1 < 4.9
  });
});

describe("Sampler", () => {
  const V = 5000;
  const logits = randomLogits(V, 11, 2);

  it("is greedy at temperature 0, ties to the lowest id", () => {
    const s = new Sampler({ temperature: 0 }, 4);
    expect(s.sample(Float32Array.from([1, 3, 3, 2])).id).toBe(1);
  });

  it("gives the same tokens for the same seed and different ones for another", () => {
    const run = (seed: number) => {
      const s = new Sampler({ temperature: 1, topP: 0.95, seed }, V);
      return Array.from({ length: 30 }, () => s.sample(logits).id);
    };
    expect(run(5)).toEqual(run(5));
    expect(run(5)).not.toEqual(run(6));
  });

  it("uses an injected RNG instead of the seed", () => {
    const draws = [0, 0.999999];
    const s = new Sampler({ temperature: 1 }, 3, () => draws.shift() ?? 0);
    const l = logitsOf([0.2, 0.5, 0.3]);
    expect(s.sample(l).id).toBe(0); // u = 0: first id in id order
    expect(s.sample(l).id).toBe(2); // u ~ 1: last
    expect(draws).toEqual([]); // one draw a token
  });

  it("draws tokens with the probabilities softmax(logits / T) gives", () => {
    const probs = [0.5, 0.25, 0.15, 0.1];
    const l = logitsOf(probs);
    const T = 2;
    const tempered = probs.map((p) => p ** (1 / T));
    const z = tempered.reduce((a, b) => a + b);
    const s = new Sampler({ temperature: T, seed: 3 }, 4);
    const n = 40_000;
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < n; i++) counts[s.sample(l).id]++;
    tempered.forEach((t, i) => {
      const p = t / z;
      const sd = Math.sqrt(n * p * (1 - p));
      expect(Math.abs(counts[i] - n * p)).toBeLessThan(5 * sd);
    });
  });

  it("never draws outside the nucleus, and renormalises inside it", () => {
    const probs = [0.4, 0.3, 0.2, 0.1];
    const s = new Sampler({ temperature: 1, topP: 0.6, seed: 9 }, 4);
    const n = 20_000;
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < n; i++) counts[s.sample(logitsOf(probs)).id]++;
    expect(counts[2] + counts[3]).toBe(0);
    const p0 = 0.4 / 0.7;
    expect(Math.abs(counts[0] - n * p0)).toBeLessThan(5 * Math.sqrt(n * p0 * (1 - p0)));
  });

  it("reports raw logprobs that normalise, with the top-N most likely first", () => {
    const s = new Sampler(
      { temperature: 0.7, topK: 20, repetitionPenalty: 1.3, seed: 1, logprobs: 5 },
      V,
    );
    s.addPrompt([1, 2, 3]);
    const lse = logSumExp(logits);
    let total = 0;
    for (let i = 0; i < V; i++) total += Math.exp(logits[i] - lse);
    expect(total).toBeCloseTo(1, 9);
    const out = s.sample(logits);
    // Raw: the model's log-softmax, whatever the penalties and temperature.
    expect(out.logprob).toBeCloseTo(logits[out.id] - lse, 9);
    const byValue = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b);
    expect(out.top?.map((t) => t.id)).toEqual(byValue.slice(0, 5));
    for (const t of out.top ?? []) expect(t.logprob).toBeCloseTo(logits[t.id] - lse, 9);
    expect(topLogprobs(logits, 0, lse)).toEqual([]);
  });

  it("refuses out-of-range options with InvalidInputError", () => {
    const bad: SamplingOptions[] = [
      { temperature: -1 },
      { topP: 0 },
      { topP: 1.5 },
      { topK: -1 },
      { topK: 2.5 },
      { minP: 2 },
      { repetitionPenalty: 0 },
      { presencePenalty: 3 },
      { frequencyPenalty: Number.NaN },
      { seed: 1.5 },
      { logprobs: 21 },
    ];
    for (const o of bad) {
      expect(() => validateSamplingOptions(o), JSON.stringify(o)).toThrow(InvalidInputError);
    }
    expect(() => validateSamplingOptions({ temperature: 0, topP: 1, topK: 0 })).not.toThrow();
  });
});

describe("Sampler on rows with NaN, infinities and huge logits", () => {
  it("always returns an id of the row; never NaN or -Infinity where another exists; +Infinity wins", () => {
    const rng = createRng(17);
    const specials = [Number.NaN, Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY, 1e34, -1e34];
    const temperatures = [5e-6, 1e-5, 0.5, 1, 2];
    for (let trial = 0; trial < 3000; trial++) {
      const n = 1 + Math.floor(rng() * 9);
      const l = Float32Array.from({ length: n }, () =>
        rng() < 0.3 ? specials[Math.floor(rng() * specials.length)] : rng() * 4,
      );
      const o: SamplingOptions = {
        temperature: temperatures[Math.floor(rng() * temperatures.length)],
        topK: [0, 1, 3, 2000][Math.floor(rng() * 4)],
        topP: [1, 0.5, 0.99][Math.floor(rng() * 3)],
        minP: [0, 0.1][Math.floor(rng() * 2)],
        seed: trial,
        logprobs: trial % 5 === 0 ? 2 : undefined,
      };
      const id = new Sampler(o, n).sample(l).id;
      const what = `${JSON.stringify(o)} on ${Array.from(l)}: ${id}`;
      expect(Number.isInteger(id) && id >= 0 && id < n, what).toBe(true);
      const real = Array.from(l).some((x) => !Number.isNaN(x) && x > Number.NEGATIVE_INFINITY);
      if (real) expect(Number.isNaN(l[id]) || l[id] === Number.NEGATIVE_INFINITY, what).toBe(false);
      if (l.includes(Number.POSITIVE_INFINITY)) expect(l[id], what).toBe(Number.POSITIVE_INFINITY);
    }
  });
});

describe("argmax", () => {
  // A plain scan: the lowest index of the largest value that is not NaN; 0 when all are NaN.
  const scan = (v: Float32Array) => {
    let best = -1;
    for (let i = 0; i < v.length; i++) {
      if (!Number.isNaN(v[i]) && (best < 0 || v[i] > v[best])) best = i;
    }
    return Math.max(best, 0);
  };
  it("equals a plain scan on ties, NaN, -inf and every length up to 41", () => {
    const rng = createRng(11);
    const specials = [Number.NaN, Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY, 0, 1];
    for (let n = 0; n <= 41; n++) {
      for (let trial = 0; trial < 200; trial++) {
        const v = new Float32Array(n);
        for (let i = 0; i < n; i++) {
          const u = rng();
          // Few distinct values (ties everywhere), sometimes a special one.
          v[i] = u < 0.15 ? specials[Math.floor(rng() * specials.length)] : Math.floor(rng() * 4);
        }
        expect(argmax(v), `n ${n}: ${Array.from(v)}`).toBe(scan(v));
      }
    }
    const long = Float32Array.from({ length: 128256 }, () => rng());
    expect(argmax(long)).toBe(scan(long));
  });
});

describe("drawTempered (the plain temperature draw)", () => {
  const sums = (n: number) => new Float64Array(Math.ceil(n / 1024));

  it("draws softmax(logits / T) over blocks and temperatures", () => {
    // 2,065 ids over three blocks of weight sums; weights e^(-g / (10 T)) for g = id mod 40.
    // Grouped by g, the counts pass a chi-square test at p = 1e-4 (39 degrees of freedom: 72.1).
    const n = 2065;
    const l = Float32Array.from({ length: n }, (_, i) => -(i % 40) / 10);
    for (const T of [1, 0.5]) {
      const rng = createRng(7);
      const buf = sums(n);
      const draws = 100_000;
      const counts = new Array(40).fill(0);
      for (let k = 0; k < draws; k++) counts[drawTempered(l, T, rng, buf) % 40]++;
      const w = Array.from(l, (x) => Math.exp(x / T));
      const z = w.reduce((a, b) => a + b);
      const expected = new Array(40).fill(0);
      w.forEach((x, i) => {
        expected[i % 40] += (draws * x) / z;
      });
      const chi2 = counts.reduce((a, c, g) => a + (c - expected[g]) ** 2 / expected[g], 0);
      expect(chi2).toBeLessThan(72.1);
    }
  });

  it("draws min-p's survivors only, by softmax among them", () => {
    // Weights e^(-g / 10): min-p 0.35 keeps g <= 10 (e^-1 = 0.368). Chi-square over the 11
    // survivors' groups at p = 1e-4 (10 degrees of freedom: 35.56).
    const n = 2065;
    const l = Float32Array.from({ length: n }, (_, i) => -(i % 40) / 10);
    const rng = createRng(11);
    const buf = sums(n);
    const draws = 50_000;
    const counts = new Array(40).fill(0);
    for (let k = 0; k < draws; k++) counts[drawTempered(l, 1, rng, buf, 0.35) % 40]++;
    expect(counts.slice(11).every((c) => c === 0)).toBe(true);
    const w = Array.from(l, (x, i) => (i % 40 <= 10 ? Math.exp(x) : 0));
    const z = w.reduce((a, b) => a + b);
    const expected = new Array(11).fill(0);
    w.forEach((x, i) => {
      if (x > 0) expected[i % 40] += (draws * x) / z;
    });
    const chi2 = expected.reduce((a, e, g) => a + (counts[g] - e) ** 2 / e, 0);
    expect(chi2).toBeLessThan(35.56);
  });

  it("draws the same ids from logits that differ in their last bits", () => {
    // A batched step's logits can differ from the same sequence's alone in the last bits (the
    // GEMMs sum in another order): a seeded answer should not change with them. 600 rows of
    // 16,384 logits (sd 1), each drawn as is and moved by up to 4e-6 (a few ulps), with the same
    // seed. Over continuous weights a draw moves only when its target lies within the CDF's
    // change of an id's edge: none moved. A rejection draw by a step-function bound of the weight
    // (tried, and dropped for this) moved 4 of the first 300 rows, since a whole step's jump of an
    // id before the target shifts the CDF; under serve with 16 sequences, 6 of 16 seeded answers
    // then differed from the question asked alone.
    const V = 16384;
    const rng = createRng(21);
    const noise = createRng(3);
    const buf = sums(V);
    let moved = 0;
    for (let row = 0; row < 600; row++) {
      const a = Float32Array.from({ length: V }, () => {
        const r = Math.sqrt(-2 * Math.log(1 - rng()));
        return r * Math.cos(2 * Math.PI * rng());
      });
      const b = a.map((x) => x + (noise() - 0.5) * 8e-6);
      const seed = row + 1;
      if (drawTempered(a, 1, createRng(seed), buf) !== drawTempered(b, 1, createRng(seed), buf)) {
        moved++;
      }
    }
    expect(moved).toBeLessThanOrEqual(2);
  });

  it("takes the last id with weight when rounding carries the target past every sum", () => {
    const rng = createRng(39);
    const l = Float32Array.from({ length: 8200 }, (_, i) =>
      i < 8192 ? -rng() : Number.NEGATIVE_INFINITY,
    );
    expect(drawTempered(l, 1, () => 1 - 2 ** -53, sums(l.length))).toBe(8191);
  });

  it("never draws NaN or -Infinity, and says where it cannot draw", () => {
    const l = Float32Array.from([Number.NaN, -1, Number.NEGATIVE_INFINITY, -1.5, Number.NaN]);
    const rng = createRng(3);
    for (let k = 0; k < 2000; k++) expect([1, 3]).toContain(drawTempered(l, 1, rng, sums(5)));
    const nan = Float32Array.from([Number.NaN, Number.NaN]);
    expect(drawTempered(nan, 1, rng, sums(2))).toBe(-1);
    expect(drawTempered(Float32Array.from([0, 1]), 1e-320, rng, sums(2))).toBe(-1);
    expect(drawTempered(Float32Array.from([0, Number.POSITIVE_INFINITY]), 1, rng, sums(2))).toBe(
      -1,
    );
  });

  it("is greedy below a temperature of 1e-5, with any filter (l / T would overflow)", () => {
    const l = Float32Array.from([0, 3, 1, 2]);
    for (const temperature of [1e-40, 1e-320, 9e-6]) {
      for (const o of [{}, { topP: 0.9 }, { topK: 3 }, { minP: 0.1 }]) {
        const s = new Sampler({ temperature, ...o, seed: 1 }, 4);
        for (let k = 0; k < 5; k++) expect(s.sample(l).id).toBe(1);
      }
    }
  });
});
