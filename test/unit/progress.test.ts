// What `consort run` prints per round without a terminal (CI, pipes): a line per round, with the
// global figures when the round was evaluated, and why not when it was not.
import { describe, expect, it } from 'vitest';
import { createProgress } from '../../cli/run/progress.ts';
import type { RoundRecord } from '../../core/report/run-report.ts';

function lines(evaluateEvery: number, records: Array<RoundRecord | undefined>): string[] {
  const out: string[] = [];
  const stream = { isTTY: false, write: (s: string) => out.push(s) } as unknown as NodeJS.WriteStream;
  const p = createProgress({ rounds: records.length, stream, quiet: false, evaluateEvery });
  records.forEach((r, i) => p.roundFinished?.(r, i + 1));
  p.stop();
  return out.join('').trim().split('\n');
}

describe('progress without a terminal', () => {
  it('prints the global figures of an evaluated round, and says why a round was not evaluated', () => {
    const record = { round: 2, globalLoss: 0.5, globalAccuracy: 0.75, participants: ['a', 'b'], durationMs: 12.4 } as unknown as RoundRecord;
    expect(lines(2, [undefined, record])).toEqual([
      'round 1/2  trained; not evaluated (every 2 rounds, and the last)',
      'round 2/2  loss 0.5000  accuracy 0.7500  sites 2  12 ms',
    ]);
    expect(lines(1, [undefined])).toEqual(['round 1/1  trained; not evaluated (no evaluation this round)']);
  });
});
