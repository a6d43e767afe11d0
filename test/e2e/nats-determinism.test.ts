// Over a real nats-server, with the coordinator and five sites as separate processes, the
// hospital job ends in the very bytes of the in-process run with the same seed: once through
// `consort run --nats embedded`, once with `consort coordinator` and `consort site` started
// apart against a harness server with the job's generated configuration. Meanwhile the server
// keeps only the objects a later round can need (core/protocol/retention.ts), and at the end the
// final model alone.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { RoundNotice } from '../../core/protocol/messages.ts';
import { HOSPITALS, readOutput, useFederations } from '../helpers/federation.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const ROUNDS = 6;
/** Not the example's own (42): the flags --seed and --rounds reach every process of a run over NATS. */
const SEED = 43;

describe('the hospital job over a real nats-server', () => {
  const tmp = useTmpDirs();
  const federation = useFederations();

  it('with 5 site processes ends in the bytes of the in-process run, through consort run --nats embedded and with processes started apart', async () => {
    const dir = tmp('nats-determinism');
    const f = await federation({ rounds: ROUNDS, seed: SEED });
    // The example itself, in one process and over an embedded server, with --rounds and --seed.
    const rounds = ['--rounds', String(ROUNDS), '--seed', String(SEED)];
    const [reference, embedded] = await Promise.all([
      f.run(join(dir, 'in-process'), rounds, HOSPITALS),
      f.run(join(dir, 'embedded'), [...rounds, '--nats', 'embedded'], HOSPITALS),
    ]);

    // A copy with rounds: 6 and seed: 43, its processes started apart on the harness server: sites first,
    // coordinator last (either order works).
    // At each round's start, what the server still stores: no model before the one the last round
    // was sent (its purge may still be under way) and no update of an earlier round than the last.
    const stale: string[] = [];
    const looks: Promise<void>[] = [];
    const roundOf = (name: string) => Number(/\/r(\d+)/.exec(name)?.[1] ?? Number.NaN);
    f.observer.subscribe(f.subj.round, {
      callback: (_err, msg) => {
        const n = RoundNotice.safeParse(JSON.parse(new TextDecoder().decode(msg.data))).data;
        if (n?.phase !== 'started' || n.round < 3) return;
        looks.push(
          f.storedObjects().then(({ models, updates }) => {
            for (const name of models) if (!(roundOf(name) >= n.round - 2)) stale.push(`${name} when round ${n.round} started`);
            for (const name of updates) if (!(roundOf(name) >= n.round - 1)) stale.push(`${name} when round ${n.round} started`);
          }),
        );
      },
    });
    const sites = f.sites();
    const coordinator = f.coordinator(join(dir, 'apart'));
    const exit = await coordinator.exited;
    expect(exit.code, f.logs()).toBe(0);
    await Promise.all(looks);
    expect(looks.length).toBe(ROUNDS - 2);
    expect(stale).toEqual([]);
    // The job over: its final model alone (and the checkpoint, in its own bucket).
    const left = await f.storedObjects();
    expect(left.models).toEqual(['global/final']);
    expect(left.updates).toEqual([]);
    for (const s of Object.values(sites)) expect((await s.exited).code, s.tail()).toBe(0);
    const apart = readOutput(join(dir, 'apart'));

    const all = [...f.siteNames].sort();
    for (const run of [reference, embedded, apart]) {
      expect(run.report.seed).toBe(SEED);
      expect(run.report.rounds.map((r) => r.round)).toEqual(Array.from({ length: ROUNDS }, (_, i) => i + 1));
      for (const r of run.report.rounds) expect(r.participants).toEqual(all);
    }
    expect(embedded.sha).toBe(reference.sha);
    expect(apart.sha).toBe(reference.sha);
    expect(Buffer.compare(embedded.weights, reference.weights)).toBe(0);
    expect(Buffer.compare(apart.weights, reference.weights)).toBe(0);
    // Every round notice went out, and the end.
    const notices = f.notices.map((n) => n.value);
    expect(notices.filter((n) => n.phase === 'started').map((n) => n.round)).toEqual(Array.from({ length: ROUNDS }, (_, i) => i + 1));
    expect(notices.at(-1)).toMatchObject({ phase: 'done', round: ROUNDS });
  });
});
