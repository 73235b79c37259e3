// Which sequences of a micro-batch attend to a shared prefix together (cascade attention, issue 15
// item 2). Sequences that share a prefix hold the same block ids at the start of their tables
// (blocks shared by reference count, core/engine/kv-blocks.ts); a group's members attend to those blocks
// in one pass, every member's query rows in one query tile, so each K/V tile loaded serves them all,
// then each member attends to its own remaining blocks (shard.mjs attention()).
//
// A shared block must lie wholly below every member's first query position (p0): then no causal
// mask applies over it, and the one pass needs no per-member positions. Plain JS for the same
// reason as shard.mjs (workers and workerd load it without a TS loader).

// @ts-check

/**
 * A group: segment indices (ascending) and how many leading blocks of their tables they share.
 * @typedef {{ members: number[], blocks: number }} PrefixGroup
 */

/**
 * Leading entries two tables have in common, at most `most`.
 * @param {Int32Array} a
 * @param {Int32Array} b
 * @param {number} most
 */
function commonBlocks(a, b, most) {
  const n = Math.min(most, a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * The groups of >= 2 segments worth one shared pass. Segments with the same first block are
 * candidates; among them, the one that may share the most blocks leads, each other's share is the
 * blocks it has in common with the leader (its tables agree with every other member's there too),
 * and the prefix length chosen is the one that saves the most block reads: (members - 1) x blocks.
 * Those left out may form a further group; a segment in no group attends alone, as before.
 * @param {ReadonlyArray<Int32Array>} tables  each segment's block table
 * @param {ReadonlyArray<number>} starts  each segment's first query position (p0)
 * @param {number} bs  positions per block
 * @returns {PrefixGroup[]}
 */
export function prefixGroups(tables, starts, bs) {
  /** @type {Map<number, number[]>} */
  const byFirst = new Map();
  const below = starts.map((p0) => Math.floor(p0 / bs)); // blocks wholly below p0
  for (let i = 0; i < tables.length; i++) {
    if (below[i] < 1 || tables[i].length < 1) continue;
    const list = byFirst.get(tables[i][0]);
    if (list) list.push(i);
    else byFirst.set(tables[i][0], [i]);
  }
  /** @type {PrefixGroup[]} */
  const groups = [];
  for (let list of byFirst.values()) {
    while (list.length >= 2) {
      let lead = list[0];
      for (const i of list) if (below[i] > below[lead]) lead = i;
      // Every candidate shares block 0 with the leader, so each share is >= 1.
      const share = list.map((i) => commonBlocks(tables[lead], tables[i], below[i]));
      let blocks = 0;
      let saved = 0;
      for (const v of new Set(share)) {
        const count = share.filter((s) => s >= v).length;
        if (count >= 2 && (count - 1) * v > saved) {
          saved = (count - 1) * v;
          blocks = v;
        }
      }
      if (blocks === 0) break;
      groups.push({ members: list.filter((_, k) => share[k] >= blocks), blocks });
      list = list.filter((_, k) => share[k] < blocks);
    }
  }
  return groups;
}
