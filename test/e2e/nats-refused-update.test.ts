// A site whose update is refused (late for a closed round, in sync mode) takes back what it did
// to its own state for that update: its top-k residual (error feedback) and its SCAFFOLD control
// variate c_i, in memory and on its disk (--state). It used to keep them as if the update had
// been counted: the residual had lost what the update carried, and c_i had moved by a control
// delta the server's c never got, so c drifted from the mean of the c_i for the rest of the job.
//
// The reference is the same job in which that site's task of the round fails before it trains:
// the round has the same four participants, and the site's state after it is the one before it.
// A run with the refused update must end in that run's bytes, and the site must keep the same
// state on its disk.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { type Federation, readOutput, useFederations } from '../helpers/federation.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const ROUNDS = 4;
const LATE_IN = 3;
// Long enough for the four others to answer on a loaded machine: the round waits it out for the late site.
const DEADLINE_S = 10;
const VICTIM = 'northgate';

describe('an update refused by the coordinator', () => {
  const tmp = useTmpDirs();
  const federation = useFederations();

  const job = {
    rounds: ROUNDS,
    sampling: { minSites: 4 },
    aggregation: { roundDeadlineSeconds: DEADLINE_S },
    compression: { codec: 'topk', topkFraction: 0.05 },
    strategy: { name: 'scaffold' },
  };

  /** Every site with --state DIR, the victim with `failpoint`; the coordinator writing into `out`. */
  const start = (f: Federation, dir: string, failpoint: string) => {
    const state = join(dir, 'site-state');
    const sites = Object.fromEntries(f.siteNames.map((s) => [s, f.site(s, [], { args: ['--state', state], failpoints: s === VICTIM ? [failpoint] : [] })]));
    const out = join(dir, 'out');
    return { sites, out, coordinator: f.coordinator(out), stateOf: (round: number) => join(state, f.key, VICTIM, `after-round-${round}.safetensors`) };
  };

  it('under top-k and SCAFFOLD, a late update refused as stale leaves the site as before its round: the run ends as one where the site sat that round out', async () => {
    // The reference: the site's fit task of round 3 fails before it trains (its state untouched).
    const refDir = tmp('nats-refused-reference');
    const r = await federation(job);
    const ref = start(r, refDir, `fail:fit:${LATE_IN}`);
    expect((await ref.coordinator.exited).code, r.logs()).toBe(0);
    for (const s of Object.values(ref.sites)) expect((await s.exited).code, s.tail()).toBe(0);
    const reference = readOutput(ref.out);

    const dir = tmp('nats-refused-update');
    const f = await federation(job);
    const run = start(f, dir, `hold-before-answer:fit:${LATE_IN}`);
    const victim = run.sites[VICTIM]!;
    // Its update of round 3 is written and its state after round 3 kept; it answers only once the
    // round has closed without it (its evaluation task is out), still saying hello meanwhile.
    await victim.waitFor(new RegExp(`failpoint: holds its answer to the fit task of round ${LATE_IN}\\b`), 60_000, 0, () => f.logs());
    await f.tasksOf('evaluate', LATE_IN, 1, (DEADLINE_S + 60) * 1000);
    expect(f.updates.some((u) => u.value.site === VICTIM && u.value.round === LATE_IN)).toBe(false);
    victim.resume();

    expect((await run.coordinator.exited).code, f.logs()).toBe(0);
    for (const s of Object.values(run.sites)) expect((await s.exited).code, s.tail()).toBe(0);
    const { report, sha } = readOutput(run.out);
    const all = [...f.siteNames].sort();
    expect(report.rounds.map((x) => x.participants)).toEqual(reference.report.rounds.map((x) => x.participants));
    expect(report.rounds[LATE_IN - 1]!.participants).toEqual(all.filter((s) => s !== VICTIM));
    for (const x of report.rounds.filter((x) => x.round !== LATE_IN)) expect(x.participants, `round ${x.round}`).toEqual(all);
    expect(f.updates.some((u) => u.value.site === VICTIM && u.value.round === LATE_IN)).toBe(true);

    // The model is the reference's: the server's c never moved by the refused control delta, and
    // neither did c_i; the residual still holds what the refused update carried.
    expect(sha).toBe(reference.sha);
    // So is the site's state after round 4, bit for bit: round 4 started from its state after
    // round 2, which is the file kept beside it; round 3's is gone.
    expect(readFileSync(run.stateOf(ROUNDS)).equals(readFileSync(ref.stateOf(ROUNDS)))).toBe(true);
    expect(readFileSync(run.stateOf(LATE_IN - 1)).equals(readFileSync(ref.stateOf(LATE_IN - 1)))).toBe(true);
    expect(() => readFileSync(run.stateOf(LATE_IN))).toThrow(/ENOENT/);
    expect(victim.output()).toContain(`site ${VICTIM}: update of round ${LATE_IN} refused: round ${LATE_IN} is closed`);
    expect(victim.output()).toContain(
      `site ${VICTIM}: its update of round ${LATE_IN} was refused [CONSORT_R_STALE_ROUND]: its state goes back to before round ${LATE_IN} (on its disk too)`,
    );
    // Two federations, one after the other.
  }, 240_000);
});
