// A site process killed (SIGKILL) in the middle of a round it was asked to train. Left down, the
// round closes at its deadline with the quorum of the others (sampling.minSites 4), the site
// started again rejoins and takes part in every round after, and the job completes. Started again
// at once, while the round still waits for it, it is sent the round's task again (its hellos name
// a new process): the round closes with all five long before its deadline, and the job ends in the
// bytes of a run that no one interrupted.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readOutput, useFederations } from '../helpers/federation.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const ROUNDS = 6;
const DEADLINE_S = 4;
const KILLED_IN = 3;
const VICTIM = 'northgate';

describe('a site killed mid-round (SIGKILL) and started again', () => {
  const tmp = useTmpDirs();
  const federation = useFederations();

  it('the round closes by quorum at its deadline, the site rejoins the next round, and the job completes', async () => {
    const dir = tmp('nats-site-restart');
    const f = await federation({ rounds: ROUNDS, sampling: { minSites: 4 }, aggregation: { roundDeadlineSeconds: DEADLINE_S } });
    const out = join(dir, 'out');
    const sites = f.sites(undefined, { [VICTIM]: [`fit:${KILLED_IN}`] });
    const coordinator = f.coordinator(out);

    // It stops itself once it has acknowledged its task of round 3 (a failpoint), so that it
    // cannot have answered it when it is killed.
    await f.stoppedAt(sites[VICTIM]!, `fit:${KILLED_IN}`);
    const started = await f.notice(KILLED_IN);
    expect(started.value.sites).toContain(VICTIM);
    await f.tasksOf('fit', KILLED_IN, 5);
    await sites[VICTIM]!.kill();

    // The four others are counted at once; the round then waits for its deadline, no longer.
    await f.statusWhere((s) => s.round === KILLED_IN && s.accepted === 4, `round ${KILLED_IN} has the 4 other updates`);
    const [firstEvaluation] = await f.tasksOf('evaluate', KILLED_IN, 1, (DEADLINE_S + 30) * 1000);
    const fitTasks = f.tasks.filter((t) => t.value.type === 'fit' && t.value.round === KILLED_IN);
    const waited = firstEvaluation!.at - Math.min(...fitTasks.map((t) => t.at));
    expect(waited, f.logs(40)).toBeGreaterThanOrEqual(DEADLINE_S * 1000 - 250);

    // Started again once the round has closed without it.
    const again = f.site(VICTIM);
    const joinedAt = Number((await again.waitFor(/joined hospitals at round (\d+)/))[1]);

    const exit = await coordinator.exited;
    expect(exit.code, f.logs()).toBe(0);
    expect((await again.exited).code, again.tail()).toBe(0);
    for (const [name, s] of Object.entries(sites)) if (name !== VICTIM) expect((await s.exited).code, s.tail()).toBe(0);

    const { report } = readOutput(out);
    expect(report.rounds.map((r) => r.round)).toEqual(Array.from({ length: ROUNDS }, (_, i) => i + 1));
    const all = [...f.siteNames].sort();
    const closed = report.rounds[KILLED_IN - 1]!;
    expect(closed.participants).toEqual(all.filter((s) => s !== VICTIM));
    expect(closed.durationMs).toBeGreaterThanOrEqual(DEADLINE_S * 1000 - 250);
    for (const r of report.rounds.slice(0, KILLED_IN - 1)) expect(r.participants).toEqual(all);
    // It joined while round `joinedAt` was under way, and took part in every round after it.
    expect(joinedAt).toBeGreaterThanOrEqual(KILLED_IN);
    expect(joinedAt).toBeLessThan(ROUNDS);
    for (const r of report.rounds.slice(joinedAt)) expect(r.participants, `round ${r.round}`).toEqual(all);
    // Its final score is in the report: it is back.
    expect(Object.keys(report.final.perSite)).toContain(VICTIM);
  });

  it("started again while the round waits for it, it is sent its task again: the round closes with it, and the model is the uninterrupted run's", async () => {
    const dir = tmp('nats-site-restart-at-once');
    const LONG_DEADLINE_S = 120;
    const f = await federation({ rounds: ROUNDS, sampling: { minSites: 4 }, aggregation: { roundDeadlineSeconds: LONG_DEADLINE_S } });
    // The same job in one process: what an uninterrupted run ends in.
    const reference = f.run(join(dir, 'reference'));
    const out = join(dir, 'out');
    const sites = f.sites(undefined, { [VICTIM]: [`fit:${KILLED_IN}`] });
    const coordinator = f.coordinator(out);

    await f.stoppedAt(sites[VICTIM]!, `fit:${KILLED_IN}`);
    await f.tasksOf('fit', KILLED_IN, 5);
    await sites[VICTIM]!.kill();
    const again = f.site(VICTIM);

    const exit = await coordinator.exited;
    expect(exit.code, f.logs()).toBe(0);
    expect((await again.exited).code, again.tail()).toBe(0);
    expect(coordinator.tail(1000)).toContain(`round ${KILLED_IN}: site "${VICTIM}" started again; its fit task is sent again`);
    // Two fit tasks of that round went to it: the first, lost with the process, and the one sent again.
    expect(f.tasks.filter((t) => t.value.type === 'fit' && t.value.round === KILLED_IN && t.value.site === VICTIM)).toHaveLength(2);

    const { report, sha } = readOutput(out);
    const all = [...f.siteNames].sort();
    for (const r of report.rounds) expect(r.participants, `round ${r.round}`).toEqual(all);
    expect(report.rounds[KILLED_IN - 1]!.durationMs).toBeLessThan((LONG_DEADLINE_S / 2) * 1000);
    expect(sha).toBe((await reference).sha);
  });

  it("under top-k and SCAFFOLD, a site that keeps its state (--state) and dies with an update written but not announced carries on from its state: the model is the uninterrupted run's", async () => {
    const dir = tmp('nats-site-restart-state');
    const f = await federation({
      rounds: ROUNDS,
      sampling: { minSites: 4 },
      aggregation: { roundDeadlineSeconds: 120 },
      compression: { codec: 'topk', topkFraction: 0.05 },
      strategy: { name: 'scaffold' },
    });
    const reference = f.run(join(dir, 'reference'));
    const out = join(dir, 'out');
    const state = ['--state', join(dir, 'site-state')];
    const sites = Object.fromEntries(
      f.siteNames.map((s) => [s, f.site(s, [], { args: state, failpoints: s === VICTIM ? [`stop-before-answer:fit:${KILLED_IN}`] : [] })]),
    );
    const coordinator = f.coordinator(out);

    // Its state after round 3 is on its disk, its update of round 3 in its bucket, and no one was told.
    await sites[VICTIM]!.waitFor(
      new RegExp(`failpoint: stopped before answering the fit task of round ${KILLED_IN} \\(its update written, its state kept\\)`),
      60_000,
      0,
      () => f.logs(),
    );
    await sites[VICTIM]!.kill();
    const again = f.site(VICTIM, [], { args: state });

    const exit = await coordinator.exited;
    expect(exit.code, f.logs()).toBe(0);
    expect((await again.exited).code, again.tail()).toBe(0);
    const { report, sha } = readOutput(out);
    const all = [...f.siteNames].sort();
    for (const r of report.rounds) expect(r.participants, `round ${r.round}`).toEqual(all);
    expect(sha).toBe((await reference).sha);
    // Round 3 trained again from the state before it, not from the one it had written.
    expect(again.tail(1000)).toContain(`site ${VICTIM}: carries on from its state after round ${KILLED_IN - 1} (`);
    expect(coordinator.tail(1000)).toContain(
      `site "${VICTIM}" started again; it keeps its top-k residual (what its earlier updates left unsent) and its SCAFFOLD control variate on its disk, and carries on from there`,
    );
  });

  it("under int8 compression, a site that keeps its state (--state) keeps its quantisation residual too: the model is the uninterrupted run's", async () => {
    const dir = tmp('nats-site-restart-int8');
    const f = await federation({ rounds: ROUNDS, sampling: { minSites: 4 }, aggregation: { roundDeadlineSeconds: 120 }, compression: { codec: 'int8' } });
    const reference = f.run(join(dir, 'reference'));
    const out = join(dir, 'out');
    const state = ['--state', join(dir, 'site-state')];
    const sites = Object.fromEntries(
      f.siteNames.map((s) => [s, f.site(s, [], { args: state, failpoints: s === VICTIM ? [`stop-before-answer:fit:${KILLED_IN}`] : [] })]),
    );
    const coordinator = f.coordinator(out);

    // int8 keeps an error-feedback residual as top-k does (what rounding to 255 levels left out):
    // it must be on the disk too, or the restarted site sends round 3 without it.
    await sites[VICTIM]!.waitFor(new RegExp(`failpoint: stopped before answering the fit task of round ${KILLED_IN} \\(its update written`), 60_000, 0, () =>
      f.logs(),
    );
    await sites[VICTIM]!.kill();
    const again = f.site(VICTIM, [], { args: state });

    const exit = await coordinator.exited;
    expect(exit.code, f.logs()).toBe(0);
    expect((await again.exited).code, again.tail()).toBe(0);
    const { sha } = readOutput(out);
    expect(sha).toBe((await reference).sha);
    expect(again.tail(1000)).toContain(`site ${VICTIM}: carries on from its state after round ${KILLED_IN - 1} (`);
    expect(coordinator.tail(1000)).toContain(
      `site "${VICTIM}" started again; it keeps its int8 residual (what its earlier updates left unsent) on its disk, and carries on from there`,
    );
  });
});
