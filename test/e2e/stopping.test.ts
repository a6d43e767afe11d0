// Early stopping: a reachable target ends the run before spec.rounds, and the report says why.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runConsort, transcript } from '../helpers/consort-cli.ts';
import { hospitalSpec, readReport, writeJob } from '../helpers/jobs.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

describe('stopping.target', () => {
  const tmp = useTmpDirs();

  it('stops at the first round that reaches the target accuracy', async () => {
    const dir = tmp('stopping');
    const job = writeJob(dir, hospitalSpec(undefined, { rounds: 10, stopping: { target: { metric: 'accuracy', value: 0.5 } } }));
    const out = join(dir, 'out');
    const r = await runConsort(['run', job, '--out', out]);
    expect(r.code, transcript(r)).toBe(0);
    const report = readReport(out);
    expect(report.final.stoppedBy).toBe('target');
    expect(report.final.rounds).toBeLessThan(10);
    expect(report.rounds).toHaveLength(report.final.rounds);
    const accuracies = report.rounds.map((x) => x.globalAccuracy);
    expect(accuracies.at(-1)).toBeGreaterThanOrEqual(0.5);
    for (const a of accuracies.slice(0, -1)) expect(a).toBeLessThan(0.5);
    expect(r.stdout).toContain('stopped by target');
  });
});
