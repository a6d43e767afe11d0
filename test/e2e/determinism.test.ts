// Same seed, same bytes: the final model depends on the job and its seed only, not on the run,
// the timing of the threads or how many threads there are.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runConsort, transcript } from '../helpers/consort-cli.ts';
import { readReport } from '../helpers/jobs.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const EXAMPLE = 'manifests/examples/hospitals.yaml';

describe('determinism of consort run', () => {
  const tmp = useTmpDirs();

  /** Runs the example for 3 rounds with extra flags; the run's hash, weights and report. */
  async function run(dir: string, name: string, ...flags: string[]) {
    const out = join(dir, name);
    const r = await runConsort(['run', EXAMPLE, '--rounds', '3', '--quiet', '--out', out, ...flags]);
    expect(r.code, transcript(r)).toBe(0);
    const report = readReport(out);
    return { report, sha: report.final.modelSha256, weights: readFileSync(join(out, 'model.safetensors')), tfjs: readFileSync(join(out, 'tfjs/weights.bin')) };
  }

  /** The report's numbers without its timings. */
  const metrics = (r: Awaited<ReturnType<typeof run>>['report']) => ({
    rounds: r.rounds.map(({ durationMs: _, ...rest }) => rest),
    final: r.final,
    sites: r.sites,
  });

  it('gives the same model, byte for byte, for the same seed, and a different one for another seed', async () => {
    const dir = tmp('determinism');
    const [a, b] = await Promise.all([run(dir, 'a'), run(dir, 'b')]);
    expect(a.report.rounds).toHaveLength(3);
    expect(b.sha).toBe(a.sha);
    expect(Buffer.compare(b.weights, a.weights)).toBe(0);
    expect(Buffer.compare(b.tfjs, a.tfjs)).toBe(0);
    expect(metrics(b.report)).toEqual(metrics(a.report));

    const c = await run(dir, 'c', '--seed', '43');
    expect(c.report.seed).toBe(43);
    expect(c.sha).not.toBe(a.sha);
    expect(Buffer.compare(c.weights, a.weights)).not.toBe(0);
  });

  it('does not depend on the number of worker threads', async () => {
    const dir = tmp('determinism-threads');
    // 5 sites on 1, 2 and 3 threads: every site on one thread, pairs, and an uneven split.
    const [one, two] = await Promise.all([run(dir, 'one', '--threads', '1'), run(dir, 'two', '--threads', '2')]);
    const three = await run(dir, 'three', '--threads', '3');
    expect(two.sha).toBe(one.sha);
    expect(three.sha).toBe(one.sha);
    expect(Buffer.compare(two.weights, one.weights)).toBe(0);
    expect(metrics(two.report)).toEqual(metrics(one.report));
    expect(metrics(three.report)).toEqual(metrics(one.report));
  });
});
