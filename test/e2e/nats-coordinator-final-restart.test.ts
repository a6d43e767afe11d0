// The coordinator killed (SIGKILL) after the job is over (its final model stored, the sites told
// "done" and gone) but before it wrote its outputs. Started again, it has no sites to ask: it must
// finish from what its checkpoint holds (the final scores included), and write the report and the
// model of an uninterrupted run, rather than wait for sites that will not come back.
//
// The kill point is exact: the coordinator stops itself (SIGSTOP, a failpoint) right before it
// writes its outputs.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeCheckpoint } from '../../operator/coordinator/checkpoint.ts';
import { COORDINATOR_FAILPOINTS_ENV } from '../../worker/nats/failpoints.ts';
import { readOutput, useFederations } from '../helpers/federation.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const ROUNDS = 2;
const SITES = [
  { name: 'st-mary', data: { type: 'synthetic', generator: 'hospital', samples: 120, prevalence: 0.25, shift: 0, testFraction: 0.3 } },
  { name: 'riverside', data: { type: 'synthetic', generator: 'hospital', samples: 80, prevalence: 0.35, shift: 0.4, testFraction: 0.3 } },
  { name: 'northgate', data: { type: 'synthetic', generator: 'hospital', samples: 60, prevalence: 0.2, shift: -0.3, testFraction: 0.3 } },
];

describe('the coordinator killed after the last round, before it wrote its outputs', () => {
  const tmp = useTmpDirs();
  const federation = useFederations();

  it('started again with no site left, writes the report and the model of an uninterrupted run', async () => {
    const dir = tmp('nats-coordinator-final-restart');
    const f = await federation({ rounds: ROUNDS, sites: SITES, training: { epochs: 1 }, aggregation: { roundDeadlineSeconds: 60 } });
    const reference = f.run(join(dir, 'reference'));
    const out = join(dir, 'out');
    const sites = f.sites();
    const first = f.coordinatorWith({ [COORDINATOR_FAILPOINTS_ENV]: 'stop-before-outputs' }, out);
    await first.waitFor(/failpoint: stopped before writing its outputs/, 90_000, 0, () => f.logs());
    // The sites were told the job is over, and left.
    for (const s of Object.values(sites)) expect((await s.exited).code, s.tail()).toBe(0);
    await first.kill();
    expect(existsSync(join(out, 'report.json'))).toBe(false);
    const checkpoint = await f.checkpoint();
    expect(checkpoint && decodeCheckpoint(checkpoint).round).toBe(ROUNDS);

    const again = f.coordinator(out);
    await again.waitFor(/resuming hospitals from its checkpoint after round 2\b/);
    const exit = await Promise.race([again.exited, new Promise<'waiting'>((done) => setTimeout(() => done('waiting'), 20_000))]);
    expect(exit === 'waiting' ? `still running after 20 s\n${again.tail()}` : exit.code, again.tail()).toBe(0);

    const resumed = readOutput(out);
    const uninterrupted = await reference;
    expect(resumed.sha).toBe(uninterrupted.sha);
    expect(Buffer.compare(resumed.weights, uninterrupted.weights)).toBe(0);
    const numbers = (o: typeof resumed) => o.report.rounds.map(({ durationMs: _, ...r }) => r);
    expect(numbers(resumed)).toEqual(numbers(uninterrupted));
    // The final figures are the sites' scores from before the kill, as the uninterrupted run has them.
    expect(Object.keys(resumed.report.final.perSite).sort()).toEqual([...f.siteNames].sort());
    expect(resumed.report.final).toEqual(uninterrupted.report.final);
    expect(resumed.report.resumedAfterRound).toBe(ROUNDS);

    // Asked for a round more, the same job trains it (its sites back): the final scores kept
    // end only a job that is over by its rounds.
    const longer = f.run(join(dir, 'longer'), ['--rounds', String(ROUNDS + 1)]);
    f.sites();
    const more = f.coordinator(join(dir, 'more'), '--rounds', String(ROUNDS + 1));
    expect((await more.exited).code, f.logs()).toBe(0);
    const extended = readOutput(join(dir, 'more'));
    expect(extended.report.rounds.map((r) => r.round)).toEqual([1, 2, 3]);
    expect(extended.sha).toBe((await longer).sha);
  });
});
