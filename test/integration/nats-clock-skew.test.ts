// A site whose machine's clock is wrong. A task's deadline is the coordinator's clock; a site
// 10 minutes ahead used to find every task's deadline passed on arrival and skip it (the round
// waited out its deadline without it), and one behind would retry 10 minutes past the round. Now
// a task says how long it has left, the site counts that on its own clock from arrival, and says
// once that the clocks differ.
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { natsAuthFor, writeNatsConfigFiles } from '../../cli/nats/config.ts';
import { NatsServer } from '../../cli/nats/server.ts';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { runConsort, transcript, coordinatorArgs } from '../helpers/consort-cli.ts';
import { hospitalSpec, jobManifest, writeJob } from '../helpers/jobs.ts';
import { useCleanup } from '../helpers/nats-job.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const cleanup = useCleanup();
const tmp = useTmpDirs();
const CLOCK_OFFSET = resolve(import.meta.dirname, '../fixtures/clock-offset.ts');

describe('a site whose clock is 10 minutes off', () => {
  it.each([
    ['ahead', 600_000],
    ['behind', -600_000],
  ])(
    '%s: trains every round within the deadline, and says that the clocks differ',
    async (way, offsetMs) => {
      const dir = tmp(`clock-${way}`);
      const spec = hospitalSpec(
        [
          { name: 'north', samples: 60 },
          { name: 'south', samples: 60 },
        ],
        // Every site in every round: a round the skewed site missed would wait out its deadline and fail the job.
        { rounds: 2, sampling: { minSites: 2 }, aggregation: { roundDeadlineSeconds: 60 } },
      );
      const jobPath = writeJob(dir, spec, { name: `clock-${way}` });
      const auth = natsAuthFor(FederatedJob.parse(jobManifest(`clock-${way}`, spec)));
      writeNatsConfigFiles(join(dir, 'nats'), auth);
      const server = await NatsServer.start({ config: auth.config });
      cleanup.push(() => server.stop());
      const site = (name: string, env: Record<string, string> = {}) =>
        runConsort(['site', '--job', jobPath, '--site', name, '--nats', server.url, '--creds', join(dir, 'nats/sites', `${name}.nk`)], {
          timeoutMs: 100_000,
          env,
        });
      const started = performance.now();
      const [coordinator, north, south] = await Promise.all([
        runConsort(coordinatorArgs(jobPath, server.url, dir), { timeoutMs: 100_000 }),
        site('north'),
        site('south', { NODE_OPTIONS: `--import=${CLOCK_OFFSET}`, CONSORT_TEST_CLOCK_OFFSET_MS: String(offsetMs) }),
      ]);
      expect(coordinator.code, transcript(coordinator)).toBe(0);
      expect(north.code, transcript(north)).toBe(0);
      expect(south.code, transcript(south)).toBe(0);
      // Both rounds had the skewed site's update, and neither waited for its 60 s deadline.
      expect(south.stderr).toContain('site south: done (2 updates');
      expect(performance.now() - started).toBeLessThan(60_000);
      const said = south.stderr.split('\n').filter((l) => l.includes('clock is about'));
      expect(said, south.stderr).toHaveLength(1);
      expect(said[0]).toMatch(new RegExp(`this machine's clock is about (599|600|601) s ${offsetMs > 0 ? 'ahead of' : 'behind'} the coordinator's`));
      expect(north.stderr).not.toContain('clock is about');
    },
    120_000,
  );
});
