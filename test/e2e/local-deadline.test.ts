// A round deadline in one process (`consort run`): a site far slower than the deadline misses it,
// and its abandoned work must not make an on-time site miss the next one (the pool used to put
// the slow site's next task on the on-time site's idle thread, ahead of it). Buffered mode folds
// the late update into a later round with its staleness weight, as the NATS coordinator does
// (it used to be dropped in one process). The margins are wide on purpose, both ways, because a
// loaded CI machine runs both sites several times slower: the slow site trains 100x as many
// examples as the fast one (~0.3 s a task against ~11 s on a quiet 2-core machine), the 2.5 s
// deadline sits 8x above the fast site (a 1 s one was missed on CI) and 4x below the slow one,
// and the 16 rounds (5 s each: fit and evaluation wait out their deadlines) give the late update
// 7x its quiet time to arrive (8 rounds were too few on a loaded CI machine).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Rng } from '../../core/rng.ts';
import { runConsort, transcript } from '../helpers/consort-cli.ts';
import { readReport, writeJob } from '../helpers/jobs.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const tmp = useTmpDirs();

/** n rows of 20 standard-normal features and a label set by the first two. */
function writeRows(path: string, n: number, seed: number): void {
  const rng = Rng.from(seed, 'deadline-rows');
  const lines = [[...Array.from({ length: 20 }, (_, j) => `x${j}`), 'label'].join(',')];
  for (let i = 0; i < n; i++) {
    const x = Array.from({ length: 20 }, () => rng.normal());
    lines.push([...x.map((v) => v.toFixed(3)), x[0]! + x[1]! > 0 ? '1' : '0'].join(','));
  }
  writeFileSync(path, `${lines.join('\n')}\n`);
}

describe('consort run with a round deadline, one site far slower than it', () => {
  it('the on-time site answers every round; buffered, the slow site’s late update is folded with its staleness', async () => {
    const dir = tmp('local-deadline');
    writeRows(join(dir, 'slow.csv'), 8000, 1);
    writeRows(join(dir, 'fast.csv'), 80, 2);
    const rounds = 16;
    const job = writeJob(dir, {
      model: { type: 'mlp', hidden: [64] },
      classes: ['0', '1'],
      sites: [
        { name: 'slow', data: { type: 'csv', train: 'slow.csv', labelColumn: 'label' } },
        { name: 'fast', data: { type: 'csv', train: 'fast.csv', labelColumn: 'label' } },
      ],
      rounds,
      training: { epochs: 40, learningRate: 0.05 },
      aggregation: { mode: 'buffered', maxStaleness: rounds, roundDeadlineSeconds: 2.5 },
      seed: 4,
    });
    const r = await runConsort(['run', job, '--quiet', '--threads', '2', '--out', join(dir, 'out')], { timeoutMs: 200_000 });
    expect(r.code, transcript(r)).toBe(0);
    const report = readReport(join(dir, 'out'));
    expect(report.rounds).toHaveLength(rounds);
    // The fast site in every round, the slow one never on time ...
    for (const round of report.rounds) {
      expect(round.participants, `round ${round.round}`).toContain('fast');
      expect(round.participants, `round ${round.round}`).not.toContain('slow');
    }
    // ... but its update of round 1 folded into a later round, named with the round it trained for.
    const late = report.rounds.flatMap((round) => round.participants.filter((p) => p.startsWith('slow@r')).map((p) => ({ round: round.round, p })));
    expect(late.length, JSON.stringify(report.rounds.map((x) => x.participants))).toBeGreaterThan(0);
    expect(late[0]!.p).toBe('slow@r1');
    expect(late[0]!.round).toBeGreaterThan(1);
  }, 240_000);
});
