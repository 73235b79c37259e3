// Results folded into the grids the pictures and tables show: mean score per (length, depth) over
// the chosen tasks and samples (the heatmap), and per (task, length) over depths and samples (the
// RULER bars).

export interface Scored {
  task: string;
  length: number;
  depth: number | null;
  score: number;
  prompt_tokens: number;
  cached_tokens: number | null;
  ttft_ms: number | null;
  total_ms: number;
}

export interface Grid<R extends string | number> {
  rows: R[];
  lengths: number[];
  /** Mean score, or undefined where no trial ran. */
  at(row: R, length: number): number | undefined;
}

function grid<R extends string | number>(
  records: readonly Scored[],
  rowOf: (r: Scored) => R | null,
  rowOrder: (a: R, b: R) => number,
): Grid<R> {
  const sums = new Map<string, { sum: number; n: number }>();
  const rows = new Set<R>();
  const lengths = new Set<number>();
  for (const r of records) {
    const row = rowOf(r);
    if (row === null) continue;
    rows.add(row);
    lengths.add(r.length);
    const k = `${row}|${r.length}`;
    const s = sums.get(k) ?? { sum: 0, n: 0 };
    s.sum += r.score;
    s.n++;
    sums.set(k, s);
  }
  return {
    rows: [...rows].sort(rowOrder),
    lengths: [...lengths].sort((a, b) => a - b),
    at(row, length) {
      const s = sums.get(`${row}|${length}`);
      return s ? s.sum / s.n : undefined;
    },
  };
}

/** Depth (percent, ascending) x length, over the trials that have a depth. */
export function depthGrid(records: readonly Scored[]): Grid<number> {
  return grid(
    records,
    (r) => r.depth,
    (a, b) => a - b,
  );
}

/** Task x length, over every depth; tasks in `order`. */
export function taskGrid(records: readonly Scored[], order: readonly string[]): Grid<string> {
  return grid(
    records,
    (r) => r.task,
    (a, b) => order.indexOf(a) - order.indexOf(b),
  );
}

export interface Totals {
  trials: number;
  promptTokens: number;
  cachedTokens: number;
  /** Mean score over all trials. */
  score: number;
  /** Per length: mean time to first token and mean total, in ms. */
  times: { length: number; ttftMs: number | null; totalMs: number; trials: number }[];
}

export function totals(records: readonly Scored[]): Totals {
  const byLength = new Map<number, Scored[]>();
  for (const r of records) byLength.set(r.length, [...(byLength.get(r.length) ?? []), r]);
  const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
  return {
    trials: records.length,
    promptTokens: records.reduce((n, r) => n + r.prompt_tokens, 0),
    cachedTokens: records.reduce((n, r) => n + (r.cached_tokens ?? 0), 0),
    score: mean(records.map((r) => r.score)) ?? 0,
    times: [...byLength.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([length, rs]) => ({
        length,
        ttftMs: mean(rs.flatMap((r) => (r.ttft_ms === null ? [] : [r.ttft_ms]))),
        totalMs: mean(rs.map((r) => r.total_ms)) ?? 0,
        trials: rs.length,
      })),
  };
}
