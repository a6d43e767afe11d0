// Buffered aggregation and a coordinator killed (SIGKILL) mid-round: a late update the killed
// coordinator had acknowledged, but not yet folded into a checkpointed round, must still be
// folded by the coordinator started again (once), not lost because its site was told it was taken.
//
// northgate stops itself (a failpoint) right after acknowledging its fit task of round 2, so that
// round 2 closes without it at its deadline; another site stops itself likewise to hold a later
// point open. northgate, continued, trains round 2 late, and its update is acknowledged: into the
// open round 3, or, while round 2 is being evaluated, to wait for round 3 (the checkpoint of round
// 2 is then written with it acknowledged and not folded). The coordinator is killed before round 3
// is checkpointed.
import { join } from 'node:path';
import { Objm } from '@nats-io/obj';
import { describe, expect, it } from 'vitest';
import { Ack } from '../../core/protocol/messages.ts';
import { inboxPrefix } from '../../core/protocol/subjects.ts';
import type { RunReport } from '../../core/report/run-report.ts';
import { decodeCheckpoint } from '../../operator/coordinator/checkpoint.ts';
import { type ConsortProcess, type Federation, readOutput, until, useFederations } from '../helpers/federation.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const ROUNDS = 4;
const DEADLINE_S = 6;
const LATE = 'northgate';
const SITES = [
  { name: 'st-mary', data: { type: 'synthetic', generator: 'hospital', samples: 120, prevalence: 0.25, shift: 0, testFraction: 0.3 } },
  { name: 'riverside', data: { type: 'synthetic', generator: 'hospital', samples: 80, prevalence: 0.35, shift: 0.4, testFraction: 0.3 } },
  { name: 'northgate', data: { type: 'synthetic', generator: 'hospital', samples: 60, prevalence: 0.2, shift: -0.3, testFraction: 0.3 } },
];

describe('buffered aggregation, the coordinator killed with a late update acknowledged', () => {
  const tmp = useTmpDirs();
  const federation = useFederations();

  /**
   * Runs the job with `held` (site: failpoints), continues northgate once `ready` holds, kills the
   * coordinator once its late update is acknowledged and `holdsRound3` has stopped in round 3,
   * starts another, and gives the report and the state bucket's objects at the end.
   */
  async function lateUpdateAcrossRestart(
    label: string,
    held: Record<string, string[]>,
    ready: (f: Federation, s: Record<string, ConsortProcess>) => Promise<void>,
    holdsRound3: string,
  ) {
    const dir = tmp(label);
    const f = await federation({
      rounds: ROUNDS,
      sites: SITES,
      training: { epochs: 1 },
      sampling: { minSites: 2 },
      aggregation: { mode: 'buffered', roundDeadlineSeconds: DEADLINE_S },
    });
    // What the coordinator answers the late site, seen on that site's own inbox.
    const late = await f.connectAsSite(LATE);
    const acks: Array<{ at: number; accepted: boolean }> = [];
    late.subscribe(`${inboxPrefix(LATE)}.>`, {
      callback: (err, msg) => {
        if (err) return;
        // Other replies come here too (the chunks of the objects it reads): only acks count.
        let value: unknown;
        try {
          value = msg.json();
        } catch {
          return;
        }
        const ack = Ack.safeParse(value);
        if (ack.success && !ack.data.duplicate) acks.push({ at: Date.now(), accepted: ack.data.accepted });
      },
    });
    await late.flush();

    const out = join(dir, 'out');
    const sites = f.sites(undefined, { [LATE]: ['fit:2'], ...held });
    const first = f.coordinator(out);
    await f.stoppedAt(sites[LATE]!, 'fit:2');
    await ready(f, sites);
    sites[LATE]!.resume();
    const sent = await f.updateOf(LATE, 2);
    await until(
      () => acks.some((a) => a.at >= sent.at && a.accepted),
      `the coordinator's acknowledgement of ${LATE}'s late update`,
      60_000,
      () => f.logs(),
    );
    await f.stoppedAt(sites[holdsRound3]!, 'fit:3');
    await first.kill();
    const checkpoint = await f.checkpoint();
    expect(checkpoint && decodeCheckpoint(checkpoint).round, f.logs()).toBe(2);

    const again = f.coordinator(out);
    await again.waitFor(/resuming hospitals from its checkpoint after round 2\b/);
    for (const s of Object.values(sites)) s.resume();
    expect((await again.exited).code, f.logs()).toBe(0);
    const { report } = readOutput(out);
    const state = await (await new Objm(f.observer).open(f.bucket.state)).list();
    return { report, stateObjects: state.filter((i) => !i.deleted).map((i) => i.name) };
  }

  /** The rounds whose participants list northgate's late update of round 2. */
  const foldedIn = (report: RunReport) => report.rounds.flatMap((r) => r.participants.filter((p) => p === `${LATE}@r2`).map(() => r.round));

  it('acknowledged into the open round 3: started again, it folds that update into round 3, once', async () => {
    const { report, stateObjects } = await lateUpdateAcrossRestart(
      'nats-buffered-restart-open',
      { 'st-mary': ['fit:3'] },
      (f, s) => f.stoppedAt(s['st-mary']!, 'fit:3'),
      'st-mary',
    );
    expect(foldedIn(report), JSON.stringify(report.rounds.map((r) => [r.round, r.participants]))).toEqual([3]);
    // Nothing kept for a restart outlives the job.
    expect(stateObjects.filter((n) => n.startsWith('late/'))).toEqual([]);
  });

  it('acknowledged while round 2 was evaluated, before its checkpoint: started again, it folds that update into round 3, once', async () => {
    const { report, stateObjects } = await lateUpdateAcrossRestart(
      'nats-buffered-restart-between',
      { 'st-mary': ['evaluate:2'], riverside: ['fit:3'] },
      (f, s) => f.stoppedAt(s['st-mary']!, 'evaluate:2'),
      'riverside',
    );
    expect(foldedIn(report), JSON.stringify(report.rounds.map((r) => [r.round, r.participants]))).toEqual([3]);
    expect(stateObjects.filter((n) => n.startsWith('late/'))).toEqual([]);
  });
});
