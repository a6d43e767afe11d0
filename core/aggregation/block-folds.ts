// A run of blocks of an exact sum's shard, folded by one thread: each block of every update is
// copied into this thread's scratch, scanned there (NaN, Infinity, the exact range), then folded,
// GROUP updates at a time. The same steps as ExactWeightedSum.addAll, over blocks [from, to) only,
// so that several threads can fold disjoint blocks of one shared shard at once (fold-pool.ts).
// A thread that meets a value it may not fold stops before folding that block, and says how far
// it got: its folds can then be taken out again exactly (unfoldBlocks), as addAll's are.
import { BLOCK, type Shard } from './exact-kernel.ts';

export const LARGEST_FLOAT32 = 3.4028234663852886e38;

export interface BlockFoldJob {
  inputs: readonly Float32Array[];
  weights: readonly number[];
  /** Per update, the largest |x| its weight allows (below it: the split is exact). */
  limits: readonly number[];
  /** Group g is updates [bounds[g], bounds[g + 1]). */
  bounds: readonly number[];
  /** Blocks of the shard, [from, to). */
  from: number;
  to: number;
  /** When the updates lie in the shard's input slots: their byte addresses (folded where they lie, not copied). */
  pointers?: readonly number[];
}

export interface BlockFoldOutcome {
  /** Per update, the largest |x| seen in these blocks (up to where it stopped). */
  maxAbs: number[];
  /** (block, group) pairs folded, in order: what unfoldBlocks takes out. */
  folded: number;
  /** Why it stopped early: a NaN or Infinity, or a value past an update's limit. */
  stopped?: { update: number; kind: 'not-finite' | 'beyond-range'; maxAbs: number };
}

export function foldBlocks(shard: Shard, job: BlockFoldJob): BlockFoldOutcome {
  const { inputs, weights, limits, bounds } = job;
  const groups = bounds.length - 1;
  const groupWeights = Array.from({ length: groups }, (_, g) => weights.slice(bounds[g]!, bounds[g + 1]!));
  const maxAbs = inputs.map(() => 0);
  const pointers = job.pointers;
  let folded = 0;
  for (let b = job.from; b < job.to; b++) {
    const at = b * BLOCK;
    const count = Math.min(BLOCK, shard.length - at);
    for (let g = 0; g < groups; g++) {
      for (let k = bounds[g]!; k < bounds[g + 1]!; k++) {
        const m = pointers ? shard.scanAt(pointers[k]! + 4 * at, count) : shard.stage(inputs[k]!, shard.start + at, count, k - bounds[g]!);
        if (!(m <= LARGEST_FLOAT32)) return { maxAbs, folded, stopped: { update: k, kind: 'not-finite', maxAbs: m } };
        if (m > maxAbs[k]!) maxAbs[k] = m;
        if (!(m < limits[k]!)) return { maxAbs, folded, stopped: { update: k, kind: 'beyond-range', maxAbs: m } };
      }
      if (pointers) shard.foldAt(groupPointers(pointers, bounds, g, at), count, at, groupWeights[g]!);
      else shard.foldRaw(count, at, groupWeights[g]!);
      folded++;
    }
  }
  return { maxAbs, folded };
}

/** Takes out exactly the first `folded` (block, group) folds of foldBlocks(shard, job): folding -w x subtracts what w x added. */
export function unfoldBlocks(shard: Shard, job: BlockFoldJob, folded: number): void {
  const { inputs, weights, bounds } = job;
  const groups = bounds.length - 1;
  const negated = Array.from({ length: groups }, (_, g) => weights.slice(bounds[g]!, bounds[g + 1]!).map((w) => -w));
  let left = folded;
  for (let b = job.from; b < job.to && left > 0; b++) {
    const at = b * BLOCK;
    const count = Math.min(BLOCK, shard.length - at);
    for (let g = 0; g < groups && left > 0; g++, left--) {
      if (job.pointers) {
        shard.foldAt(groupPointers(job.pointers, bounds, g, at), count, at, negated[g]!);
        continue;
      }
      for (let k = bounds[g]!; k < bounds[g + 1]!; k++) shard.stage(inputs[k]!, shard.start + at, count, k - bounds[g]!);
      shard.foldRaw(count, at, negated[g]!);
    }
  }
}

/** Group g's input addresses at element `at`. */
export function groupPointers(pointers: readonly number[], bounds: readonly number[], g: number, at: number): number[] {
  return pointers.slice(bounds[g]!, bounds[g + 1]!).map((p) => p + 4 * at);
}
