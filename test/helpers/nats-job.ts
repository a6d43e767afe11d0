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
import { Ack, type EvaluationScores, evaluationEnvelope, updateEnvelope } from '../../core/protocol/messages.ts';
import { newNonce, signEnvelope } from '../../core/protocol/signing.ts';
import { buckets, jobKey, objectNames, PROTOCOL_VERSION, subjects } from '../../core/protocol/subjects.ts';
import { afterEach } from 'vitest';
import { SiteWorker } from '../../worker/site-worker.ts';

const encoder = new TextEncoder();

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
