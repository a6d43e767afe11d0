// A site with valid credentials that floods the coordinator with hellos, each naming a new process
// (a fresh `instance`), while a round waits for its update: each would be a restart, and a restart
// is logged and sends the site its task again. Over a real nats-server, the coordinator logs a few
// of them and then that it counts the rest, and keeps one resend of the task under way at a time
// (it used to log every one and start a resend per hello, each tried until the round's deadline).
import type { Msg } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { Task, Welcome } from '../../core/protocol/messages.ts';
import { newNonce } from '../../core/protocol/signing.ts';
import { RESTART_LOGS_PER_MINUTE } from '../../operator/coordinator/nats-coordinator.ts';
import { HOSPITAL_FEATURES } from '../../worker/data/synthetic/hospital.ts';
import { twoSites } from '../helpers/jobs.ts';
import { soon } from '../helpers/nats-clients.ts';
import { coordinatorInBackground, coordinatorStatus, helloUntilAnswered, jobOnServer, signedHello, siteModel, useCleanup } from '../helpers/nats-job.ts';

const decoder = new TextDecoder();
const cleanup = useCleanup();
const FLOOD = 200;

describe('a site that floods hellos, each from a "new process"', () => {
  it('is logged a few times and then counted, and its task is sent again once at a time, not once per hello', async () => {
    const job = twoSites('hello-flood', ['north', 'south'], { rounds: 1, sampling: { minSites: 1 }, aggregation: { roundDeadlineSeconds: 20 } });
    const on = await jobOnServer(job, cleanup);
    const { key, subj, auth, as } = on;
    const model = await siteModel(job, 0);
    const { logs } = await coordinatorInBackground(job, on, cleanup, { joinTimeoutMs: 500 });

    // North by hand: acknowledges its first task, then none (as a site would that is gone).
    const north = await as('north', auth.sites.north!.seed);
    const tasks: Msg[] = [];
    north.subscribe(subj.task('north'), {
      callback: (_err, m) => {
        tasks.push(m);
        if (tasks.length === 1) m.respond('');
      },
    });
    await north.flush();
    const hello = (instance: string) =>
      helloUntilAnswered(north, subj.hello('north'), () => signedHello(key, 'north', auth.sites.north!.seed, model, { features: HOSPITAL_FEATURES, instance }));
    expect((await hello(newNonce())).accepted).toBe(true);
    await soon(() => tasks.length === 1, 'the fit task of round 1', 10_000);
    expect(Task.parse(JSON.parse(decoder.decode(tasks[0]!.data)))).toMatchObject({ type: 'fit', round: 1 });

    for (let i = 0; i < FLOOD; i++) expect((await hello(newNonce())).accepted).toBe(true);
    // The resend under way (north does not answer it) is tried again every 2 s at most: in 3 s,
    // a handful of sendings, where one resend per hello made hundreds.
    const after = tasks.length;
    await new Promise((r) => setTimeout(r, 3000));
    expect(tasks.length - after).toBeLessThanOrEqual(3);
    expect(tasks.length).toBeLessThan(10);
    const restarts = logs.filter((l) => l.startsWith('site "north" started again'));
    expect(restarts.slice(0, RESTART_LOGS_PER_MINUTE)).toEqual(Array(RESTART_LOGS_PER_MINUTE).fill('site "north" started again'));
    expect(restarts.slice(RESTART_LOGS_PER_MINUTE)).toEqual([
      `site "north" started again more than ${RESTART_LOGS_PER_MINUTE} times within a minute: its further restarts are counted, and said in its next restart logged`,
    ]);
    expect(logs.filter((l) => l.includes('its fit task is sent again')).length).toBeLessThanOrEqual(3);
  }, 60_000);
});

describe('a site that floods the coordinator with hellos of 1 MiB', () => {
  it('has them refused unread past its budget (CONSORT_R_HELLO_RATE), counted and logged once; another site is welcomed meanwhile', async () => {
    const job = twoSites('hello-bytes', ['north', 'south']);
    const on = await jobOnServer(job, cleanup);
    const { key, subj, auth, as } = on;
    const model = await siteModel(job, 0);
    const { logs } = await coordinatorInBackground(job, on, cleanup, { joinTimeoutMs: 60_000 });
    const hello = async (site: 'north' | 'south', features: readonly string[]) => {
      const nc = await as(site, auth.sites[site]!.seed);
      const body = signedHello(key, site, auth.sites[site]!.seed, model, { features });
      return { body, welcome: await helloUntilAnswered(nc, subj.hello(site), body, 2000) };
    };
    // A wide table's column names: a hello of about 1 MiB (what a real site may send once a second).
    const wide = Array.from({ length: 4000 }, (_, i) => `column-${i}-`.padEnd(250, 'x'));
    const first = await hello('north', wide);
    expect(first.body.length).toBeGreaterThan(1_000_000);
    expect(first.welcome.accepted).toBe(true);
    const north = await as('north', auth.sites.north!.seed);
    const answers = await Promise.all(
      Array.from({ length: 40 }, () =>
        north.request(subj.hello('north'), first.body, { timeout: 10_000 }).then((m) => Welcome.parse(JSON.parse(decoder.decode(m.data)))),
      ),
    );
    const refused = answers.filter((a) => !a.accepted);
    // The budget takes about eight of them at once; the rest are refused, unread.
    expect(refused.length).toBeGreaterThanOrEqual(25);
    for (const a of refused) expect(a.code).toBe('CONSORT_R_HELLO_RATE');
    expect((await hello('south', wide)).welcome.accepted).toBe(true);
    expect(logs.filter((l) => l.includes('[CONSORT_R_HELLO_RATE]'))).toEqual([
      `refused site "north": the site's hellos come at more than 2 MiB a second (each counted as at least 16 KiB): refused unread; one a second is plenty [CONSORT_R_HELLO_RATE]`,
    ]);
    expect((await coordinatorStatus(on)).rejections.CONSORT_R_HELLO_RATE).toBe(refused.length);
  }, 60_000);
});
