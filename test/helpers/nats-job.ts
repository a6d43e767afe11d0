// A job played by hand over a real nats-server: the server with the job's generated configuration,
// connections as any of its users, the model layout a real site builds, and signed hellos. For
// the integration tests that stand in for a site (a straggler, a site that purges its update).
import type { NatsConnection } from '@nats-io/transport-node';
import { natsAuthFor } from '../../cli/nats/config.ts';
import { connectAs } from '../../cli/nats/connect.ts';
import { NatsServer } from '../../cli/nats/server.ts';
import type { FederatedJob } from '../../core/job/federated-job.ts';
import type { ParameterLayout } from '../../core/model/layout.ts';
import { Objm } from '@nats-io/obj';
import { encodeUpdate } from '../../core/protocol/codecs.ts';
import { sha256Hex } from '../../core/protocol/digest.ts';
import { Ack, type EvaluationScores, evaluationEnvelope, Task, updateEnvelope, Welcome } from '../../core/protocol/messages.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { newNonce, signEnvelope } from '../../core/protocol/signing.ts';
import { buckets, jobKey, objectNames, PROTOCOL_VERSION, subjects } from '../../core/protocol/subjects.ts';
import { afterEach } from 'vitest';
import { type NatsCoordinatorOptions, runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { runSite } from '../../worker/nats/site-runner.ts';
import { SiteWorker } from '../../worker/site-worker.ts';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A list of teardown steps run after each test of the file (last pushed first), whatever failed. */
export function useCleanup(): Array<() => Promise<void>> {
  const steps: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const step of steps.splice(0).reverse()) await step().catch(() => {});
  });
  return steps;
}

/**
 * Starts a nats-server with `job`'s configuration; `as(user, seed)` connects as one of its users.
 * The server stops, and every connection closes, when the functions pushed on `cleanup` run.
 */
export async function jobOnServer(job: FederatedJob, cleanup: Array<() => Promise<void>>) {
  const key = jobKey(job.metadata);
  const auth = natsAuthFor(job);
  const server = await NatsServer.start({ config: auth.config });
  cleanup.push(() => server.stop());
  const connections: NatsConnection[] = [];
  cleanup.push(async () => {
    for (const nc of connections) await nc.close();
  });
  const as = async (user: string, seed: string): Promise<NatsConnection> => {
    const nc = await connectAs(server.url, seed, user);
    connections.push(nc);
    return nc;
  };
  return { key, subj: subjects(key), auth, server, as };
}

/** What of `jobOnServer` starting a coordinator or a site needs: the job's credentials, and connecting as one of its users. */
type JobServer = Pick<Awaited<ReturnType<typeof jobOnServer>>, 'auth' | 'as'>;

/** How a test runs its coordinator: how long it waits for the sites is always the test's to say. */
type CoordinatorOptions = Omit<NatsCoordinatorOptions, 'job' | 'nc' | 'siteKeys' | 'log'> & {
  joinTimeoutMs: number;
  log?: (line: string) => void;
};

/**
 * `job`'s coordinator, connected as the job's coordinator user; its log lines gather in `logs`
 * (and reach `options.log` as they come, for a test that acts on one).
 */
export async function startCoordinator(job: FederatedJob, on: JobServer, options: CoordinatorOptions) {
  const { log, ...rest } = options;
  const logs: string[] = [];
  const coordinator = runNatsCoordinator({
    job,
    nc: await on.as(COORDINATOR_USER, on.auth.coordinator.seed),
    siteKeys: on.auth.keys.sites,
    log: (l) => {
      logs.push(l);
      log?.(l);
    },
    ...rest,
  });
  return { logs, coordinator };
}

/**
 * `startCoordinator` for a test that plays sites against it and does not wait for the job to end:
 * it runs until the test aborts it with `stop`, or the test ends and `cleanup` aborts it and waits
 * for it to let go of the server. Its failure is the test's only where the test awaits `coordinator`.
 */
export async function coordinatorInBackground(job: FederatedJob, on: JobServer, cleanup: Array<() => Promise<void>>, options: CoordinatorOptions) {
  const stop = new AbortController();
  const { logs, coordinator } = await startCoordinator(job, on, { ...options, signal: stop.signal });
  coordinator.catch(() => {});
  cleanup.push(async () => {
    stop.abort();
    await coordinator.catch(() => {});
  });
  return { logs, coordinator, stop };
}

/** Site `site` of `job`, a real site runner on the CPU backend (stopped by `signal`, if given). */
export async function realSite(job: FederatedJob, on: JobServer, site = 'real', log: (line: string) => void = () => {}, signal?: AbortSignal) {
  const { seed } = on.auth.sites[site]!;
  return runSite({ job, site, nc: await on.as(site, seed), seed, baseDir: '.', backend: 'cpu', log, ...(signal ? { signal } : {}) });
}

/**
 * The coordinator's Welcome to a hello, said again whenever `timeoutMs` passes unanswered (as a
 * site runner does while the coordinator starts). `hello` as a function is signed anew each time.
 */
export async function helloUntilAnswered(nc: NatsConnection, subject: string, hello: Uint8Array | (() => Uint8Array), timeoutMs = 1000): Promise<Welcome> {
  for (;;) {
    const body = typeof hello === 'function' ? hello() : hello;
    const reply = await nc.request(subject, body, { timeout: timeoutMs }).catch(() => undefined);
    if (reply) return Welcome.parse(JSON.parse(decoder.decode(reply.data)));
  }
}

/**
 * A played site's hello every 100 ms until the test ends, as a live site runner's: the coordinator
 * counts a site that falls silent as gone. None is said while `quiet()` holds (a site down).
 */
export function keepSayingHello(
  nc: NatsConnection,
  subject: string,
  hello: () => Uint8Array,
  cleanup: Array<() => Promise<void>>,
  quiet: () => boolean = () => false,
): void {
  const beat = setInterval(() => {
    if (quiet()) return;
    nc.request(subject, hello(), { timeout: 1000 }).catch(() => {});
  }, 100);
  cleanup.push(async () => clearInterval(beat));
}

/**
 * A played site's tasks on `subject`: each acknowledged at once, as the site runner does, then
 * played by `play`. A failure of `play` is dropped: its requests may outlive the coordinator
 * they answer, and what the coordinator took is what the test asserts.
 */
export function playTasks(nc: NatsConnection, subject: string, play: (task: Task) => Promise<unknown>): void {
  nc.subscribe(subject, {
    callback: (_e, m) => {
      m.respond(encoder.encode(JSON.stringify({ type: 'ack', accepted: true })));
      play(Task.parse(JSON.parse(decoder.decode(m.data)))).catch(() => {});
    },
  });
}

/** The coordinator's status (counters and all), asked for as its own user. */
export async function coordinatorStatus(on: JobServer & { subj: { status: string } }) {
  const nc = await on.as(COORDINATOR_USER, on.auth.coordinator.seed);
  return JSON.parse(decoder.decode((await nc.request(on.subj.status, '', { timeout: 5000 })).data));
}

/** The model layout and sample shape a real site of `job` builds (site `siteIndex`'s data; labels no / yes). */
export async function siteModel(job: FederatedJob, siteIndex: number): Promise<{ layout: ParameterLayout; sampleShape: number[] }> {
  const local = new SiteWorker({ spec: job.spec, baseDir: '.', backend: 'cpu' });
  try {
    const described = await local.describe(siteIndex);
    const { layout } = await local.prepare(['no', 'yes'], described.sampleShape);
    return { layout, sampleShape: described.sampleShape };
  } finally {
    local.dispose();
  }
}

/** A hello of `site`, signed with its seed, as the site runner sends it (codec none). */
export function signedHello(
  key: string,
  site: string,
  seed: string,
  model: { layout: ParameterLayout; sampleShape: number[] },
  extra: { features?: readonly string[]; terms?: string; initial?: { sha256: string; size: number }; instance?: string; keepsState?: boolean } = {},
): Uint8Array {
  const hello = {
    type: 'hello' as const,
    protocol: PROTOCOL_VERSION,
    job: key,
    site,
    nonce: newNonce(),
    sentAt: Date.now(),
    sampleShape: model.sampleShape,
    labels: ['no', 'yes'],
    ...(extra.features ? { features: extra.features } : {}),
    ...(extra.terms !== undefined ? { terms: extra.terms } : {}),
    ...(extra.initial ? { initial: extra.initial } : {}),
    ...(extra.instance ? { instance: extra.instance } : {}),
    ...(extra.keepsState !== undefined ? { keepsState: extra.keepsState } : {}),
    layout: model.layout,
    codecs: ['none' as const],
  };
  return encoder.encode(JSON.stringify(signEnvelope(hello, seed)));
}

/** An evaluation of `task` by `site`, signed with its seed, with fixed metrics (10 samples, loss and accuracy 0.5) unless `scores` says otherwise. */
export function signedEvaluation(
  key: string,
  site: string,
  seed: string,
  task: { round: number; taskId: string },
  scores: Partial<EvaluationScores> = {},
): Uint8Array {
  const evaluation = evaluationEnvelope(key, site, task, { samples: 10, loss: 0.5, accuracy: 0.5, ...scores });
  return encoder.encode(JSON.stringify(signEnvelope(evaluation, seed)));
}

/**
 * A played site's update for `task`: `delta` encoded (codec none), put into the site's own
 * bucket, its envelope signed and sent; resolves on the coordinator's answer.
 */
export async function sendPlainUpdate(
  nc: NatsConnection,
  to: { key: string; site: string; seed: string; layout: ParameterLayout },
  task: { round: number; taskId: string },
  delta: Float32Array,
  samples: number,
  trainLoss = 0.5,
): Promise<Ack> {
  const { key, site, seed, layout } = to;
  const { bytes } = encodeUpdate(delta, layout, { codec: 'none', topkFraction: 0.01 });
  const nonce = newNonce();
  const name = objectNames.update(task.round, nonce);
  const bucket = buckets(key).updates(site);
  await (await new Objm(nc).open(bucket)).putBlob({ name }, bytes);
  const env = updateEnvelope(key, site, task, nonce, {
    samples,
    trainLoss,
    steps: 1,
    codec: 'none',
    object: { bucket, name, sha256: sha256Hex(bytes), size: bytes.length },
  });
  return Ack.parse(
    JSON.parse(
      new TextDecoder().decode(
        (await nc.request(subjects(key).update(site), encoder.encode(JSON.stringify(signEnvelope(env, seed))), { timeout: 10_000 })).data,
      ),
    ),
  );
}
