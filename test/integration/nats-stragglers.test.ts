// Stragglers over a real nats-server: a site whose update arrives after its round closed is
// refused with a reason in sync mode, and folded into the next round with a staleness weight in
// buffered mode (after FedBuff). Site "fast" is a real site runner; site "slow" is played by the
// test, which answers each task only once the round has moved on.
import { Objm } from '@nats-io/obj';
import { describe, expect, it } from 'vitest';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { encodeUpdate } from '../../core/protocol/codecs.ts';
import { sha256Hex } from '../../core/protocol/digest.ts';
import { Ack, FitTask, updateEnvelope } from '../../core/protocol/messages.ts';
import { newNonce, signEnvelope } from '../../core/protocol/signing.ts';
import { buckets, objectNames } from '../../core/protocol/subjects.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { runSite } from '../../worker/nats/site-runner.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { jobOnServer, realSite, signedHello, siteModel, useCleanup } from '../helpers/nats-job.ts';

const decoder = new TextDecoder();
const encoder = new TextEncoder();

const cleanup = useCleanup();

async function straggle(mode: 'sync' | 'buffered') {
  const job = FederatedJob.parse(
    jobManifest(
      `late-${mode}`,
      hospitalSpec(
        [
          { name: 'fast', samples: 120 },
          { name: 'slow', samples: 120 },
        ],
        { rounds: 3, aggregation: { mode, roundDeadlineSeconds: 1.5 }, sampling: { minSites: 1 } },
      ),
    ),
  );
  const { key, subj, auth, as } = await jobOnServer(job, cleanup);
  // The slow site's model layout, as a real site would build it.
  const model = await siteModel(job, 1);
  const { layout } = model;

  const slow = await as('slow', auth.sites.slow!.seed);
  const acks: Ack[] = [];
  let lastRoundStarted = 0;
  slow.subscribe(subj.round, {
    callback: (_e, m) => {
      const n = JSON.parse(decoder.decode(m.data)) as { phase: string; round: number };
      if (n.phase === 'started') lastRoundStarted = n.round;
    },
  });
  const hello = () => signedHello(key, 'slow', auth.sites.slow!.seed, model);
  const beat = setInterval(() => slow.request(subj.hello('slow'), hello(), { timeout: 1000 }).catch(() => {}), 300);
  cleanup.push(async () => clearInterval(beat));
  // The coordinator creates the buckets: open ours once a task shows it is up.
  const objm = new Objm(slow);
  slow.subscribe(subj.task('slow'), {
    callback: (_e, m) => {
      const task = FitTask.safeParse(JSON.parse(decoder.decode(m.data)));
      m.respond(encoder.encode(JSON.stringify({ type: 'ack', accepted: true })));
      if (!task.success || task.data.round !== 1) return; // one late update is the point
      void (async () => {
        // Answer only after the next round has started: this update is one round late.
        while (lastRoundStarted <= task.data.round) await new Promise((r) => setTimeout(r, 50));
        const delta = new Float32Array(layout.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0)).fill(1e-3);
        const { bytes } = encodeUpdate(delta, layout, job.spec.compression);
        const nonce = newNonce();
        const name = objectNames.update(task.data.round, nonce);
        const updates = await objm.open(buckets(key).updates('slow'));
        await updates.putBlob({ name }, bytes);
        const env = updateEnvelope(key, 'slow', task.data, nonce, {
          samples: 84,
          trainLoss: 0.5,
          steps: 6,
          codec: 'none',
          object: { bucket: buckets(key).updates('slow'), name, sha256: sha256Hex(bytes), size: bytes.length },
        });
        const reply = await slow.request(subj.update('slow'), encoder.encode(JSON.stringify(signEnvelope(env, auth.sites.slow!.seed))), { timeout: 5000 });
        acks.push(Ack.parse(JSON.parse(decoder.decode(reply.data))));
      })();
    },
  });

  const fast = await as('fast', auth.sites.fast!.seed);
  const siteRun = runSite({ job, site: 'fast', nc: fast, seed: auth.sites.fast!.seed, baseDir: '.', backend: 'cpu', log: () => {} });
  const coordinator = await as(COORDINATOR_USER, auth.coordinator.seed);
  const logs: string[] = [];
  const result = await runNatsCoordinator({ job, nc: coordinator, siteKeys: auth.keys.sites, log: (l) => logs.push(l), joinTimeoutMs: 10_000, aliveMs: 3000 });
  await siteRun;
  return { result, acks, logs };
}

/** Site north's real runner, its log kept; `saidIt` resolves at the first line `until` picks. */
async function northLogging(
  job: FederatedJob,
  auth: Awaited<ReturnType<typeof jobOnServer>>['auth'],
  as: Awaited<ReturnType<typeof jobOnServer>>['as'],
  until: (line: string) => boolean,
) {
  const logs: string[] = [];
  let said!: () => void;
  const saidIt = new Promise<void>((resolve) => {
    said = resolve;
  });
  const stop = new AbortController();
  const site = realSite(
    job,
    { auth, as },
    'north',
    (l) => {
      logs.push(l);
      if (until(l)) said();
    },
    stop.signal,
  );
  return { logs, saidIt, stop, site };
}

describe('stragglers', () => {
  it('sync: an update for a closed round is refused with a reason and counted', async () => {
    const { result, acks, logs } = await straggle('sync');
    expect(acks).toHaveLength(1);
    expect(acks[0]).toMatchObject({ accepted: false, code: 'CONSORT_R_STALE_ROUND' });
    expect(result.rejections.CONSORT_R_STALE_ROUND).toBe(1);
    expect(logs.some((l) => l.includes('site "slow"') && l.includes('CONSORT_R_STALE_ROUND'))).toBe(true);
    // Round 1 closed at its deadline with the fast site alone; nobody late was folded in anywhere.
    expect(result.rounds[0]!.participants).toEqual(['fast']);
    expect(result.rounds.flatMap((r) => r.participants).filter((p) => p.startsWith('slow'))).toEqual([]);
  }, 60_000);

  it('buffered: the late update is folded into the next round with a staleness weight', async () => {
    const { result, acks } = await straggle('buffered');
    expect(acks).toHaveLength(1);
    expect(acks[0]).toMatchObject({ accepted: true });
    expect(result.rejections.CONSORT_R_STALE_ROUND ?? 0).toBe(0);
    expect(result.rounds[0]!.participants).toEqual(['fast']);
    expect(result.rounds.slice(1).some((r) => r.participants.includes('slow@r1'))).toBe(true);
  }, 60_000);
});

describe('a task whose deadline passed before the site could start it (the site was stopped or busy)', () => {
  it('is acknowledged and skipped, saying so, in sync mode: no work, no failure report; in buffered mode a fit task is still trained', async () => {
    for (const mode of ['sync', 'buffered'] as const) {
      const job = FederatedJob.parse(jobManifest(`stale-task-${mode}`, hospitalSpec([{ name: 'north', samples: 80 }], { rounds: 1, aggregation: { mode } })));
      const { key, subj, auth, as } = await jobOnServer(job, cleanup);
      const coordinator = await as(COORDINATOR_USER, auth.coordinator.seed);
      const answers: string[] = [];
      const sub = coordinator.subscribe(subj.evaluation('north'), {
        callback: (_e, m) => {
          answers.push(decoder.decode(m.data));
        },
      });
      const fits = coordinator.subscribe(subj.update('north'), {
        callback: (_e, m) => {
          answers.push(decoder.decode(m.data));
        },
      });
      const { logs, saidIt, stop, site } = await northLogging(job, auth, as, (l) => l.includes('skipped') || l.includes('failed'));
      const model = { bucket: buckets(key).models, name: objectNames.global(0), sha256: '0'.repeat(64), size: 8 };
      const base = { protocol: 1, job: key, site: 'north', round: 3, model, deadline: Date.now() - 5000 };
      const send = async (task: Record<string, unknown>) => {
        // The site subscribes before its first hello: ask until it answers.
        for (;;) {
          const reply = await coordinator.request(subj.task('north'), encoder.encode(JSON.stringify(task)), { timeout: 1000 }).catch(() => undefined);
          if (reply) return JSON.parse(decoder.decode(reply.data)) as { accepted: boolean };
        }
      };
      const task =
        mode === 'sync' ? { ...base, type: 'evaluate', taskId: newNonce(), trainLoss: false } : { ...base, type: 'fit', taskId: newNonce(), proximalMu: 0 };
      expect(await send(task)).toMatchObject({ accepted: true });
      await saidIt;
      if (mode === 'sync') {
        expect(logs.join('\n')).toMatch(/site north: the evaluate task of round 3 skipped: its deadline passed \d+ s ago, while this site was busy or stopped/);
        await coordinator.flush();
        expect(answers).toEqual([]);
      } else {
        // Buffered: a late update is still worth sending, so the site works on it (here it cannot read the model named).
        expect(logs.some((l) => l.includes('fit of round 3 failed'))).toBe(true);
        expect(logs.some((l) => l.includes('skipped'))).toBe(false);
      }
      stop.abort();
      await site;
      sub.unsubscribe();
      fits.unsubscribe();
    }
  }, 90_000);
});

describe('a task that names a model object larger than the model', () => {
  it('fails that task before anything is allocated (2^50 bytes was attempted), and the site carries on', async () => {
    const job = FederatedJob.parse(jobManifest('huge-ref', hospitalSpec([{ name: 'north', samples: 80 }], { rounds: 1, aggregation: { mode: 'buffered' } })));
    const { key, subj, auth, as } = await jobOnServer(job, cleanup);
    const coordinator = await as(COORDINATOR_USER, auth.coordinator.seed);
    const { logs, saidIt, stop, site } = await northLogging(job, auth, as, (l) => l.includes('failed'));
    const model = { bucket: buckets(key).models, name: objectNames.global(0), sha256: '0'.repeat(64), size: 2 ** 50 };
    const task = { protocol: 1, job: key, site: 'north', round: 1, model, deadline: Date.now() + 60_000, type: 'fit', taskId: newNonce(), proximalMu: 0 };
    for (;;) {
      const reply = await coordinator.request(subj.task('north'), encoder.encode(JSON.stringify(task)), { timeout: 1000 }).catch(() => undefined);
      if (reply) break;
    }
    await saidIt;
    expect(logs.join('\n')).toMatch(/fit of round 1 failed: the task names a model object of 1125899906842624 bytes; this model's are at most \d+/);
    expect(logs.join('\n')).not.toContain('allocation failed');
    stop.abort();
    await site;
  }, 60_000);
});
