// The status the controller last wrote stands in for the cache's until the informer shows it: a
// reconcile that ran before the echo of the previous status write took the older status and
// wrote what it derived from it (a suspended job's round went back from 5 to 4 in CI).
import { describe, expect, it } from 'vitest';
import { StatusWrites } from '../../operator/kube/status-writes.ts';

describe('StatusWrites', () => {
  it("stands in for the cache's status until an event carries our write's version", () => {
    const w = new StatusWrites<{ round: number }>();
    expect(w.current('uid-1', { round: 4 })).toEqual({ round: 4 });
    w.wrote('uid-1', '120', { round: 5 });
    // The cache still holds round 4 (an event from before our write, still in flight).
    w.seen('uid-1', '118');
    expect(w.current('uid-1', { round: 4 })).toEqual({ round: 5 });
    expect(w.current('uid-2', { round: 1 })).toEqual({ round: 1 }); // another job
    w.seen('uid-1', '120');
    expect(w.current('uid-1', { round: 6 })).toEqual({ round: 6 });
    expect(w.size).toBe(0);
  });

  it('a later version (a change by anyone after ours, a re-list) also means the cache has our write', () => {
    const w = new StatusWrites<string>();
    w.wrote('u', '99', 'ours');
    w.seen('u', '100');
    expect(w.current('u', 'cache')).toBe('cache');
    // Versions compared as numbers, not strings ("99" < "100"), and only when both are decimal.
    w.wrote('u', '100', 'ours');
    w.seen('u', '99');
    expect(w.current('u', 'cache')).toBe('ours');
    w.seen('u', 'opaque');
    expect(w.current('u', 'cache')).toBe('ours');
    w.forget('u');
    expect(w.current('u', 'cache')).toBe('cache');
    // A write whose answer has no version is not held (nothing could ever release it).
    w.wrote('v', undefined, 'ours');
    expect(w.size).toBe(0);
  });
});
