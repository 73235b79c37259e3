// Generated filler: sentences from a small grammar ("The grass is green.", "Here we go."), RULER's
// passkey noise made less repetitive. Each sentence is a list of word pieces, each with its leading
// space and any punctuation, so a haystack's token ids are the pieces' ids laid end to end: a
// tokenizer whose pre-tokenizer splits at spaces (Llama 3's, GPT's, SentencePiece's) gives the
// same ids for the whole text, and only as many distinct pieces as the grammar has words (about
// 100) ever need tokenizing, whatever the length.

import type { Rng } from "../engine/sampling.ts";
import { ADJECTIVES, NOUNS } from "./words.ts";

function pick<T>(rng: Rng, list: readonly T[]): T {
  return list[Math.floor(rng() * list.length)];
}

/** One filler sentence as its word pieces (the same grammar as train_retrieval_model.py). */
export function fillerSentence(rng: Rng): string[] {
  const k = Math.floor(rng() * 10);
  if (k < 5) return [" The", ` ${pick(rng, NOUNS)}`, " is", ` ${pick(rng, ADJECTIVES)}.`];
  if (k < 8) {
    const [a, b] = [pick(rng, NOUNS), pick(rng, NOUNS)];
    return [" The", ` ${a}`, " and", " the", ` ${b}`, " are", ` ${pick(rng, ADJECTIVES)}.`];
  }
  return rng() < 0.5 ? [" Here", " we", " go."] : [" There", " and", " back", " again."];
}

/** An endless stream of filler sentences. */
export function* fillerStream(rng: Rng): Generator<string[]> {
  for (;;) yield fillerSentence(rng);
}
