// Which stored objects a job may let go, round by round (core/protocol/retention.ts): the marks a
// bucket's purge may use lag as far as a later round may still read what lies below them.
import { describe, expect, it } from 'vitest';
import { RetentionMarks, retentionLag } from '../../core/protocol/retention.ts';

const sync = { mode: 'sync', maxStaleness: 4 } as const;
const buffered = { mode: 'buffered', maxStaleness: 2 } as const;

describe('retention of stored objects', () => {
  it('sync: updates go as soon as their round is checkpointed, models one round later', () => {
    expect(retentionLag(sync, 'updates')).toBe(0);
    expect(retentionLag(sync, 'models')).toBe(1);
    const m = new RetentionMarks(sync);
    // Round 1 checkpointed: the update bucket's next message is 11, so 1..10 may go.
    expect(m.note('up', 'updates', 1, 11)).toBe(11);
    // The models of round 1 are still read by round 2 (its tasks, an undo).
    expect(m.note('models', 'models', 1, 5)).toBeUndefined();
    expect(m.note('models', 'models', 2, 9)).toBe(5);
    expect(m.note('up', 'updates', 2, 21)).toBe(21);
  });

  it('buffered: a late update may be folded maxStaleness rounds on, and its model read that late', () => {
    expect(retentionLag(buffered, 'updates')).toBe(3);
    expect(retentionLag(buffered, 'models')).toBe(4);
    const m = new RetentionMarks(buffered);
    const purged: Array<number | undefined> = [];
    for (let round = 1; round <= 6; round++) purged.push(m.note('up', 'updates', round, round * 10 + 1));
    // Below round 1's mark only once round 4 is checkpointed, then one round at a time.
    expect(purged).toEqual([undefined, undefined, undefined, 11, 21, 31]);
  });

  it('never asks a bucket to purge below where it already did, nor below its first message', () => {
    const m = new RetentionMarks(sync);
    expect(m.note('up', 'updates', 1, 1)).toBeUndefined(); // an empty bucket: nothing to purge
    expect(m.note('up', 'updates', 2, 7)).toBe(7);
    expect(m.note('up', 'updates', 3, 7)).toBeUndefined(); // nothing written since
    expect(m.note('other', 'updates', 3, 4)).toBe(4); // buckets are apart
  });
});
