import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { jobTerms } from '../../core/job/terms.ts';
import { updateEnvelope, Welcome } from '../../core/protocol/messages.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { newNonce, signEnvelope } from '../../core/protocol/signing.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { HOSPITAL_FEATURES } from '../../worker/data/synthetic/hospital.ts';
import { runSite } from '../../worker/nats/site-runner.ts';
import { hospitalSpec, jobManifest, twoSites } from '../helpers/jobs.ts';
import { coordinatorInBackground, helloUntilAnswered, jobOnServer, realSite, signedHello, siteModel, useCleanup } from '../helpers/nats-job.ts';

const decoder = new TextDecoder();
const cleanup = useCleanup();

describe('a hello whose feature columns differ from the joined sites', () => {
  it('is refused with CONSORT_R_WRONG_SHAPE, naming the difference, and counted; the same columns are welcomed', async () => {
    const job = twoSites('hello-features', ['real', 'by-hand'], { rounds: 1, sampling: { minSites: 1 } });
    const { key, subj, auth, as } = await jobOnServer(job, cleanup);
    const model = await siteModel(job, 1);
    const coordinatorLogs: string[] = [];
    let joined!: () => void;
    const realJoined = new Promise<void>((resolve) => {
      joined = resolve;
    });
    const coordinator = runNatsCoordinator({
      job,
      nc: await as(COORDINATOR_USER, auth.coordinator.seed),
      siteKeys: auth.keys.sites,
      log: (l) => {
        coordinatorLogs.push(l);
        if (l.includes('site "real" joined')) joined();
      },
      joinTimeoutMs: 60_000,
    });
    const site = realSite(job, { auth, as });
    await realJoined;

    const byHand = await as('by-hand', auth.sites['by-hand']!.seed);
    const hello = async (features: readonly string[]) =>
      Welcome.parse(
        JSON.parse(
          decoder.decode(
            (await byHand.request(subj.hello('by-hand'), signedHello(key, 'by-hand', auth.sites['by-hand']!.seed, model, { features }), { timeout: 5000 }))
              .data,
          ),
        ),
      );
    const reversed = await hello([...HOSPITAL_FEATURES].reverse());
    expect(reversed).toMatchObject({ accepted: false, code: 'CONSORT_R_WRONG_SHAPE' });
    expect(reversed.reason).toContain(
      `the site's feature columns are not those of site "real", which joined first: the same columns in another order: column 1 is "${HOSPITAL_FEATURES[0]}" at site "real"`,
    );
    const renamed = await hello([...HOSPITAL_FEATURES.slice(1), 'weight']);
    expect(renamed).toMatchObject({ accepted: false, code: 'CONSORT_R_WRONG_SHAPE' });
    expect(renamed.reason).toContain(`only site "real" has "${HOSPITAL_FEATURES[0]}"; only site "by-hand" has "weight"`);
    expect(coordinatorLogs.filter((l) => l.includes('refused site "by-hand"') && l.includes('CONSORT_R_WRONG_SHAPE'))).toHaveLength(1);

    // Another seed in the site's copy of the job: refused, naming it.
    const otherSeed = Welcome.parse(
      JSON.parse(
        decoder.decode(
          (
            await byHand.request(
              subj.hello('by-hand'),
              signedHello(key, 'by-hand', auth.sites['by-hand']!.seed, model, {
                features: HOSPITAL_FEATURES,
                terms: jobTerms({ ...job.spec, seed: job.spec.seed + 1 }),
              }),
              { timeout: 5000 },
            )
          ).data,
        ),
      ),
    );
    expect(otherSeed).toMatchObject({ accepted: false, code: 'CONSORT_R_WRONG_JOB' });
    expect(otherSeed.reason).toContain(`spec.seed (${job.spec.seed} at the coordinator, ${job.spec.seed + 1} at the site)`);

    expect(await hello(HOSPITAL_FEATURES)).toMatchObject({ accepted: true });

    // by-hand never answers its tasks: the job goes on with the real site (minSites 1).
    const result = await coordinator;
    await site;
    expect(result.rejections.CONSORT_R_WRONG_SHAPE).toBe(2);
    expect(result.rejections.CONSORT_R_WRONG_JOB).toBe(1);
    expect(result.roundsCompleted).toBe(1);

    // The job again, with another model, on the same server: its checkpoint is not this training.
    const changed = FederatedJob.parse({ ...job, spec: { ...job.spec, model: { type: 'mlp', hidden: [4] } } });
    await expect(
      runNatsCoordinator({
        job: changed,
        nc: await as(COORDINATOR_USER, auth.coordinator.seed),
        siteKeys: auth.keys.sites,
        log: () => {},
        joinTimeoutMs: 5000,
      }),
    ).rejects.toMatchObject({ code: 'CONSORT_C_CHECKPOINT', message: expect.stringContaining('spec.model.hidden ([16] in the checkpoint, [4] now)') });

    // The same job again: it says at once that the job is over and ends it again from its
    // checkpoint (final scores and all), without waiting for sites that are gone.
    const again: string[] = [];
    const rerun = await runNatsCoordinator({
      job,
      nc: await as(COORDINATOR_USER, auth.coordinator.seed),
      siteKeys: auth.keys.sites,
      log: (l) => again.push(l),
      joinTimeoutMs: 30_000,
    });
    expect(again, again.join('\n')).toContain(
      `hello-features was over (its final model scored by its sites, its scores in the checkpoint): it ends again without its sites; to train anew, run it under another name, or delete its state bucket consort-default_hello-features-state`,
    );
    expect(rerun.model.sha256).toBe(result.model.sha256);
    expect(rerun.finalMissing).toEqual(result.finalMissing);
  }, 90_000);
});

describe('a site whose copy of the job has another seed', () => {
  it('is refused by the coordinator and stops with CONSORT_W_REFUSED, naming the seeds', async () => {
    const job = FederatedJob.parse(jobManifest('other-seed', hospitalSpec([{ name: 'alone', samples: 60 }], { rounds: 50 })));
    const on = await jobOnServer(job, cleanup);
    await coordinatorInBackground(job, on, cleanup, { joinTimeoutMs: 60_000 });
    const reseeded = FederatedJob.parse({ ...job, spec: { ...job.spec, seed: 9 } });
    await expect(realSite(reseeded, on, 'alone')).rejects.toMatchObject({
      code: 'CONSORT_W_REFUSED',
      message: expect.stringContaining(`spec.seed (${job.spec.seed} at the coordinator, 9 at the site)`),
    });
  }, 60_000);
});

describe('a site refused at its hello, and never taken', () => {
  it('is missing from the final evaluation with its refusal as the reason, not "no responders"', async () => {
    const job = twoSites('hello-refused-missing', ['real', 'by-hand'], { rounds: 1, sampling: { minSites: 1 } });
    const { key, subj, auth, as } = await jobOnServer(job, cleanup);
    const model = await siteModel(job, 1);
    const byHand = await as('by-hand', auth.sites['by-hand']!.seed);
    const reversed = signedHello(key, 'by-hand', auth.sites['by-hand']!.seed, model, { features: [...HOSPITAL_FEATURES].reverse() });
    const coordinator = runNatsCoordinator({
      job,
      nc: await as(COORDINATOR_USER, auth.coordinator.seed),
      siteKeys: auth.keys.sites,
      log: (l) => {
        // Once the real site is in, by-hand says hello with its columns in another order.
        if (l.includes('site "real" joined')) void byHand.request(subj.hello('by-hand'), reversed, { timeout: 5000 }).catch(() => {});
      },
      joinTimeoutMs: 3000,
    });
    const site = realSite(job, { auth, as });
    const result = await coordinator;
    await site;
    expect(result.finalMissing).toEqual([
      {
        site: 'by-hand',
        code: 'CONSORT_C_UNREACHABLE',
        reason: expect.stringMatching(
          /^its hello was refused: the site's feature columns are not those of site "real", which joined first: .* \[CONSORT_R_WRONG_SHAPE\]$/,
        ),
      },
    ]);
  }, 60_000);
});

/** A coordinator of `job` (its log lines in `logs`), and hellos of site north by hand, each with a process instance id. */
async function hellosOfNorth(job: FederatedJob) {
  const on = await jobOnServer(job, cleanup);
  const { key, subj, auth, as } = on;
  const model = await siteModel(job, 0);
  const { logs, stop, coordinator } = await coordinatorInBackground(job, on, cleanup, { joinTimeoutMs: 60_000 });
  const north = await as('north', auth.sites.north!.seed);
  const hello = (instance: string, extra: { keepsState?: boolean } = {}) =>
    helloUntilAnswered(north, subj.hello('north'), () =>
      signedHello(key, 'north', auth.sites.north!.seed, model, { features: HOSPITAL_FEATURES, instance, ...extra }),
    );
  return { logs, hello, stop, coordinator };
}

describe('two processes of one site', () => {
  it('the later one is refused (CONSORT_R_SITE_TWICE) once the earlier says hello again; a restart (the earlier silent) is not', async () => {
    const job = twoSites('site-twice', ['north', 'south'], { rounds: 1 });
    const { logs, hello, stop, coordinator } = await hellosOfNorth(job);
    const [a, b, c] = ['A'.repeat(22), 'B'.repeat(22), 'C'.repeat(22)];
    expect((await hello(a)).accepted).toBe(true);
    // A restart: b replaces a, which says nothing more.
    expect((await hello(b)).accepted).toBe(true);
    expect(logs).toContain('site "north" started again');
    // c replaces b, and b is still there: b stays the site, c is refused from then on.
    expect((await hello(c)).accepted).toBe(true);
    expect((await hello(b)).accepted).toBe(true);
    const refused = await hello(c);
    expect(refused).toMatchObject({ accepted: false, code: 'CONSORT_R_SITE_TWICE' });
    expect(refused.reason).toBe(
      'another process of site "north", started before this one, is still running (both say hello, and both would take its tasks): this one stops; a site runs once',
    );
    expect((await hello(b)).accepted).toBe(true);
    expect((await hello(c)).code).toBe('CONSORT_R_SITE_TWICE');
    // Logged once, counted each time.
    expect(logs.filter((l) => l.includes('[CONSORT_R_SITE_TWICE]'))).toHaveLength(1);
    stop.abort();
    await expect(coordinator).rejects.toMatchObject({ code: 'CONSORT_C_ABORTED' });
  }, 60_000);
});

describe('a site restarted under top-k compression and SCAFFOLD', () => {
  it('is said to have started its residual and control variate over: the run no longer ends in the bytes of an uninterrupted one', async () => {
    const job = twoSites('restart-state', ['north', 'south'], { rounds: 1, compression: { codec: 'topk', topkFraction: 0.1 }, strategy: { name: 'scaffold' } });
    const { logs, hello, stop, coordinator } = await hellosOfNorth(job);
    expect((await hello('A'.repeat(22))).accepted).toBe(true);
    expect((await hello('B'.repeat(22))).accepted).toBe(true);
    expect(logs).toContain(
      'site "north" started again: its top-k residual (what its earlier updates left unsent) and its SCAFFOLD control variate ended with the old process and start over, so the run no longer ends in the bytes of an uninterrupted one (consort site --state DIR keeps them)',
    );
    // A process that keeps them on its disk (--state) says so: nothing is said lost.
    expect((await hello('C'.repeat(22), { keepsState: true })).accepted).toBe(true);
    expect(logs).toContain(
      'site "north" started again; it keeps its top-k residual (what its earlier updates left unsent) and its SCAFFOLD control variate on its disk, and carries on from there',
    );
    stop.abort();
    await expect(coordinator).rejects.toMatchObject({ code: 'CONSORT_C_ABORTED' });
  }, 60_000);
});

describe('a site restarted under int8 compression', () => {
  it('is said to have started its residual over: int8 keeps error feedback as top-k does', async () => {
    const job = twoSites('restart-int8', ['north', 'south'], { rounds: 1, compression: { codec: 'int8' } });
    const { logs, hello, stop, coordinator } = await hellosOfNorth(job);
    expect((await hello('A'.repeat(22))).accepted).toBe(true);
    expect((await hello('B'.repeat(22))).accepted).toBe(true);
    expect(logs).toContain(
      'site "north" started again: its int8 residual (what its earlier updates left unsent) ended with the old process and start over, so the run no longer ends in the bytes of an uninterrupted one (consort site --state DIR keeps them)',
    );
    stop.abort();
    await expect(coordinator).rejects.toMatchObject({ code: 'CONSORT_C_ABORTED' });
  }, 60_000);
});

describe('a second real process of a site', () => {
  it('stops at its refusal: it takes no more tasks (the one it held may still be answered), and settles before the job ends, which the first one finishes', async () => {
    const job = twoSites('site-twin', ['north', 'south'], { rounds: 5, training: { epochs: 300, batchSize: 16, learningRate: 0.05 } });
    const { auth, as } = await jobOnServer(job, cleanup);
    let second!: () => void;
    const roundTwo = new Promise<void>((resolve) => {
      second = resolve;
    });
    const coordinator = runNatsCoordinator({
      job,
      nc: await as(COORDINATOR_USER, auth.coordinator.seed),
      siteKeys: auth.keys.sites,
      log: () => {},
      joinTimeoutMs: 60_000,
      events: {
        roundStarted: (r) => {
          if (r === 2) second();
        },
      },
    });
    let jobEnded = 0;
    coordinator.then(
      () => (jobEnded = Date.now()),
      () => {},
    );
    const site = async (name: string, log: (l: string) => void = () => {}) =>
      // Hellos every 100 ms: the earlier process says hello again, and the later is refused, within a round.
      runSite({
        job,
        site: name,
        nc: await as(name, auth.sites[name]!.seed),
        seed: auth.sites[name]!.seed,
        baseDir: '.',
        backend: 'cpu',
        log,
        heartbeatMs: 100,
      });
    const sites = [site('north'), site('south')];
    await roundTwo;
    const twinLog: string[] = [];
    let twinSettled = 0;
    /** What the twin logged after its runner had settled: work it left running. */
    const afterSettled: string[] = [];
    const twin = site('north', (l) => {
      twinLog.push(l);
      if (twinSettled > 0) afterSettled.push(l);
    }).finally(() => (twinSettled = Date.now()));
    await expect(twin).rejects.toMatchObject({ code: 'CONSORT_W_REFUSED', message: expect.stringContaining('[CONSORT_R_SITE_TWICE]') });
    const result = await coordinator;
    await Promise.all(sites);
    expect(result.roundsCompleted).toBe(5);
    expect(twinSettled).toBeGreaterThan(0);
    expect(twinSettled, twinLog.join('\n')).toBeLessThan(jobEnded);
    // Nothing runs on once it has settled (tasks queued while it finished its last one kept training and retrying).
    expect(afterSettled).toEqual([]);
    const refusal = twinLog.findIndex((l) => l.includes('CONSORT_R_SITE_TWICE'));
    expect(refusal, twinLog.join('\n')).toBeGreaterThanOrEqual(0);
    // At most the task it held when refused (its update may still be answered); none taken after.
    const rounds = new Set(twinLog.slice(refusal + 1).flatMap((l) => [...l.matchAll(/round (\d+)/g)].map((r) => r[1])));
    expect(rounds.size, twinLog.join('\n')).toBeLessThanOrEqual(1);
  }, 120_000);
});

describe('a coordinator whose sites do not come', () => {
  it('says so while it waits, naming the sites it misses', async () => {
    const job = twoSites('nobody-came', ['north', 'south'], { rounds: 1 });
    const { auth, as } = await jobOnServer(job, cleanup);
    const logs: string[] = [];
    const stop = new AbortController();
    const coordinator = runNatsCoordinator({
      job,
      nc: await as(COORDINATOR_USER, auth.coordinator.seed),
      siteKeys: auth.keys.sites,
      log: (l) => logs.push(l),
      joinTimeoutMs: 60_000,
      waitingLogMs: 200,
      signal: stop.signal,
    });
    const deadline = Date.now() + 20_000;
    while (!logs.some((l) => l.startsWith('waiting for sites')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    stop.abort();
    await expect(coordinator).rejects.toMatchObject({ code: 'CONSORT_C_ABORTED' });
    expect(logs).toContain('waiting for sites: 0 of 2 joined (at least 1 needed); missing north, south');
  }, 60_000);
});

/**
 * A job of a real site and "by-hand", played by the test: alive (it says hello every 200 ms), it
 * acknowledges each task and hands it to `onTask`. Returns what the test needs to go on.
 */
async function withSiteByHand(name: string, extra: Record<string, unknown>, onTask: (task: { type: string; round: number; taskId: string }) => void) {
  const job = twoSites(name, ['real', 'by-hand'], extra);
  const { key, subj, auth, as } = await jobOnServer(job, cleanup);
  const model = await siteModel(job, 1);
  const byHand = await as('by-hand', auth.sites['by-hand']!.seed);
  const hello = () => signedHello(key, 'by-hand', auth.sites['by-hand']!.seed, model, { features: HOSPITAL_FEATURES });
  const beat = setInterval(() => byHand.request(subj.hello('by-hand'), hello(), { timeout: 1000 }).catch(() => {}), 200);
  cleanup.push(async () => clearInterval(beat));
  byHand.subscribe(subj.task('by-hand'), {
    callback: (_e, m) => {
      m.respond(new TextEncoder().encode(JSON.stringify({ type: 'ack', accepted: true })));
      onTask(JSON.parse(decoder.decode(m.data)) as { type: string; round: number; taskId: string });
    },
  });
  const site = realSite(job, { auth, as });
  site.catch(() => {});
  return { job, key, subj, auth, as, byHand, site, silence: () => clearInterval(beat) };
}

describe('a site whose only answer in a round was refused', () => {
  it('fails the round with the refusal in its reason, not as a site that never answered', async () => {
    // by-hand answers its fit task with an envelope signed by another site's key.
    let answer: (task: { round: number; taskId: string }) => void = () => {};
    const f = await withSiteByHand('answer-refused', { rounds: 1, sampling: { minSites: 1 }, aggregation: { roundDeadlineSeconds: 1.5 } }, (task) => {
      if (task.type === 'fit') answer(task);
    });
    answer = (task) => {
      const envelope = updateEnvelope(f.key, 'by-hand', task, newNonce(), {
        samples: 10,
        trainLoss: 0.5,
        steps: 1,
        codec: 'none',
        object: { bucket: 'nowhere', name: 'nothing', sha256: '0'.repeat(64), size: 1 },
      });
      const forged = new TextEncoder().encode(JSON.stringify(signEnvelope(envelope, f.auth.sites.real!.seed)));
      void f.byHand.request(f.subj.update('by-hand'), forged, { timeout: 5000 }).catch(() => {});
    };
    const failures: string[] = [];
    const result = await runNatsCoordinator({
      job: f.job,
      nc: await f.as(COORDINATOR_USER, f.auth.coordinator.seed),
      siteKeys: f.auth.keys.sites,
      log: () => {},
      joinTimeoutMs: 30_000,
      events: { siteFailed: (_round, x) => failures.push(`${x.site}: ${x.reason} [${x.code}]`) },
    });
    await f.site;
    expect(result.rounds[0]!.participants).toEqual(['real']);
    expect(failures.find((x) => x.startsWith('by-hand: no answer before the round deadline; its answer was refused: '))).toMatch(
      /\[CONSORT_R_BAD_SIGNATURE\] \[CONSORT_C_DEADLINE\]$/,
    );
  }, 60_000);
});

describe('a round waiting for a site that went silent', () => {
  it('says whom it awaits while it waits, and that the site is no longer heard from', async () => {
    // by-hand stops saying hello once it has its fit task, as a site whose process died.
    let silence = () => {};
    const f = await withSiteByHand('went-silent', { rounds: 1, sampling: { minSites: 1 }, aggregation: { roundDeadlineSeconds: 8 } }, (task) => {
      if (task.type === 'fit') silence();
    });
    silence = f.silence;
    const logs: string[] = [];
    const result = await runNatsCoordinator({
      job: f.job,
      nc: await f.as(COORDINATOR_USER, f.auth.coordinator.seed),
      siteKeys: f.auth.keys.sites,
      log: (l) => logs.push(l),
      joinTimeoutMs: 30_000,
      waitingLogMs: 300,
    });
    await f.site;
    expect(result.rounds[0]!.participants).toEqual(['real']);
    const waiting = logs.filter((l) => l.startsWith('round 1: updates still awaited from by-hand (1 of 2 in; '));
    expect(waiting.length, logs.join('\n')).toBeGreaterThan(3);
    expect(waiting.at(-1)).toMatch(/deadline in \d+ s\); by-hand not heard from for [5-9] s \(its process stopped, or lost its NATS connection\?\)$/);
  }, 60_000);
});

describe('a job that fails', () => {
  it('is announced: its sites stop with CONSORT_W_JOB_FAILED and the reason, instead of waiting for ever', async () => {
    // by-hand acknowledges its tasks and never answers them: round 1 misses its quorum of 2.
    const f = await withSiteByHand('job-fails', { rounds: 3, sampling: { minSites: 2 }, aggregation: { roundDeadlineSeconds: 1.5 } }, () => {});
    await expect(
      runNatsCoordinator({
        job: f.job,
        nc: await f.as(COORDINATOR_USER, f.auth.coordinator.seed),
        siteKeys: f.auth.keys.sites,
        log: () => {},
        joinTimeoutMs: 30_000,
      }),
    ).rejects.toMatchObject({ code: 'CONSORT_C_QUORUM' });
    await expect(f.site).rejects.toMatchObject({
      code: 'CONSORT_W_JOB_FAILED',
      message: expect.stringMatching(/^site real: the coordinator ended the job in a failure: round 1: 1 of 2 sites answered/),
    });
  }, 60_000);
});
