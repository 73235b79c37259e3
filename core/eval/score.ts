// RULER's string match: the share of the answers that appear in the output, case ignored. A single
// needle scores 0 or 1; "all four numbers" scores in quarters.

export function scoreOutput(output: string, answers: readonly string[]): number {
  if (answers.length === 0) return 0;
  const text = output.toLowerCase();
  return answers.filter((a) => text.includes(a.toLowerCase())).length / answers.length;
}
