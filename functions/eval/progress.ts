// The progress bar on stderr: redrawn in place on a terminal; elsewhere (CI logs) one line each
// tenth of the way, so a log shows the run moving without a line per trial.

import type { TrialRecord } from "./store.ts";

export class Progress {
  private total = 0;
  private finished = 0;
  private prompt = 0;
  private cached = 0;
  private lastTenth = -1;
  private readonly tty: boolean;

  constructor(private readonly out: NodeJS.WritableStream & { isTTY?: boolean }) {
    this.tty = out.isTTY === true;
  }

  start(total: number, already: number): void {
    this.total = total;
    this.finished = already;
    if (already > 0) this.out.write(`${already} of ${total} trials already done: skipping them\n`);
    this.draw("");
  }

  done(r: TrialRecord): void {
    this.finished++;
    this.prompt += r.prompt_tokens;
    this.cached += r.cached_tokens ?? 0;
    const depth = r.depth === null ? "" : ` depth ${r.depth}%`;
    this.draw(`${r.task} ${r.length}${depth}: ${Math.round(r.score * 100)}%`);
  }

  retry(why: string, waitMs: number): void {
    this.line(`retrying after ${why}: waiting ${(waitMs / 1000).toFixed(1)} s`);
  }

  end(): void {
    if (this.tty) this.out.write("\n");
  }

  private line(text: string): void {
    this.out.write(this.tty ? `\r\x1b[2K${text}\n` : `${text}\n`);
  }

  private draw(last: string): void {
    const share = this.total ? this.finished / this.total : 1;
    const width = 30;
    const filled = Math.round(share * width);
    const cachedShare = this.prompt ? Math.round((100 * this.cached) / this.prompt) : 0;
    const text = `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${this.finished}/${this.total} trials, ${cachedShare}% of prompt tokens cached${last ? `  ${last}` : ""}`;
    if (this.tty) {
      this.out.write(`\r\x1b[2K${text}`);
      return;
    }
    const tenth = Math.floor(share * 10);
    if (tenth !== this.lastTenth) {
      this.lastTenth = tenth;
      this.out.write(`${text}\n`);
    }
  }
}
