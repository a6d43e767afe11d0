// One shared nats-server for every job, with decentralized auth: the server trusts the operator
// JWT and preloads the Consort account (`consort nats-config --cluster`); users are minted per job
// with the account's signing key (operator/nats/trust.ts) and connect with `.creds` files. Each
// refusal is paired with the same operation allowed to the right user, as in
// nats-permissions.test.ts, whose per-job permissions the minted JWTs carry. Then two small jobs
// run at once on the server, one by the Consort operator's own user over one connection, one by
// its own coordinator user, and each ends in the bytes of its in-process run.
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { Objm } from '@nats-io/obj';
import { AuthorizationError, connect, type NatsConnection, PermissionViolationError } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CliError } from '../../cli/errors.ts';
import { connectAs, readSeed } from '../../cli/nats/connect.ts';
import { runLocal } from '../../cli/run/local-run.ts';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { COORDINATOR_USER, coordinatorPermissions, OPERATOR_USER, sitePermissions } from '../../core/protocol/permissions.ts';
import { readObject } from '../../core/protocol/object-read.ts';
import { objectWire } from '../../core/protocol/object-wire.ts';
import { buckets, inboxPrefix, jobInboxPrefix, jobKey, OBJECT_READ_BATCH_BYTES, objectNames, subjects } from '../../core/protocol/subjects.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import {
  ACCOUNT_MEMORY_STORAGE_BYTES,
  createNatsTrust,
  type JobCreds,
  type MintedUser,
  mintJobCreds,
  mintOperatorCreds,
  mintUserCreds,
  parseAccountSigner,
  renderAccountSigner,
} from '../../operator/nats/trust.ts';
import { runSite } from '../../worker/nats/site-runner.ts';
import { hospitalSpec, jobManifest, SMALL_HOSPITALS } from '../helpers/jobs.ts';
import { collect, digestOf, soon, violation, type WatchedClient, watchedClient } from '../helpers/nats-clients.ts';
import { useClusterNatsServer } from '../helpers/nats-server.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const A = 'site-a';
const B = 'site-b';
const KEY = jobKey({ namespace: 'lab', name: 'perm' });
const OTHER = jobKey({ namespace: 'lab', name: 'other' });
const subj = subjects(KEY);
const bucket = buckets(KEY);

const tmp = useTmpDirs('file');
let dir: string;
const nats = useClusterNatsServer();

/** A minted user's .creds written to a file, as a site's Secret mounts it: connections log in from the file. */
function credsFile(u: MintedUser, label = u.name): string {
  const path = join(dir, `${label}.creds`);
  writeFileSync(path, u.creds, { mode: 0o600 });
  return path;
}

let perm: JobCreds;
let other: JobCreds;
let operatorUser: MintedUser;
let coordinator: WatchedClient;
let siteA: WatchedClient;
let siteB: WatchedClient;
let operator: WatchedClient;

const MODEL = new Uint8Array(300_000).map((_, i) => (i * 7) % 251);
const UPDATE_A = new Uint8Array(200_000).map((_, i) => (i * 13) % 251);
const UPDATE_B = new Uint8Array(1000).fill(66);
const inAnHour = () => new Date(Date.now() + 3600_000);

/** An object read as the site runner reads models: direct get, through the connection's own inbox. */
const siteReads = (c: WatchedClient, b: string, name: string) =>
  readObject(objectWire(c.nc, b), b, name, { maxBytes: 64 * 1024 * 1024, batchBytes: OBJECT_READ_BATCH_BYTES });

beforeAll(async () => {
  dir = tmp('consort-jwt');
  perm = await mintJobCreds(nats.trust.signer, KEY, [A, B], { expiresAt: inAnHour() });
  other = await mintJobCreds(nats.trust.signer, OTHER, [A], { expiresAt: inAnHour() });
  operatorUser = await mintOperatorCreds(nats.trust.signer);
  coordinator = await watchedClient(nats.url, COORDINATOR_USER, credsFile(perm.coordinator, 'perm-coordinator'));
  siteA = await watchedClient(nats.url, A, credsFile(perm.sites[A]!, 'perm-a'));
  siteB = await watchedClient(nats.url, B, credsFile(perm.sites[B]!, 'perm-b'));
  operator = await watchedClient(nats.url, OPERATOR_USER, credsFile(operatorUser));
  // The job's buckets and a global model, by its coordinator; B's update, which A must not read.
  const objm = new Objm(coordinator.nc);
  const models = await objm.create(bucket.models);
  await objm.create(bucket.state);
  for (const s of [A, B]) await objm.create(bucket.updates(s));
  await models.putBlob({ name: objectNames.global(1) }, MODEL);
  await (await new Objm(siteB.nc).open(bucket.updates(B))).putBlob({ name: objectNames.update(1, 'b-nonce-0000000001') }, UPDATE_B);
});

afterAll(async () => {
  await Promise.all([coordinator, siteA, siteB, operator].map((c) => c?.nc.close()));
});

describe('the trust', () => {
  it('the Consort account has JetStream: file storage unlimited, memory storage small, streams and consumers unlimited', async () => {
    const info = await (await jetstreamManager(coordinator.nc)).getAccountInfo();
    expect(info.limits).toMatchObject({ max_memory: ACCOUNT_MEMORY_STORAGE_BYTES, max_storage: -1, max_streams: -1, max_consumers: -1 });
    expect(info.streams).toBeGreaterThanOrEqual(4);
  });

  it('a user minted with the signing key read back from account.nk logs in; one of another trust, none or an expired one does not', async () => {
    const signer = parseAccountSigner(renderAccountSigner(nats.trust.signer));
    expect(signer).toEqual(nats.trust.signer);
    const again = await mintUserCreds(signer, { name: A, permissions: sitePermissions(KEY, A) });
    const ok = await connectAs(nats.url, credsFile(again, 'again'), A);
    await ok.flush();
    await ok.close();

    const refused = async (creds: string) => {
      const err = await connectAs(nats.url, creds, A, { maxReconnectAttempts: 0 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CliError);
      expect((err as CliError).code).toBe('CONSORT_CLI_NATS');
      expect((err as CliError).cause).toBeInstanceOf(AuthorizationError);
    };
    const foreign = await createNatsTrust();
    await refused(credsFile(await mintUserCreds(foreign.signer, { name: A, permissions: sitePermissions(KEY, A) }), 'foreign'));
    const expired = await mintUserCreds(nats.trust.signer, { name: A, permissions: sitePermissions(KEY, A), expiresAt: new Date(Date.now() - 1000) });
    await refused(credsFile(expired, 'expired'));
    await expect(connect({ servers: nats.url, maxReconnectAttempts: 0 })).rejects.toBeInstanceOf(AuthorizationError);
    // The plain NKey seed of a minted user is no login either: the server wants its JWT.
    await refused(perm.sites[A]!.seed);
  });

  it('a connection is closed when its JWT expires, and comes back with the renewed .creds file (same key)', async () => {
    const first = await mintUserCreds(nats.trust.signer, { name: A, permissions: sitePermissions(KEY, A), expiresAt: new Date(Date.now() + 2000) });
    const path = credsFile(first, 'renewed');
    const nc = await connectAs(nats.url, path, A);
    const events: string[] = [];
    (async () => {
      for await (const s of nc.status()) events.push(s.type === 'error' ? `error ${s.error.name}` : s.type);
    })();
    const renewed = await mintUserCreds(nats.trust.signer, { name: A, permissions: sitePermissions(KEY, A), expiresAt: inAnHour(), seed: first.seed });
    expect(renewed.publicKey).toBe(first.publicKey);
    expect(readSeed(path)).toBe(first.seed);
    writeFileSync(path, renewed.creds);
    await soon(() => events.includes('reconnect'), 'a reconnect after the JWT expired', 10_000);
    expect(events.some((e) => /Expired/.test(e))).toBe(true);
    // The renewed login works as site A.
    const reply = collect(coordinator.nc, subj.hello(A));
    await coordinator.nc.flush();
    nc.publish(subj.hello(A), 'back');
    await soon(() => reply.msgs.length > 0, 'the hello after the renewal');
    reply.sub.unsubscribe();
    await nc.close();
  });

  it("a coordinator of 200 sites logs in (its JWT, about 150 KB, travels in the CONNECT line); a JWT past the server's line limit is refused when minted", async () => {
    const many = Array.from({ length: 200 }, (_, i) => `hospital-${i}`);
    const big = await mintUserCreds(nats.trust.signer, { name: COORDINATOR_USER, permissions: coordinatorPermissions(KEY, many) });
    expect(big.jwt.length).toBeGreaterThan(100_000);
    const nc = await connectAs(nats.url, credsFile(big, 'big-coordinator'), COORDINATOR_USER);
    await nc.flush();
    await nc.close();
    const tooMany = Array.from({ length: 2000 }, (_, i) => `hospital-${i}`);
    const refused = await mintUserCreds(nats.trust.signer, { name: COORDINATOR_USER, permissions: coordinatorPermissions(KEY, tooMany) }).then(
      () => undefined,
      (e: unknown) => e as Error & { code?: string },
    );
    expect(refused?.code).toBe('CONSORT_C_NATS_TRUST');
    expect(refused?.message).toMatch(/max_control_line/);
  });

  it('connectAs refuses a .creds file minted for another user (its inbox would get no replies)', async () => {
    await expect(connectAs(nats.url, join(dir, 'perm-a.creds'), B)).rejects.toMatchObject({
      code: 'CONSORT_CLI_CREDENTIALS',
      message: /for user "site-a", not "site-b"/,
    });
  });
});

describe('a site does what a site does, and nothing of another site or job', () => {
  it("A says hello and sends an update (request/reply through its own inbox); not in B's name", async () => {
    const answer = (all: string) =>
      coordinator.nc.subscribe(all, {
        callback: (_err, m) => {
          m.respond(`ack ${m.subject}`);
        },
      });
    const subs = [subj.helloAll, subj.updateAll, subj.evaluationAll].map(answer);
    await coordinator.nc.flush();
    for (const s of [subj.hello, subj.update, subj.evaluation]) {
      expect((await siteA.nc.request(s(A), 'envelope', { timeout: 5000 })).string()).toBe(`ack ${s(A)}`);
      await expect(siteA.nc.request(s(B), 'envelope', { timeout: 5000 })).rejects.toThrow(/Permissions Violation for Publish/);
    }
    for (const sub of subs) sub.unsubscribe();
    expect(coordinator.violations).toEqual([]);
  });

  it('A reads the global model as the site runner does (direct get), also one of several read batches; not through a consumer', {
    timeout: 30_000,
  }, async () => {
    const before = siteA.violations.length;
    expect(digestOf(await siteReads(siteA, bucket.models, objectNames.global(1)))).toEqual(digestOf(MODEL));
    const large = randomBytes(OBJECT_READ_BATCH_BYTES + 3 * 1024 * 1024);
    await (await new Objm(coordinator.nc).open(bucket.models)).putBlob({ name: objectNames.global(0) }, large);
    expect(digestOf(await siteReads(siteA, bucket.models, objectNames.global(0)))).toEqual(digestOf(large));
    expect(siteA.violations.slice(before)).toEqual([]);
    // A consumer's creator could have it deliver onto any subject: a site may create none.
    await expect((await new Objm(siteA.nc).open(bucket.models)).getBlob(objectNames.global(1))).rejects.toThrow(/CONSUMER\.CREATE/);
  });

  it("A puts its update into its own bucket, which the coordinator reads; not into B's, nor the models", async () => {
    const name = objectNames.update(1, 'a-nonce-0000000001');
    await (await new Objm(siteA.nc).open(bucket.updates(A))).putBlob({ name }, UPDATE_A);
    expect(digestOf(await (await new Objm(coordinator.nc).open(bucket.updates(A))).getBlob(name))).toEqual(digestOf(UPDATE_A));
    const intoB = await new Objm(siteA.nc).open(bucket.updates(B), false);
    await expect(intoB.putBlob({ name: objectNames.update(1, 'forged-by-a-00001') }, UPDATE_A)).rejects.toThrow(/Permissions Violation/);
    const models = await new Objm(siteA.nc).open(bucket.models);
    await expect(models.putBlob({ name: objectNames.global(2) }, UPDATE_A)).rejects.toThrow(/Permissions Violation/);
  });

  it("A cannot read B's update objects (the coordinator can)", async () => {
    const name = objectNames.update(1, 'b-nonce-0000000001');
    await expect(new Objm(siteA.nc).open(bucket.updates(B))).rejects.toThrow(/Permissions Violation for Publish to "\$JS\.API\.STREAM\.INFO\.OBJ_/);
    const unchecked = await new Objm(siteA.nc).open(bucket.updates(B), false);
    await expect(unchecked.getBlob(name)).rejects.toThrow(/Permissions Violation for Publish to "\$JS\.API\.STREAM\.MSG\.GET\.OBJ_/);
    expect(digestOf(await (await new Objm(coordinator.nc).open(bucket.updates(B))).getBlob(name))).toEqual(digestOf(UPDATE_B));
  });

  it("A hears its own tasks and the round notices, not B's tasks (B does), and not B's or the coordinator's inbox", async () => {
    const mine = collect(siteA.nc, subj.task(A));
    const rounds = collect(siteA.nc, subj.round);
    const theirs = collect(siteB.nc, subj.task(B));
    const spy = siteA.nc.subscribe(subj.task(B));
    await violation(siteA, 'subscription', subj.task(B));
    expect(await spy.closed).toBeInstanceOf(PermissionViolationError);
    for (const inbox of [`${jobInboxPrefix(KEY, B)}.>`, `${jobInboxPrefix(KEY, COORDINATOR_USER)}.>`, `${inboxPrefix(A)}.>`, '_INBOX.>']) {
      siteA.nc.subscribe(inbox);
      await violation(siteA, 'subscription', inbox);
    }
    await Promise.all([siteA.nc.flush(), siteB.nc.flush()]);
    coordinator.nc.publish(subj.task(B), 'task for b');
    coordinator.nc.publish(subj.round, 'round 1 started');
    coordinator.nc.publish(subj.task(A), 'task for a');
    await soon(() => mine.msgs.length > 0 && theirs.msgs.length > 0 && rounds.msgs.length > 0, 'the tasks and the round notice');
    expect(mine.msgs.map((m) => m.string())).toEqual(['task for a']);
    expect(theirs.msgs.map((m) => m.string())).toEqual(['task for b']);
    for (const c of [mine, rounds, theirs]) c.sub.unsubscribe();
  });

  it('a site and a coordinator of one job reach nothing of another job on the same server (the operator does)', async () => {
    const objm = new Objm(operator.nc);
    await objm.create(buckets(OTHER).models);
    await (await objm.open(buckets(OTHER).models)).putBlob({ name: objectNames.global(1) }, MODEL);
    for (const c of [siteA, coordinator]) {
      await expect(new Objm(c.nc).open(buckets(OTHER).models)).rejects.toThrow(
        /Permissions Violation for Publish to "\$JS\.API\.STREAM\.INFO\.OBJ_consort-lab_other-models"/,
      );
      const hello = subjects(OTHER).hello(A);
      c.nc.publish(hello, 'stranger');
      await violation(c, 'publish', hello);
    }
    // Site A of the other job, with its own credentials, reads it.
    const otherA = await watchedClient(nats.url, A, credsFile(other.sites[A]!, 'other-a'));
    expect(digestOf(await siteReads(otherA, buckets(OTHER).models, objectNames.global(1)))).toEqual(digestOf(MODEL));
    // The same site name in two jobs is two users, and their replies (JetStream's deliveries of
    // object chunks included) go to two inboxes: neither may listen on the other's.
    expect([perm.sites[A]!.inboxPrefix, other.sites[A]!.inboxPrefix]).toEqual([`_INBOX_${KEY}_${A}`, `_INBOX_${OTHER}_${A}`]);
    const spy = collect(otherA.nc, `${jobInboxPrefix(KEY, A)}.>`);
    await violation(otherA, 'subscription', `${jobInboxPrefix(KEY, A)}.>`);
    const otherCoordinator = await watchedClient(nats.url, COORDINATOR_USER, credsFile(other.coordinator, 'other-coordinator'));
    otherCoordinator.nc.subscribe(`${jobInboxPrefix(KEY, COORDINATOR_USER)}.>`);
    await violation(otherCoordinator, 'subscription', `${jobInboxPrefix(KEY, COORDINATOR_USER)}.>`);
    // Meanwhile this job's site A reads its model, through its own inbox.
    expect(digestOf(await siteReads(siteA, bucket.models, objectNames.global(1)))).toEqual(digestOf(MODEL));
    expect(spy.msgs).toEqual([]);
    await Promise.all([otherA.nc.close(), otherCoordinator.nc.close()]);
  });
});

describe("the Consort operator's user", () => {
  it('hears and speaks on every job, reads every bucket, answers sites; no site inbox', async () => {
    const hellos = collect(operator.nc, 'consort.hello.>');
    await operator.nc.flush();
    siteA.nc.publish(subj.hello(A), 'hi');
    await soon(() => hellos.msgs.length > 0, "the operator hears A's hello");
    hellos.sub.unsubscribe();
    const answering = operator.nc.subscribe(subjects(KEY).update(A), {
      callback: (_err, m) => {
        m.respond('ack');
      },
    });
    await operator.nc.flush();
    expect((await siteA.nc.request(subj.update(A), 'envelope', { timeout: 5000 })).string()).toBe('ack');
    answering.unsubscribe();
    expect(digestOf(await (await new Objm(operator.nc).open(bucket.updates(B))).getBlob(objectNames.update(1, 'b-nonce-0000000001')))).toEqual(
      digestOf(UPDATE_B),
    );
    for (const inbox of [`${jobInboxPrefix(KEY, A)}.>`, `${jobInboxPrefix(KEY, COORDINATOR_USER)}.>`]) {
      operator.nc.subscribe(inbox);
      await violation(operator, 'subscription', inbox);
    }
  });
});

describe('federated runs over JWT auth', () => {
  const fedJob = (name: string, sites: typeof SMALL_HOSPITALS, seed: number) =>
    FederatedJob.parse({
      ...jobManifest(name, hospitalSpec(sites, { rounds: 3, seed, training: { epochs: 1, batchSize: 32, optimizer: 'sgd', learningRate: 0.1 } })),
      metadata: { name, namespace: 'lab' },
    });

  it('two jobs at once on the shared server, one run by the operator user over one connection, one by its own coordinator user, end in the bytes of their in-process runs', {
    timeout: 180_000,
  }, async () => {
    const byOperator = fedJob('fed-op', SMALL_HOSPITALS, 11);
    const byCoordinator = fedJob('fed-co', SMALL_HOSPITALS.slice(0, 2), 12);
    const connections: NatsConnection[] = [];
    const as = async (user: string, creds: string) => {
      const nc = await connectAs(nats.url, creds, user);
      connections.push(nc);
      return nc;
    };
    try {
      const start = async (j: FederatedJob, nc: NatsConnection | undefined) => {
        const key = jobKey(j.metadata);
        const names = j.spec.sites.map((s) => s.name);
        const creds = await mintJobCreds(nats.trust.signer, key, names, { expiresAt: inAnHour() });
        const sites = names.map(async (s) => {
          const file = credsFile(creds.sites[s]!, `${key}-${s}`);
          return runSite({ job: j, site: s, nc: await as(s, file), seed: readSeed(file), baseDir: '.', backend: 'cpu', log: () => {} });
        });
        const coordinatorNc = nc ?? (await as(COORDINATOR_USER, credsFile(creds.coordinator, `${key}-coordinator`)));
        const result = await runNatsCoordinator({ job: j, nc: coordinatorNc, siteKeys: creds.keys.sites, log: () => {}, joinTimeoutMs: 60_000 });
        for (const s of await Promise.all(sites)) expect(s.fits).toBeGreaterThan(0);
        return result;
      };
      const watched = await watchedClient(nats.url, OPERATOR_USER, join(dir, `${OPERATOR_USER}.creds`));
      connections.push(watched.nc);
      const operatorNc = watched.nc;
      const [overOperator, overCoordinator] = await Promise.all([start(byOperator, operatorNc), start(byCoordinator, undefined)]);
      for (const [j, over] of [
        [byOperator, overOperator],
        [byCoordinator, overCoordinator],
      ] as const) {
        const local = await runLocal({ job: j, baseDir: '.', baselines: false, backend: 'cpu', threads: 1 });
        expect(over.roundsCompleted).toBe(3);
        expect(over.rounds.at(-1)!.participants).toEqual(j.spec.sites.map((s) => s.name).sort());
        expect(
          Buffer.compare(
            Buffer.from(over.global.buffer, over.global.byteOffset, over.global.byteLength),
            Buffer.from(local.weights.buffer, local.weights.byteOffset, local.weights.byteLength),
          ),
        ).toBe(0);
      }
      expect(watched.violations).toEqual([]);
    } finally {
      await Promise.all(connections.map((nc) => nc.close().catch(() => {})));
    }
  });
});
