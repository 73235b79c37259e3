// A haystack as units (a sentence, or a paragraph of a user's file), each with its text and the
// token ids of its pieces laid end to end. Needles go between units, never inside a word; a trial
// that must hit an exact token count cuts the last unit it uses at a token.

/** Token ids of a text, as the server's /v1/tokenize gives them (no BOS). */
export type Tokenize = (text: string) => Promise<number[]>;

export interface Unit {
  text: string;
  ids: number[];
}

/**
 * Memoized piece tokenization: each distinct piece is tokenized once (a generated haystack of any
 * length has about a hundred distinct pieces).
 */
export class PieceTokens {
  private readonly known = new Map<string, number[] | Promise<number[]>>();
  constructor(private readonly tokenize: Tokenize) {}

  /** Ids of `text`, tokenized once and remembered. */
  get(text: string): number[] | Promise<number[]> {
    let v = this.known.get(text);
    if (v === undefined) {
      const p = this.tokenize(text).then((ids) => {
        this.known.set(text, ids);
        return ids;
      });
      p.catch(() => this.known.delete(text));
      this.known.set(text, p);
      v = p;
    }
    return v;
  }

  /** A unit from its pieces: their texts joined, their ids laid end to end. */
  async unit(pieces: string[]): Promise<Unit> {
    const ids: number[] = [];
    for (const p of pieces) {
      const got = this.get(p);
      for (const id of Array.isArray(got) ? got : await got) ids.push(id);
    }
    return { text: pieces.join(""), ids };
  }
}

/**
 * A growing haystack over an endless stream of units: `ensure(n)` extends it until it holds at
 * least n tokens. Trials of one sample share one stream, so their prompts share its prefix (and
 * the server's KV snapshots of it).
 */
export class HayStream {
  readonly units: Unit[] = [];
  /** Token offset of each unit's start; one more entry than units (the total). */
  readonly offsets: number[] = [0];
  private growing: Promise<void> = Promise.resolve();

  constructor(private readonly next: () => Promise<Unit>) {}

  get tokens(): number {
    return this.offsets[this.offsets.length - 1];
  }

  /** Extends the stream to at least `n` tokens (calls are serialized, so units stay in order). */
  ensure(n: number): Promise<void> {
    this.growing = this.growing.then(async () => {
      while (this.tokens < n) {
        const u = await this.next();
        if (u.ids.length === 0) continue;
        this.units.push(u);
        this.offsets.push(this.tokens + u.ids.length);
      }
    });
    return this.growing;
  }
}
