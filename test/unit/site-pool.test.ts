// The local runner's thread pool at a run's end: a site far slower than the round deadline may
// still be training a task the coordinator gave up on. The model's export used to go to thread 0
// whatever it held, and the run then sat for as long as that abandoned work took (a minute after
// its last round, behind a slow site); it goes to the idle thread now.
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { layoutSize } from '../../core/model/layout.ts';
import { SitePool } from '../../worker/site-pool.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';

describe('SitePool', () => {
  it("exports the model on an idle thread while another still trains a slow site's task", async () => {
    const spec = FederatedJob.parse(
      jobManifest(
        'pool-export',
        hospitalSpec(
          [
            { name: 'slow', samples: 8_000 },
            { name: 'fast', samples: 60 },
          ],
          { training: { epochs: 20, batchSize: 32, optimizer: 'sgd', learningRate: 0.1 } },
        ),
      ),
    ).spec;
    const pool = SitePool.start({ spec, baseDir: '.', backend: 'auto' }, 2);
    try {
      const described = await Promise.all([pool.describe(0), pool.describe(1)]);
      const prepared = await pool.prepare(described[0]!.labels, described[0]!.sampleShape);
      const global = new Float32Array(layoutSize(prepared.layout)).fill(0.01);
      // The slow site (site 0) on its home thread, thread 0: 20 epochs of 5,600 examples.
      let trained = false;
      const slow = pool.fit({ round: 1, siteIndex: 0, global, proximalMu: 0 }).then((r) => {
        trained = true;
        return r;
      });
      const exported = await pool.exportModel(global);
      expect(exported.weightData.byteLength).toBe(4 * global.length);
      expect(trained, 'the export waited for the slow training').toBe(false);
      expect((await slow).samples).toBeGreaterThan(5_000);
    } finally {
      await pool.close();
    }
  }, 120_000);
});
