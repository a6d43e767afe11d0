// A refusal's reason may be long (the column names that differ, of a wide table), and the
// protocol's messages take reasons of at most REASON_MAX_CHARS: over a real nats-server, a real
// site refused because another site, joined first, has other columns (4000 of them, 250
// characters each) is told so in a Welcome it can read, and stops with the refusal, its reason
// cut and marked. (The coordinator used to send the whole reason, which the site dropped as
// malformed: it said hello for ever without learning that it was refused.)
import { describe, expect, it } from 'vitest';
import { REASON_MAX_CHARS } from '../../core/protocol/messages.ts';
import { twoSites } from '../helpers/jobs.ts';
import { coordinatorInBackground, helloUntilAnswered, jobOnServer, realSite, signedHello, siteModel, useCleanup } from '../helpers/nats-job.ts';

const cleanup = useCleanup();

describe('a refusal whose reason is longer than a Welcome takes', () => {
  it('reaches the site cut to REASON_MAX_CHARS, and the site stops with it', async () => {
    const job = twoSites('long-reason', ['wide', 'real']);
    const on = await jobOnServer(job, cleanup);
    const { key, subj, auth, as } = on;
    const model = await siteModel(job, 0);
    await coordinatorInBackground(job, on, cleanup, { joinTimeoutMs: 60_000 });
    // Site "wide" joins first, by hand, with the names of a wide table's columns.
    const columns = Array.from({ length: 4000 }, (_, i) => `column-${i}-`.padEnd(250, 'x'));
    const wide = await as('wide', auth.sites.wide!.seed);
    const welcome = await helloUntilAnswered(
      wide,
      subj.hello('wide'),
      () => signedHello(key, 'wide', auth.sites.wide!.seed, model, { features: columns }),
      2000,
    );
    expect(welcome.accepted).toBe(true);
    const real = realSite(job, on);
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
