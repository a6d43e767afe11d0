// The coordinator's path for large models, end to end on the small hospital model: with
// CONSORT_AGGREGATION_RANGE set, every update stays in its site's bucket, is checked as it streams
// in and read back 97 parameters at a time when its round closes. `consort run --nats embedded`
// then ends in the bytes of the same run with updates folded in memory, and of the run in one
// process (whose updates pass through the same codec), for strategies with state (momentum,
// adaptive moments, SCAFFOLD's control variates) and every lossy codec.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { useFederations } from '../helpers/federation.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const ROUNDS = 3;

const VARIANTS: Array<Record<string, unknown>> = [
  { strategy: { name: 'scaffold' }, compression: { codec: 'int8' } },
  { strategy: { name: 'fedadam' }, compression: { codec: 'fp16' } },
  { strategy: { name: 'fedavgm' }, compression: { codec: 'topk', topkFraction: 0.1 } },
];

describe('stored aggregation over a real nats-server', () => {
  const tmp = useTmpDirs();
  const federation = useFederations();

  for (const variant of VARIANTS) {
    const label = `${(variant.strategy as { name: string }).name} with ${(variant.compression as { codec: string }).codec}`;
    it(`${label}: the bytes of the run with updates in memory`, async () => {
      const dir = tmp(`stored-${label.replaceAll(' ', '-')}`);
      const f = await federation({ rounds: ROUNDS, ...variant });
      // The environment is the child's as it is spawned: one run with it, one without.
      process.env.CONSORT_AGGREGATION_RANGE = '97';
      const storedRun = f.run(join(dir, 'stored'), ['--nats', 'embedded']);
      delete process.env.CONSORT_AGGREGATION_RANGE;
      const [reference, stored, inProcess] = await Promise.all([
        f.run(join(dir, 'in-memory'), ['--nats', 'embedded']),
        storedRun,
        f.run(join(dir, 'in-process')),
      ]);
      expect(stored.report.rounds.map((r) => r.participants)).toEqual(reference.report.rounds.map((r) => r.participants));
      expect(stored.sha).toBe(reference.sha);
      expect(Buffer.compare(stored.weights, reference.weights)).toBe(0);
      expect(inProcess.sha, 'the in-process run, its updates through the same codec').toBe(reference.sha);
    });
  }
});
