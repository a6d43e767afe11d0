// A site may write into its own update bucket, and nothing else bounded it: a site's credentials
// filled the server's store with garbage chunks within a round (40 MiB were all taken). Once the
// model is known the coordinator caps each site's bucket at what it can legitimately hold at once
// (maxStaleness + 3 updates of the largest admissible size, as stored: update-size.ts); past it the
// server refuses the site's writes, and only the site's.
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { buckets } from '../../core/protocol/subjects.ts';
import { updateBucketCap } from '../../core/protocol/update-size.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { runSite } from '../../worker/nats/site-runner.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { waitUntil } from '../helpers/managed-process.ts';
import { jobOnServer, siteModel, useCleanup } from '../helpers/nats-job.ts';

const cleanup = useCleanup();

describe("a site's update bucket", () => {
  it('is capped once the model is known: a site writing garbage chunks is refused past the cap', async () => {
    const job = FederatedJob.parse(jobManifest('capped', hospitalSpec([{ name: 'north', samples: 80 }], { rounds: 200, aggregation: { maxStaleness: 1 } })));
    const { key, auth, as } = await jobOnServer(job, cleanup);
    const stop = new AbortController();
    const maxUpdateBytes = 256 * 1024;
    const coordinatorNc = await as(COORDINATOR_USER, auth.coordinator.seed);
    const loop = runNatsCoordinator({ job, nc: coordinatorNc, siteKeys: auth.keys.sites, log: () => {}, maxUpdateBytes, signal: stop.signal }).catch(() => {});
    const northNc = await as('north', auth.sites.north!.seed);
    const site = runSite({
      job,
      site: 'north',
      nc: northNc,
      seed: auth.sites.north!.seed,
      baseDir: '.',
      backend: 'cpu',
      log: () => {},
      signal: stop.signal,
    }).catch(() => {});
    try {
      const stream = `OBJ_${buckets(key).updates('north')}`;
      const cap = updateBucketCap((await siteModel(job, 0)).layout, job.spec, maxUpdateBytes);
      expect(cap).toBeGreaterThan((1 + 3) * maxUpdateBytes);
      const jsm = await jetstreamManager(coordinatorNc);
      await waitUntil('the bucket capped', async () => (await jsm.streams.info(stream)).config.max_bytes === cap, { timeoutMs: 30_000 });
      // The site, with its own credentials, writes chunks no envelope will ever name.
      const js = jetstream(northNc);
      const chunk = new Uint8Array(256 * 1024);
      let refused: string | undefined;
      for (let i = 0; i < 12 && !refused; i++) {
        await js.publish(`$O.${buckets(key).updates('north')}.C.garbage${i}`, chunk).catch((err: unknown) => {
          refused = (err as Error).message;
        });
      }
      expect(refused, 'every chunk was taken').toMatch(/maximum bytes/i);
      expect((await jsm.streams.info(stream)).state.bytes).toBeLessThanOrEqual(cap);
    } finally {
      stop.abort();
      await Promise.all([loop, site]);
    }
  }, 90_000);
});
