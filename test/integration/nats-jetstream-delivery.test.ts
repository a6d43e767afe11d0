// The server does not check a push consumer's delivery subject: whoever may create a consumer on a
// stream has its messages delivered onto any subject it names, past publish permissions. Sites had
// that right on the models bucket (for nats.js's get, which the site runner does not use), so any
// site could have the models' chunks delivered onto another site's task subject and onto the round
// subject, which only the coordinator may publish to (a flood of megabytes a consumer, as many
// consumers as it liked; the site runner read every one as a task or notice). Over a real
// nats-server with a job's generated configuration: a site can create no consumer on the models
// bucket, whatever the delivery subject, nothing reaches the other site, and the site still reads
// a model as the site runner does (direct get), chunk after chunk, with no violation.
import { randomBytes } from 'node:crypto';
import { jetstreamManager } from '@nats-io/jetstream';
import { Objm } from '@nats-io/obj';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { natsAuthFor } from '../../cli/nats/config.ts';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { readObject } from '../../core/protocol/object-read.ts';
import { objectWire } from '../../core/protocol/object-wire.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { buckets, inboxPrefix, jobKey, OBJECT_READ_BATCH_BYTES, objectNames, subjects } from '../../core/protocol/subjects.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { collect, digestOf, type WatchedClient, watchedClient } from '../helpers/nats-clients.ts';
import { useNatsServer } from '../helpers/nats-server.ts';

const job = FederatedJob.parse(
  jobManifest(
    'deliveries',
    hospitalSpec([
      { name: 'north', samples: 40 },
      { name: 'evil', samples: 40 },
    ]),
  ),
);
const key = jobKey(job.metadata);
const subj = subjects(key);
const models = buckets(key).models;
const auth = natsAuthFor(job);
const nats = useNatsServer({ config: auth.config });
const MODEL = randomBytes(3 * 1024 * 1024 + 5);

let coordinator: WatchedClient;
let north: WatchedClient;
let evil: WatchedClient;

beforeAll(async () => {
  coordinator = await watchedClient(nats.url, COORDINATOR_USER, auth.coordinator.seed);
  north = await watchedClient(nats.url, 'north', auth.sites.north!.seed);
  evil = await watchedClient(nats.url, 'evil', auth.sites.evil!.seed);
  await (await new Objm(coordinator.nc).create(models)).putBlob({ name: objectNames.global(1) }, MODEL);
});

afterAll(async () => {
  await Promise.all([coordinator, north, evil].map((c) => c?.nc.close()));
});

describe('a site and the consumers of the models bucket', () => {
  it("cannot create one, so cannot have the models delivered onto another site's task subject or the round subject", async () => {
    const tasks = collect(north.nc, subj.task('north'));
    const notices = collect(north.nc, subj.round);
    await north.nc.flush();
    const jsm = await jetstreamManager(evil.nc);
    for (const [name, onto] of [
      ['onto-task', subj.task('north')],
      ['onto-round', subj.round],
    ] as const) {
      await expect(
        jsm.consumers.add(`OBJ_${models}`, { name, filter_subject: `$O.${models}.C.*`, deliver_subject: onto, deliver_policy: 'all' as never }),
      ).rejects.toThrow(/Permissions Violation for Publish to "\$JS\.API\.CONSUMER\.CREATE\.OBJ_/);
    }
    // nats.js's get (an ordered consumer) is refused the same way.
    await expect((await new Objm(evil.nc).open(models)).getBlob(objectNames.global(1))).rejects.toThrow(/Permissions Violation/);
    // The coordinator's user, which may, has them delivered: the same consumer, its own inbox.
    const mine = collect(coordinator.nc, `${inboxPrefix(COORDINATOR_USER)}.deliveries`);
    await (await jetstreamManager(coordinator.nc)).consumers.add(`OBJ_${models}`, {
      name: 'allowed',
      filter_subject: `$O.${models}.C.*`,
      deliver_subject: `${inboxPrefix(COORDINATOR_USER)}.deliveries`,
    });
    await expect.poll(() => mine.msgs.length, { timeout: 5000 }).toBeGreaterThan(0);
    await north.nc.flush();
    expect(tasks.msgs).toEqual([]);
    expect(notices.msgs).toEqual([]);
  });

  it('reads a model as the site runner does (direct get, several chunks), with no violation', async () => {
    const before = north.violations.length;
    const bytes = await readObject(objectWire(north.nc, models), models, objectNames.global(1), {
      maxBytes: MODEL.length,
      batchBytes: OBJECT_READ_BATCH_BYTES,
    });
    expect(digestOf(bytes)).toEqual(digestOf(MODEL));
    expect(north.violations.slice(before)).toEqual([]);
  });
});
