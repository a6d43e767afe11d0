// The coordinator killed with SIGKILL at four points of a round and started again: each time it
// resumes from the checkpoint in the job's state bucket, and the job ends in the bytes of an
// uninterrupted run with the same seed.
//
// Each kill point is made exact by one site that stops itself (SIGSTOP, a failpoint) right after
// acknowledging a task, so that the round cannot move past the point before the kill lands. The
// stopped site is continued as the new coordinator starts, with what it was sent by the killed one
// still to answer.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeCheckpoint } from '../../operator/coordinator/checkpoint.ts';
import { type ConsortProcess, type Federation, readOutput, useFederations } from '../helpers/federation.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const ROUNDS = 8;
/** The site paused to hold a round at a kill point (the largest, so the slowest to train). */
const HELD = 'st-mary';

describe('the coordinator killed mid-job (SIGKILL) and started again', () => {
  const tmp = useTmpDirs();
  const federation = useFederations();

  /** The round of the checkpoint in the state bucket now. */
  async function checkpointRound(f: Federation): Promise<number> {
    const bytes = await f.checkpoint();
    if (!bytes) throw new Error('no checkpoint in the state bucket');
    return decodeCheckpoint(bytes).round;
  }

  it('resumes from its checkpoint each time, and the final model is the bytes of an uninterrupted run', async () => {
    const dir = tmp('nats-coordinator-restart');
    // No round may close without every site: a site missing at a deadline fails the job.
    const f = await federation({ rounds: ROUNDS, sampling: { minSites: 5 }, aggregation: { roundDeadlineSeconds: 60 } });
    const reference = f.run(join(dir, 'reference'));
    const out = join(dir, 'out');
    const sites = f.sites(undefined, { [HELD]: ['fit:2', 'fit:4', 'evaluate:5', 'fit:7'] });
    const held = sites[HELD]!;
    let coordinator = f.coordinator(out);
    const kills: Array<{ point: string; checkpoint: number }> = [];

    /** Kills the coordinator, checks what the state bucket holds, starts a new one and sees it resume there. */
    const restart = async (point: string, expected: number): Promise<ConsortProcess> => {
      await coordinator.kill();
      const checkpoint = await checkpointRound(f);
      kills.push({ point, checkpoint });
      expect(checkpoint, `checkpoint after the kill ${point}`).toBe(expected);
      const next = f.coordinator(out);
      held.resume();
      await next.waitFor(new RegExp(`resuming hospitals from its checkpoint after round ${expected}\\b`));
      return next;
    };

    // 1. Right after it published the fit tasks of round 2 (the held site cannot answer).
    await f.stoppedAt(held, 'fit:2');
    await f.tasksOf('fit', 2, 5);
    coordinator = await restart('after the tasks of round 2 went out', 1);

    // 2. After some updates of round 4 were acknowledged (the four other sites').
    await f.hold(held, HELD, 4);
    coordinator = await restart('after 4 updates of round 4 were acknowledged', 3);

    // 3. During the evaluation of round 5: every update is in, the held site cannot score.
    await f.stoppedAt(held, 'evaluate:5');
    await f.tasksOf('evaluate', 5, 5);
    coordinator = await restart('during the evaluation of round 5', 4);

    // 4. Right after the checkpoint of round 6 (logged once it is written): round 7 waits for
    // the held site.
    await f.stoppedAt(held, 'fit:7');
    await coordinator.waitFor(/round 6: loss/);
    coordinator = await restart('right after the checkpoint of round 6', 6);

    const exit = await coordinator.exited;
    expect(exit.code, f.logs()).toBe(0);
    for (const s of Object.values(sites)) expect((await s.exited).code, s.tail()).toBe(0);
    expect(kills.map((k) => k.checkpoint)).toEqual([1, 3, 4, 6]);

    const resumed = readOutput(out);
    const uninterrupted = await reference;
    expect(resumed.report.rounds.map((r) => r.round)).toEqual(Array.from({ length: ROUNDS }, (_, i) => i + 1));
    for (const r of resumed.report.rounds) expect(r.participants).toEqual([...f.siteNames].sort());
    expect(resumed.sha).toBe(uninterrupted.sha);
    expect(Buffer.compare(resumed.weights, uninterrupted.weights)).toBe(0);
    // The report's numbers are the uninterrupted run's too (timings aside).
    const numbers = (o: typeof resumed) => o.report.rounds.map(({ durationMs: _, ...r }) => r);
    expect(numbers(resumed)).toEqual(numbers(uninterrupted));
  });

  it('stopped by Ctrl-C, says that its checkpoint is kept and how to go on; started again, it does', async () => {
    const dir = tmp('nats-coordinator-sigint');
    const f = await federation({ rounds: 4, aggregation: { roundDeadlineSeconds: 60 } });
    const out = join(dir, 'out');
    const sites = f.sites(undefined, { [HELD]: ['fit:3'] });
    const first = f.coordinator(out);
    await f.stoppedAt(sites[HELD]!, 'fit:3');
    first.signal('SIGINT');
    const stopped = await first.exited;
    expect(stopped.code, first.tail()).toBe(1);
    expect(first.output()).toContain(
      'consort: the run was stopped (the checkpoint after round 2 is kept: this coordinator, started again with the same job file, goes on from there) [CONSORT_C_ABORTED]',
    );
    const again = f.coordinator(out);
    sites[HELD]!.resume();
    await again.waitFor(/resuming hospitals from its checkpoint after round 2\b/);
    expect((await again.exited).code, f.logs()).toBe(0);
    for (const s of Object.values(sites)) expect((await s.exited).code, s.tail()).toBe(0);
    const { report } = readOutput(out);
    expect(report.rounds.map((r) => r.round)).toEqual([1, 2, 3, 4]);
    // The report says that its start and duration are the second process's.
    expect(report.resumedAfterRound).toBe(2);
  });
});
