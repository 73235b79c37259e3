// Stop strings on streamed text, with holdback: text that might be the start of a stop string is
// held until the next piece shows whether it is one, so no part of a stop string is ever emitted
// and the stop string itself is never emitted (OpenAI's and vLLM's default).
//
// Why this is enough: we always hold the LONGEST suffix of the text seen that is a proper prefix
// of some stop string. An occurrence that ends in a new piece and starts earlier must start in a
// suffix that was such a prefix, so it starts inside the held text, where we search.

export interface StopMatch {
  /** Text that is now safe to emit. */
  text: string;
  /** The stop string found (the generation ends); `text` is everything before it. */
  stop?: string;
}

export class StopStringMatcher {
  readonly #stops: string[];
  #held = "";

  /** Empty strings are ignored (they would match everywhere). */
  constructor(stops: readonly string[]) {
    this.#stops = stops.filter((s) => s.length > 0);
  }

  /** The text held back now (a possible start of a stop string). */
  get held(): string {
    return this.#held;
  }

  /** Feeds the next decoded piece. After a match the matcher must not be fed again. */
  push(piece: string): StopMatch {
    const text = this.#held + piece;
    if (this.#stops.length === 0) {
      this.#held = "";
      return { text };
    }
    let at = -1;
    let found: string | undefined;
    for (const stop of this.#stops) {
      const i = text.indexOf(stop);
      if (i >= 0 && (at < 0 || i < at)) {
        at = i;
        found = stop;
      }
    }
    if (found !== undefined) {
      this.#held = "";
      return { text: text.slice(0, at), stop: found };
    }
    let hold = 0;
    for (const stop of this.#stops) {
      for (let k = Math.min(stop.length - 1, text.length); k > hold; k--) {
        if (text.endsWith(stop.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    this.#held = text.slice(text.length - hold);
    return { text: text.slice(0, text.length - hold) };
  }

  /** The generation ended for another reason: release what was held. */
  flush(): string {
    const text = this.#held;
    this.#held = "";
    return text;
  }
}
