// The local runner's transport drops an update that comes after its round's deadline (sync), and
// then leaves its site as before that round, as a site over NATS takes back a refused update: the
// update's error-feedback residual is not kept, and the site's next fit task names the round to
// forget (its SCAFFOLD c_i change undone, SiteWorker). It kept both: the residual had lost what
// the dropped update carried, for good.
import { describe, expect, it } from 'vitest';
import { InProcessTransport } from '../../cli/run/in-process-transport.ts';
import type { Outcome } from '../../core/protocol/transport.ts';
import type { SiteFitResult } from '../../core/strategies/strategy.ts';
import type { SitePool } from '../../worker/site-pool.ts';
import type { FitReply, FitTask } from '../../worker/site-worker.ts';

const SITES = ['a', 'b'];
// Top-1 of 4 values: what an update leaves out is all in the residual.
const wire = { layout: [{ name: 'w', shape: [4] }], compression: { codec: 'topk' as const, topkFraction: 0.25 } };
const deltas: Record<string, number[]> = {
  'a/1': [1, 0, 0, 0.5],
  'a/2': [0.1, 0, 0, 0.1],
  'b/1': [0, 0, 5, 1],
  'b/2': [0.1, 0.2, 0.3, 0.4],
};

/** A pool whose sites answer at once with the deltas above, but b's round 1, which waits for `answerLate()`. */
class ScriptedPool {
  readonly tasks: FitTask[] = [];
  answerLate: () => void = () => {};

  fit(task: FitTask): Promise<FitReply> {
    this.tasks.push(task);
    const site = SITES[task.siteIndex]!;
    const reply: FitReply = { site, samples: 10, delta: Float32Array.from(deltas[`${site}/${task.round}`]!), trainLoss: 0.5, steps: 1 };
    if (site === 'b' && task.round === 1) return new Promise((resolve) => (this.answerLate = () => resolve(reply)));
    return Promise.resolve(reply);
  }
}

async function outcomes(it: AsyncIterable<Outcome<SiteFitResult>>): Promise<Map<string, Outcome<SiteFitResult>>> {
  const out = new Map<string, Outcome<SiteFitResult>>();
  for await (const o of it) out.set(o.ok ? o.value.site : o.failure.site, o);
  return out;
}

describe('InProcessTransport, sync mode with a round deadline', () => {
  it('an update past its deadline is dropped, and leaves its site as before that round: no residual kept, its c_i forgotten', async () => {
    const pool = new ScriptedPool();
    const transport = new InProcessTransport(pool as unknown as SitePool, SITES, wire, { roundDeadlineSeconds: 0.05 });
    const global = new Float32Array(4);

    const first = await outcomes(transport.fit(1, SITES, global, { proximalMu: 0 }));
    expect(first.get('a')).toMatchObject({ ok: true });
    expect(first.get('b')).toMatchObject({ ok: false, failure: { code: 'CONSORT_C_DEADLINE' } });
    // It comes after all, and is dropped (its handling is a few promise reactions away).
    pool.answerLate();
    await new Promise((resolve) => setImmediate(resolve));

    const second = await outcomes(transport.fit(2, SITES, global, { proximalMu: 0 }));
    const sent = (site: string) => {
      const o = second.get(site)!;
      if (!o.ok) throw new Error(`${site}: ${o.failure.reason}`);
      return [...o.value.delta];
    };
    // a's round-1 update was taken: its residual (0.5 at index 3) goes into round 2's.
    expect(sent('a')).toEqual([0, 0, 0, Math.fround(0.6)]);
    // b's was dropped: round 2 is sent without what round 1 left out (1 at index 3, else 1.4).
    expect(sent('b')).toEqual([0, 0, 0, Math.fround(0.4)]);
    // And b's fit of round 2 forgets round 1 (the c_i it moved); a's forgets nothing.
    const task = (site: string, round: number) => pool.tasks.find((t) => t.siteIndex === SITES.indexOf(site) && t.round === round)!;
    expect(task('b', 2).forget).toBe(1);
    expect(task('a', 2).forget).toBeUndefined();
    expect(task('b', 1).forget).toBeUndefined();
  });
});
