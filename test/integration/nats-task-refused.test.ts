// A site that cannot read its task (another protocol version, another job's file) answers it
// with a refusal: over a real nats-server the coordinator counts that site as failed for the task
// at once, with the site's reason and CONSORT_C_TASK_REFUSED, instead of taking the answer as a
// delivery and waiting out the round's deadline for an update that cannot come.
import type { Msg } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { jobTerms } from '../../core/job/terms.ts';
import { twoSites } from '../helpers/jobs.ts';
import { jobOnServer, realSite, signedHello, siteModel, startCoordinator, useCleanup } from '../helpers/nats-job.ts';

const cleanup = useCleanup();
const encoder = new TextEncoder();

describe('a site that refuses its task on receipt', () => {
  it('is failed for that task at once, with its reason and CONSORT_C_TASK_REFUSED, and the round goes on without it', async () => {
    // A deadline far longer than the job takes: without the refusal being read, each of the two
    // tasks (fit, final evaluation) waits it out and fails CONSORT_C_DEADLINE.
    const job = twoSites('task-refused', ['real', 'by-hand'], { rounds: 1, sampling: { minSites: 1 }, aggregation: { roundDeadlineSeconds: 20 } });
    const on = await jobOnServer(job, cleanup);
    const { key, subj, auth, as } = on;
    const model = await siteModel(job, 1);
    const byHand = await as('by-hand', auth.sites['by-hand']!.seed);
    const tasks: string[] = [];
    byHand.subscribe(subj.task('by-hand'), {
      callback: (_err, msg: Msg) => {
        tasks.push((JSON.parse(new TextDecoder().decode(msg.data)) as { type: string }).type);
        msg.respond(encoder.encode(JSON.stringify({ type: 'ack', accepted: false, code: 'CONSORT_R_MALFORMED', reason: 'Unrecognized key: "shards"' })));
      },
    });
    await byHand.flush();
    const hello = () => signedHello(key, 'by-hand', auth.sites['by-hand']!.seed, model, { terms: jobTerms(job.spec) });
    const { logs, coordinator } = await startCoordinator(job, on, {
      log: (l) => {
        // by-hand says hello once the real site is in (its layout is then the job's).
        if (l.includes('site "real" joined')) void byHand.request(subj.hello('by-hand'), hello(), { timeout: 5000 }).catch(() => {});
      },
      joinTimeoutMs: 60_000,
    });
    const site = realSite(job, on);
    const result = await coordinator;
    await site;
    expect(tasks).toEqual(['fit', 'evaluate']);
    expect(result.rounds.map((r) => r.participants)).toEqual([['real']]);
    expect(result.finalMissing).toEqual([
      {
        site: 'by-hand',
        code: 'CONSORT_C_TASK_REFUSED',
        reason: 'the site refused its evaluate task: Unrecognized key: "shards" [CONSORT_R_MALFORMED]',
      },
    ]);
    expect(logs).toContain('site "by-hand": the site refused its fit task: Unrecognized key: "shards" [CONSORT_R_MALFORMED]');
  }, 120_000);
});
