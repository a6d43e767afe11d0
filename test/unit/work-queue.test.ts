// The controller's work queue: a burst of adds is one reconcile, a key is never worked on twice at
// once (and runs again if added meanwhile), failures come back after a growing backoff.
import { describe, expect, it } from 'vitest';
import { WorkQueue } from '../../operator/kube/work-queue.ts';

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

describe('WorkQueue', () => {
  it('de-duplicates: many adds of one key before it runs are one reconcile', async () => {
    const q = new WorkQueue({ workers: 2 });
    const seen: string[] = [];
    for (let i = 0; i < 50; i++) q.add('ns/a');
    q.add('ns/b');
    q.start(async (k) => {
      seen.push(k);
      return undefined;
    });
    await tick(30);
    await q.stop();
    expect(seen.sort()).toEqual(['ns/a', 'ns/b']);
  });

  it('never runs one key twice at a time; an add during its reconcile runs it once more afterwards', async () => {
    const q = new WorkQueue({ workers: 4 });
    let running = 0;
    let maxRunning = 0;
    let runs = 0;
    q.start(async () => {
      running++;
      runs++;
      maxRunning = Math.max(maxRunning, running);
      await tick(20);
      running--;
      return undefined;
    });
    q.add('k');
    await tick(5);
    for (let i = 0; i < 10; i++) q.add('k'); // while it runs
    await tick(80);
    await q.stop();
    expect(maxRunning).toBe(1);
    expect(runs).toBe(2);
  });

  it('retries a failing key with exponential backoff and forgets the failures after a success', async () => {
    const q = new WorkQueue({ workers: 1, backoffMs: { initial: 10, max: 1000 } });
    const at: number[] = [];
    const t0 = Date.now();
    q.start(async () => {
      at.push(Date.now() - t0);
      if (at.length <= 3) throw new Error('not yet');
      return undefined;
    });
    q.add('k');
    for (let i = 0; i < 100 && at.length < 4; i++) await tick(20);
    await q.stop();
    expect(at.length).toBe(4);
    const gaps = at.slice(1).map((t, i) => t - at[i]!);
    // 10, 20, 40 ms (timers fire late, never early).
    expect(gaps[0]).toBeGreaterThanOrEqual(9);
    expect(gaps[1]).toBeGreaterThanOrEqual(19);
    expect(gaps[2]).toBeGreaterThanOrEqual(39);
    expect(gaps[2]!).toBeGreaterThan(gaps[0]!);
  });

  it('requeueAfterMs brings a key back; an explicit add meanwhile is not postponed by it', async () => {
    const q = new WorkQueue({ workers: 1 });
    const at: number[] = [];
    const t0 = Date.now();
    q.start(async () => {
      at.push(Date.now() - t0);
      return at.length === 1 ? { requeueAfterMs: 1000 } : undefined;
    });
    q.add('k');
    await tick(20);
    q.add('k');
    await tick(20);
    await q.stop();
    expect(at.length).toBe(2);
    expect(at[1]!).toBeLessThan(500);
  });

  it('reports the latency from add to start', async () => {
    const lat: number[] = [];
    const q = new WorkQueue({ workers: 1, onLatency: (s) => lat.push(s) });
    q.add('a');
    q.add('b');
    q.start(async () => {
      await tick(10);
      return undefined;
    });
    await tick(50);
    await q.stop();
    expect(lat.length).toBe(2);
    expect(lat[1]!).toBeGreaterThanOrEqual(0.009);
  });
});
