// The one token-id range check. The edge (client ids), the tokenizer (decode), the driver's prompt
// intake and every runtime's forward refuse an id outside the vocabulary; each says so in its own
// error type and words, but the rule is this one.

/** Whether `id` names a token of a `vocabSize`-token vocabulary: an integer in [0, vocabSize). */
export function isTokenId(id: unknown, vocabSize: number): id is number {
  return typeof id === "number" && Number.isInteger(id) && id >= 0 && id < vocabSize;
}
