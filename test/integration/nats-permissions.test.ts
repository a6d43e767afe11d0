// The generated nats-server configuration against the real server: each site may do exactly what
// the protocol needs and nothing that would let it speak as, listen as or read another site.
// Every refusal is paired with the same operation allowed to the right user, so that a refusal
// for an unrelated reason (a typo, a missing bucket) cannot pass for a permission.
import { randomBytes } from 'node:crypto';
import { type JetStreamManager, jetstreamManager } from '@nats-io/jetstream';
import { Objm } from '@nats-io/obj';
import { AuthorizationError, connect, PermissionViolationError } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type NatsAuth, natsAuthFor } from '../../cli/nats/config.ts';
import { connectAs } from '../../cli/nats/connect.ts';
import { CliError } from '../../cli/errors.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { objectStoreDigest, sha256OfObjectStoreDigest } from '../../core/protocol/digest.ts';
import { readObject } from '../../core/protocol/object-read.ts';
import { putObject } from '../../core/protocol/object-put.ts';
import { buckets, inboxPrefix, jobKey, OBJECT_CHUNK_BYTES, OBJECT_READ_BATCH_BYTES, objectNames, subjects } from '../../core/protocol/subjects.ts';
import { objectWire as coordinatorObjectWire, objectWire as siteObjectWire } from '../../core/protocol/object-wire.ts';
import { readModelObject } from '../../worker/nats/site-runner.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';
import { collect, digestOf, soon, violation, type WatchedClient, watchedClient } from '../helpers/nats-clients.ts';
import { useNatsServer } from '../helpers/nats-server.ts';

const A = 'site-a';
const B = 'site-b';
const job = FederatedJob.parse({
  ...jobManifest(
    'perm',
    hospitalSpec([
      { name: A, samples: 50 },
      { name: B, samples: 50 },
    ]),
  ),
  metadata: { name: 'perm', namespace: 'lab' },
});
const key = jobKey(job.metadata);
const subj = subjects(key);
const bucket = buckets(key);
const auth: NatsAuth = natsAuthFor(job);
const nats = useNatsServer({ config: auth.config });

const MODEL = new Uint8Array(300_000).map((_, i) => (i * 7) % 251); // 3 chunks of 128 KiB
const UPDATE_A = new Uint8Array(200_000).map((_, i) => (i * 13) % 251);
const UPDATE_B = new Uint8Array(1000).fill(66);

type Client = WatchedClient;
const client = (user: string, seed: string): Promise<Client> => watchedClient(nats.url, user, seed);
const bytes = digestOf;
const until = soon;

let coordinator: Client;
let siteA: Client;
let siteB: Client;
let coordinatorJsm: JetStreamManager;

beforeAll(async () => {
  coordinator = await client(COORDINATOR_USER, auth.coordinator.seed);
  siteA = await client(A, auth.sites[A]!.seed);
  siteB = await client(B, auth.sites[B]!.seed);
  coordinatorJsm = await jetstreamManager(coordinator.nc);
});

afterAll(async () => {
  await Promise.all([coordinator, siteA, siteB].map((c) => c?.nc.close()));
});

describe('the coordinator', () => {
  it('creates the buckets (models, state, one for the updates of each site) and puts a global model', async () => {
    const objm = new Objm(coordinator.nc);
    const models = await objm.create(bucket.models);
    await objm.create(bucket.state);
    for (const site of [A, B]) await objm.create(bucket.updates(site));
    const info = await models.putBlob({ name: objectNames.global(1) }, MODEL);
    expect(info.size).toBe(MODEL.length);
    expect(info.chunks).toBe(3);
    const names: string[] = [];
    for await (const n of coordinatorJsm.streams.names()) names.push(n);
    expect(names.sort()).toEqual([bucket.models, bucket.state, bucket.updates(A), bucket.updates(B)].map((b) => `OBJ_${b}`).sort());
    expect(coordinator.violations).toEqual([]);
  });

  it('deletes and recreates a bucket of the job', async () => {
    const objm = new Objm(coordinator.nc);
    await (await objm.open(bucket.state)).destroy();
    await expect(objm.open(bucket.state)).rejects.toThrow(/not found/);
    await objm.create(bucket.state);
    await expect(objm.open(bucket.state)).resolves.toBeDefined();
  });
});

describe('a site reads the models and writes only its own updates', () => {
  beforeAll(async () => {
    // B's update, which A must not be able to read.
    const up = await new Objm(siteB.nc).open(bucket.updates(B));
    await up.putBlob({ name: objectNames.update(1, 'b-nonce-0000000001') }, UPDATE_B);
  });

  it('site A cannot read the global model through a consumer (nats.js get): it could have that consumer deliver onto any subject', async () => {
    const models = await new Objm(siteA.nc).open(bucket.models);
    await expect(models.getBlob(objectNames.global(1))).rejects.toThrow(/Permissions Violation for Publish to "\$JS\.API\.CONSUMER\.CREATE\.OBJ_/);
  });

  it('site A reads the global model as the site runner does (readObject: direct get, no consumer) with no violation', async () => {
    const before = siteA.violations.length;
    const models = await new Objm(coordinator.nc).open(bucket.models);
    const info = (await models.info(objectNames.global(1)))!;
    const read = await readModelObject(siteObjectWire(siteA.nc, bucket.models), {
      bucket: bucket.models,
      name: objectNames.global(1),
      size: info.size,
      sha256: sha256OfObjectStoreDigest(info.digest)!,
    });
    expect(bytes(read)).toEqual(bytes(MODEL));
    expect(siteA.violations.slice(before)).toEqual([]);
  });

  it('site A reads a model of several read batches as the site runner does', { timeout: 30_000 }, async () => {
    const large = randomBytes(OBJECT_READ_BATCH_BYTES + 3 * 1024 * 1024);
    const before = siteA.violations.length;
    await (await new Objm(coordinator.nc).open(bucket.models)).putBlob({ name: objectNames.global(0) }, large);
    const read = await readObject(siteObjectWire(siteA.nc, bucket.models), bucket.models, objectNames.global(0), {
      maxBytes: large.length,
      batchBytes: OBJECT_READ_BATCH_BYTES,
    });
    expect(bytes(read)).toEqual(bytes(large));
    expect(siteA.violations.slice(before)).toEqual([]);
  });

  it('site A puts its update into its own bucket, and the coordinator reads it back (e)', async () => {
    const up = await new Objm(siteA.nc).open(bucket.updates(A));
    await up.putBlob({ name: objectNames.update(1, 'a-nonce-0000000001') }, UPDATE_A);
    const back = await (await new Objm(coordinator.nc).open(bucket.updates(A))).getBlob(objectNames.update(1, 'a-nonce-0000000001'));
    expect(bytes(back)).toEqual(bytes(UPDATE_A));
  });

  it('site A writes an update as the site runner does (putObject: no bucket check, chunks in flight) with no violation, read back by nats.js', async () => {
    const update = randomBytes(3 * 1024 * 1024 + 5);
    const header = randomBytes(40);
    const before = siteA.violations.length;
    const name = objectNames.update(1, 'a-nonce-0000000002');
    const info = await putObject(siteObjectWire(siteA.nc, bucket.updates(A)), bucket.updates(A), name, [header, update], {
      chunkBytes: OBJECT_CHUNK_BYTES,
      windowBytes: 2 * OBJECT_CHUNK_BYTES,
    });
    expect(siteA.violations.slice(before)).toEqual([]);
    const stored = await (await new Objm(coordinator.nc).open(bucket.updates(A))).get(name);
    expect(stored?.info).toMatchObject({ size: header.length + update.length, digest: objectStoreDigest(info.sha256), chunks: info.chunks });
    expect(bytes(await (await new Objm(coordinator.nc).open(bucket.updates(A))).getBlob(name))).toEqual(bytes(Buffer.concat([header, update])));
  });

  it('the coordinator replaces an object with putObject (as its checkpoint each round): the old chunks are purged', async () => {
    const wire = coordinatorObjectWire(coordinator.nc, bucket.state);
    const stream = `OBJ_${bucket.state}`;
    const first = await putObject(wire, bucket.state, objectNames.checkpoint, [randomBytes(2_500_000)], {
      chunkBytes: OBJECT_CHUNK_BYTES,
      windowBytes: 8 << 20,
    });
    const { messages, bytes: size } = (await coordinatorJsm.streams.info(stream)).state;
    const again = randomBytes(2_500_000);
    const second = await putObject(wire, bucket.state, objectNames.checkpoint, [again], { chunkBytes: OBJECT_CHUNK_BYTES, windowBytes: 8 << 20 });
    expect(second.nuid).not.toBe(first.nuid);
    expect((await coordinatorJsm.streams.info(stream)).state).toMatchObject({ messages, bytes: size });
    expect(bytes(await (await new Objm(coordinator.nc).open(bucket.state)).getBlob(objectNames.checkpoint))).toEqual(bytes(again));
    expect(coordinator.violations).toEqual([]);
  });

  it("site A cannot read B's updates (the coordinator can)", async () => {
    const name = objectNames.update(1, 'b-nonce-0000000001');
    // Opening checks the stream, which A may not ask about.
    await expect(new Objm(siteA.nc).open(bucket.updates(B))).rejects.toThrow(/Permissions Violation for Publish to "\$JS\.API\.STREAM\.INFO\.OBJ_/);
    // Skipping the check does not help: reading the object's meta is refused too.
    const unchecked = await new Objm(siteA.nc).open(bucket.updates(B), false);
    await expect(unchecked.getBlob(name)).rejects.toThrow(/Permissions Violation for Publish to "\$JS\.API\.STREAM\.MSG\.GET\.OBJ_/);
    // Nor read its messages by direct get.
    await expect(readObject(siteObjectWire(siteA.nc, bucket.updates(B)), bucket.updates(B), name, { maxBytes: 1 << 20, batchBytes: 1 << 20 })).rejects.toThrow(
      /Permissions Violation for Publish to "\$JS\.API\.STREAM\.MSG\.GET\.OBJ_/,
    );
    const batch = (await jetstreamManager(siteA.nc)).direct.getBatch(`OBJ_${bucket.updates(B)}`, { seq: 1, batch: 10 });
    void batch
      .then(async (it) => {
        for await (const _ of it);
      })
      .catch(() => {}); // it times out: the request never reached the stream
    await violation(siteA, 'publish', `$JS.API.DIRECT.GET.OBJ_${bucket.updates(B)}`);
    // Nor can it start a consumer on B's bucket to stream the chunks.
    const jsm = await jetstreamManager(siteA.nc);
    await expect(
      jsm.consumers.add(`OBJ_${bucket.updates(B)}`, { name: 'peek', filter_subject: `$O.${bucket.updates(B)}.C.*`, deliver_subject: `${inboxPrefix(A)}.peek` }),
    ).rejects.toThrow(/Permissions Violation/);
    // The positive counterpart: the object is there, and the coordinator reads it.
    const theirs = await new Objm(coordinator.nc).open(bucket.updates(B));
    expect(bytes(await theirs.getBlob(name))).toEqual(bytes(UPDATE_B));
  });

  it("site A cannot write into B's bucket, through the Object Store or by raw publish (B can)", async () => {
    const before = (await coordinatorJsm.streams.info(`OBJ_${bucket.updates(B)}`)).state.messages;
    const unchecked = await new Objm(siteA.nc).open(bucket.updates(B), false);
    await expect(unchecked.putBlob({ name: objectNames.update(1, 'forged-by-a-00001') }, UPDATE_A)).rejects.toThrow(/Permissions Violation/);
    for (const s of [`$O.${bucket.updates(B)}.C.forgedchunk`, `$O.${bucket.updates(B)}.M.Zm9yZ2Vk`]) {
      siteA.nc.publish(s, 'forged');
      await violation(siteA, 'publish', s);
    }
    expect((await coordinatorJsm.streams.info(`OBJ_${bucket.updates(B)}`)).state.messages).toBe(before);
    // B writes into its own bucket.
    await (await new Objm(siteB.nc).open(bucket.updates(B))).putBlob({ name: objectNames.update(2, 'b-nonce-0000000002') }, UPDATE_B);
    expect((await coordinatorJsm.streams.info(`OBJ_${bucket.updates(B)}`)).state.messages).toBeGreaterThan(before);
  });

  it('site A cannot write the models bucket (the coordinator can)', async () => {
    const models = await new Objm(siteA.nc).open(bucket.models);
    await expect(models.putBlob({ name: objectNames.global(2) }, UPDATE_A)).rejects.toThrow(/Permissions Violation/);
    await (await new Objm(coordinator.nc).open(bucket.models)).putBlob({ name: objectNames.global(2) }, MODEL);
    const read = await readObject(siteObjectWire(siteA.nc, bucket.models), bucket.models, objectNames.global(2), {
      maxBytes: MODEL.length,
      batchBytes: OBJECT_READ_BATCH_BYTES,
    });
    expect(bytes(read)).toEqual(bytes(MODEL));
  });

  it('site A cannot create, delete or purge streams or buckets, nor list them (the coordinator can)', async () => {
    const jsm = await jetstreamManager(siteA.nc);
    const models = `OBJ_${bucket.models}`;
    await expect(new Objm(siteA.nc).create(`consort-${key}-evil`)).rejects.toThrow(/Permissions Violation/);
    await expect(jsm.streams.add({ name: 'evil', subjects: ['consort.>'] })).rejects.toThrow(
      /Permissions Violation for Publish to "\$JS\.API\.STREAM\.CREATE\.evil"/,
    );
    await expect(jsm.streams.delete(models)).rejects.toThrow(/Permissions Violation for Publish to "\$JS\.API\.STREAM\.DELETE\./);
    await expect(jsm.streams.purge(models)).rejects.toThrow(/Permissions Violation for Publish to "\$JS\.API\.STREAM\.PURGE\./);
    await expect(jsm.streams.delete(`OBJ_${bucket.updates(A)}`)).rejects.toThrow(/Permissions Violation/);
    const listed = async (m: JetStreamManager) => {
      const names: string[] = [];
      for await (const n of m.streams.names()) names.push(n);
      return names;
    };
    await expect(listed(jsm)).rejects.toThrow(/Permissions Violation/);
    // Everything is still there, and the coordinator may list it.
    expect(await listed(coordinatorJsm)).toContain(models);
    expect((await coordinatorJsm.streams.info(models)).state.messages).toBeGreaterThan(0);
  });
});

describe('a site speaks only as itself', () => {
  it.each([
    ['hello', subj.hello, subj.helloAll],
    ['update', subj.update, subj.updateAll],
    ['evaluation', subj.evaluation, subj.evaluationAll],
  ] as const)("site A publishes on its own %s subject, not on B's", async (_what, subject, all) => {
    const { sub, msgs } = collect(coordinator.nc, all);
    await coordinator.nc.flush();
    siteA.nc.publish(subject(B), 'forged');
    await violation(siteA, 'publish', subject(B));
    // Messages of one connection arrive in order: once A's own message is in, the forged one
    // would have been before it.
    siteA.nc.publish(subject(A), 'genuine');
    await until(() => msgs.length > 0, `A's message on ${subject(A)}`);
    sub.unsubscribe();
    expect(msgs.map((m) => [m.subject, m.string()])).toEqual([[subject(A), 'genuine']]);
  });

  it("site A asks the coordinator (request/reply through its own inbox), but not in B's name", async () => {
    const sub = coordinator.nc.subscribe(subj.updateAll, {
      callback: (_err, m) => {
        m.respond(`ack ${m.subject}`);
      },
    });
    await coordinator.nc.flush();
    expect((await siteA.nc.request(subj.update(A), 'envelope', { timeout: 5000 })).string()).toBe(`ack ${subj.update(A)}`);
    await expect(siteA.nc.request(subj.update(B), 'envelope', { timeout: 5000 })).rejects.toThrow(/Permissions Violation for Publish/);
    sub.unsubscribe();
  });
});

describe('a site hears only its own tasks and replies', () => {
  it("site A receives its tasks and the round notices, not B's tasks (B does)", async () => {
    const mine = collect(siteA.nc, subj.task(A));
    const rounds = collect(siteA.nc, subj.round);
    const theirs = collect(siteB.nc, subj.task(B));
    const spy = siteA.nc.subscribe(subj.task(B));
    await violation(siteA, 'subscription', subj.task(B));
    const closed = await spy.closed;
    expect(closed).toBeInstanceOf(PermissionViolationError);
    await Promise.all([siteA.nc.flush(), siteB.nc.flush()]);
    coordinator.nc.publish(subj.task(B), 'task for b');
    coordinator.nc.publish(subj.round, 'round 1 started');
    coordinator.nc.publish(subj.task(A), 'task for a');
    await until(() => mine.msgs.length > 0 && theirs.msgs.length > 0 && rounds.msgs.length > 0, 'the tasks and the round notice');
    expect(mine.msgs.map((m) => m.string())).toEqual(['task for a']);
    expect(theirs.msgs.map((m) => m.string())).toEqual(['task for b']);
    expect(rounds.msgs.map((m) => m.string())).toEqual(['round 1 started']);
    for (const c of [mine, rounds, theirs]) c.sub.unsubscribe();
  });

  it('site A answers a task sent as a request, but cannot publish into the coordinator inbox unasked', async () => {
    const unasked = `${inboxPrefix(COORDINATOR_USER)}.spoof`;
    const seen = collect(coordinator.nc, unasked);
    await coordinator.nc.flush();
    siteA.nc.publish(unasked, 'spoof');
    await violation(siteA, 'publish', unasked);
    // A's answer to a request reaches the same inbox, and after the spoof would have.
    const sub = siteA.nc.subscribe(subj.task(A), {
      callback: (_err, m) => {
        m.respond('accepted');
      },
    });
    await siteA.nc.flush();
    expect((await coordinator.nc.request(subj.task(A), 'fit', { timeout: 5000 })).string()).toBe('accepted');
    sub.unsubscribe();
    seen.sub.unsubscribe();
    expect(seen.msgs).toEqual([]);
  });

  it.each([`${inboxPrefix(B)}.>`, '_INBOX.>', `${inboxPrefix(COORDINATOR_USER)}.>`])(
    'site A cannot subscribe to %s, where replies to others go',
    async (inbox) => {
      const spy = collect(siteA.nc, inbox);
      await violation(siteA, 'subscription', inbox);
      // B's own requests still get their replies, and A saw none of them.
      const sub = coordinator.nc.subscribe(subj.helloAll, {
        callback: (_err, m) => {
          m.respond('welcome');
        },
      });
      await coordinator.nc.flush();
      expect((await siteB.nc.request(subj.hello(B), 'hi', { timeout: 5000 })).string()).toBe('welcome');
      sub.unsubscribe();
      expect(spy.msgs).toEqual([]);
    },
  );
});

describe('connecting', () => {
  it('a client with no credentials, a wrong seed or another inbox prefix gets nothing (the right seed connects)', async () => {
    await expect(connect({ servers: nats.url, maxReconnectAttempts: 0 })).rejects.toBeInstanceOf(AuthorizationError);
    const stranger = natsAuthFor(job).sites[A]!.seed; // a valid seed the server does not know
    const refused = await connectAs(nats.url, stranger, A, { maxReconnectAttempts: 0 }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(CliError);
    expect((refused as CliError).code).toBe('CONSORT_CLI_NATS');
    expect((refused as CliError).cause).toBeInstanceOf(AuthorizationError);
    await expect(connectAs(nats.url, '/nonexistent/site-a.nk', A)).rejects.toMatchObject({ code: 'CONSORT_CLI_CREDENTIALS' });
    // The right seed with the default inbox prefix connects, but its replies cannot reach it.
    const noPrefix = await connectAs(nats.url, auth.sites[A]!.seed, A, { inboxPrefix: '_INBOX' });
    await expect(noPrefix.request(subj.hello(A), 'hi', { timeout: 2000 })).rejects.toThrow(/Permissions Violation for Subscription/);
    await noPrefix.close();
    // And with its own prefix it works.
    const ok = await connectAs(nats.url, auth.sites[A]!.seed, A);
    await ok.flush();
    await ok.close();
  });
});
