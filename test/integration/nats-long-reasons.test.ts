// A refusal's reason may be long (the column names that differ, of a wide table), and the
// protocol's messages take reasons of at most REASON_MAX_CHARS: over a real nats-server, a real
// site refused because another site, joined first, has other columns (4000 of them, 250
// characters each) is told so in a Welcome it can read, and stops with the refusal, its reason
// cut and marked. (The coordinator used to send the whole reason, which the site dropped as
// malformed: it said hello for ever without learning that it was refused.)
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { REASON_MAX_CHARS, Welcome } from '../../core/protocol/messages.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { runSite } from '../../worker/nats/site-runner.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { jobOnServer, signedHello, siteModel, useCleanup } from '../helpers/nats-job.ts';

const decoder = new TextDecoder();
const cleanup = useCleanup();

describe('a refusal whose reason is longer than a Welcome takes', () => {
  it('reaches the site cut to REASON_MAX_CHARS, and the site stops with it', async () => {
    const job = FederatedJob.parse(
      jobManifest(
        'long-reason',
        hospitalSpec([
          { name: 'wide', samples: 80 },
          { name: 'real', samples: 80 },
        ]),
      ),
    );
    const { key, subj, auth, as } = await jobOnServer(job, cleanup);
    const model = await siteModel(job, 0);
    const stop = new AbortController();
    const coordinator = runNatsCoordinator({
      job,
      nc: await as(COORDINATOR_USER, auth.coordinator.seed),
      siteKeys: auth.keys.sites,
      log: () => {},
      joinTimeoutMs: 60_000,
      signal: stop.signal,
    });
    coordinator.catch(() => {});
    cleanup.push(async () => {
      stop.abort();
      await coordinator.catch(() => {});
    });
    // Site "wide" joins first, by hand, with the names of a wide table's columns.
    const columns = Array.from({ length: 4000 }, (_, i) => `column-${i}-`.padEnd(250, 'x'));
    const wide = await as('wide', auth.sites.wide!.seed);
    for (;;) {
      const reply = await wide
        .request(subj.hello('wide'), signedHello(key, 'wide', auth.sites.wide!.seed, model, { features: columns }), { timeout: 2000 })
        .catch(() => undefined);
      if (reply) {
        expect(Welcome.parse(JSON.parse(decoder.decode(reply.data))).accepted).toBe(true);
        break;
      }
    }
    const logs: string[] = [];
    const real = runSite({
      job,
      site: 'real',
      nc: await as('real', auth.sites.real!.seed),
      seed: auth.sites.real!.seed,
      baseDir: '.',
      backend: 'cpu',
      log: (l) => logs.push(l),
    });
    const err = await Promise.race([
      real.then(
        () => undefined,
        (e: unknown) => e,
      ),
      new Promise((r) => setTimeout(() => r('still saying hello after 20 s'), 20_000)),
    ]);
    expect(err).toMatchObject({ code: 'CONSORT_W_REFUSED' });
    const reason = (err as Error).message.match(/refused by the coordinator: (.*) \[CONSORT_R_WRONG_SHAPE\]$/s)?.[1];
    expect(reason).toMatch(/^the site's feature columns are not those of site "wide", which joined first: /);
    expect(reason).toHaveLength(REASON_MAX_CHARS);
    expect(reason!.endsWith('…')).toBe(true);
  }, 60_000);
});
