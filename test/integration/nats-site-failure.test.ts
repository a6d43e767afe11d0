// A site whose training fails says so (a signed failure report on its answer's subject): over a
// real nats-server the round counts it as failed with its reason at once, instead of waiting for
// the round's deadline (ten minutes here, far past the test's limit): with a quorum left the
// job goes on; without one it fails, naming the site's reason.
import type { NatsConnection } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import type { SiteFailure } from '../../core/protocol/transport.ts';
import type { Failpoint } from '../../worker/nats/failpoints.ts';
import { runSite } from '../../worker/nats/site-runner.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { jobOnServer, startCoordinator, useCleanup } from '../helpers/nats-job.ts';

const cleanup = useCleanup();

async function federation(name: string, minSites: number, failpoints: Record<string, Failpoint[]>) {
  const job = FederatedJob.parse(
    jobManifest(
      name,
      hospitalSpec(
        [
          { name: 'a', samples: 60 },
          { name: 'b', samples: 60 },
        ],
        { rounds: 2, sampling: { minSites }, aggregation: { roundDeadlineSeconds: 600 } },
      ),
    ),
  );
  const on = await jobOnServer(job, cleanup);
  const { auth, as } = on;
  const failures: Array<{ round: number } & SiteFailure> = [];
  const { logs, coordinator } = await startCoordinator(job, on, {
    joinTimeoutMs: 60_000,
    events: { siteFailed: (round, f) => failures.push({ round, ...f }) },
  });
  const abort = new AbortController();
  cleanup.push(async () => abort.abort());
  const site = async (s: string, nc: NatsConnection) =>
    runSite({
      job,
      site: s,
      nc,
      seed: auth.sites[s]!.seed,
      baseDir: '.',
      backend: 'cpu',
      log: () => {},
      failpoints: failpoints[s] ?? [],
      signal: abort.signal,
    });
  const sites = [site('a', await as('a', auth.sites.a!.seed)), site('b', await as('b', auth.sites.b!.seed))];
  // A job that fails ends its sites with CONSORT_W_JOB_FAILED, maybe before a test awaits them: never unhandled.
  for (const s of sites) s.catch(() => {});
  return { coordinator, sites, failures, logs, abort };
}

describe('a site whose task fails', () => {
  it('is counted as failed at once, with its reason; the round goes on with the quorum left', async () => {
    const f = await federation('site-fails', 1, { b: [{ action: 'fail', task: 'fit', round: 1 }] });
    const result = await f.coordinator;
    await Promise.all(f.sites);
    expect(result.roundsCompleted).toBe(2);
    expect(result.rounds[0]!.participants).toEqual(['a']);
    expect(result.rounds[1]!.participants).toEqual(['a', 'b']);
    expect(f.failures).toEqual([{ round: 1, site: 'b', code: 'CONSORT_C_SITE_FAILED', reason: 'failpoint: the fit task of round 1 fails' }]);
    expect(f.logs).toContain('site "b" could not train in round 1: failpoint: the fit task of round 1 fails');
  });

  it('is named among the sites missing from the final figures when it cannot score the final model', async () => {
    const f = await federation('site-fails-final', 1, { b: [{ action: 'fail', task: 'evaluate', round: 2 }] });
    const result = await f.coordinator;
    await Promise.all(f.sites);
    expect(result.final.map((e) => e.site)).toEqual(['a']);
    expect(result.finalMissing).toEqual([{ site: 'b', code: 'CONSORT_C_SITE_FAILED', reason: 'failpoint: the evaluate task of round 2 fails' }]);
  });

  it('a site with no coordinator to answer it says that it is waiting, rather than nothing', async () => {
    const job = FederatedJob.parse(jobManifest('no-coordinator', hospitalSpec([{ name: 'a', samples: 40 }], { rounds: 1 })));
    const { auth, as } = await jobOnServer(job, cleanup);
    const abort = new AbortController();
    cleanup.push(async () => abort.abort());
    let said!: (line: string) => void;
    const waiting = new Promise<string>((resolve) => {
      said = resolve;
    });
    const site = runSite({
      job,
      site: 'a',
      nc: await as('a', auth.sites.a!.seed),
      seed: auth.sites.a!.seed,
      baseDir: '.',
      backend: 'cpu',
      heartbeatMs: 100,
      log: (l) => {
        if (l.includes('no coordinator')) said(l);
      },
      signal: abort.signal,
    });
    expect(await waiting).toMatch(
      /^site a: no coordinator of no-coordinator has answered for \d+ s; still waiting \(is it running, on this NATS server\? a job that already ended is not run again\)$/,
    );
    abort.abort();
    await site.catch(() => {});
  });

  it('fails the job at once when no quorum is left, naming the reason', async () => {
    const f = await federation('site-fails-quorum', 2, { b: [{ action: 'fail', task: 'fit', round: 1 }] });
    await expect(f.coordinator).rejects.toThrow('round 1: 1 of 2 sites answered, sampling.minSites is 2 (b: failpoint: the fit task of round 1 fails)');
    f.abort.abort();
    await Promise.allSettled(f.sites);
  });
});
