// Score -> colour for the heatmap: red at 0, yellow at 0.5, green at 1 (the model card's scale,
// ColorBrewer's RdYlGn ends), interpolated in sRGB; text on a cell is black or white by luminance.

const STOPS: [number, [number, number, number]][] = [
  [0, [215, 48, 39]],
  [0.5, [254, 224, 139]],
  [1, [26, 152, 80]],
];

function rgb(score: number): [number, number, number] {
  const s = Math.min(1, Math.max(0, score));
  for (let i = 1; i < STOPS.length; i++) {
    const [x1, c1] = STOPS[i];
    const [x0, c0] = STOPS[i - 1];
    if (s <= x1) {
      const t = (s - x0) / (x1 - x0);
      return [0, 1, 2].map((k) => Math.round(c0[k] + (c1[k] - c0[k]) * t)) as [
        number,
        number,
        number,
      ];
    }
  }
  return STOPS[STOPS.length - 1][1];
}

export function scoreColour(score: number): string {
  const [r, g, b] = rgb(score);
  return `#${[r, g, b].map((v) => v.toString(16).padStart(2, "0")).join("")}`;
}

/** Black or white, whichever reads better on the score's colour. */
export function textColour(score: number): string {
  const [r, g, b] = rgb(score);
  return 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#111" : "#fff";
}
