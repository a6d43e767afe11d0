// Two jobs on one shared server (`consort nats-config --cluster`) whose names the consortia chose
// freely: job "x" with a site named "y-state", and job "x-up-y". Every bucket is a job's own: job
// x's site writes into its update bucket, and job x's coordinator empties and destroys its
// buckets as a job's end and deletion do, and job x-up-y's checkpoint is still there, unchanged.
// (Update buckets were named `consort-<job>-up-<site>`, which made that update bucket job x-up-y's
// state bucket.)
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Objm } from '@nats-io/obj';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { buckets, jobKey, objectNames } from '../../core/protocol/subjects.ts';
import { type MintedUser, mintJobCreds } from '../../operator/nats/trust.ts';
import { digestOf, type WatchedClient, watchedClient } from '../helpers/nats-clients.ts';
import { useClusterNatsServer } from '../helpers/nats-server.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const X = jobKey({ namespace: 'lab', name: 'x' });
const OTHER = jobKey({ namespace: 'lab', name: 'x-up-y' });
const SITES_X = ['y-state', 'y-models'];

const tmp = useTmpDirs('file');
let dir: string;
const nats = useClusterNatsServer();

let coordinatorX: WatchedClient;
let coordinatorOther: WatchedClient;
const sitesX: Record<string, WatchedClient> = {};
const clients = () => [coordinatorX, coordinatorOther, ...Object.values(sitesX)];

const CHECKPOINT = new Uint8Array(10_000).map((_, i) => (i * 31) % 251);
const MODEL = new Uint8Array(10_000).map((_, i) => (i * 17) % 251);
const FORGED = new Uint8Array(500).fill(7);

function credsFile(u: MintedUser, label: string): string {
  const path = join(dir, `${label}.creds`);
  writeFileSync(path, u.creds, { mode: 0o600 });
  return path;
}

beforeAll(async () => {
  dir = tmp('consort-bucket-names');
  const inAnHour = new Date(Date.now() + 3600_000);
  const x = await mintJobCreds(nats.trust.signer, X, SITES_X, { expiresAt: inAnHour });
  const other = await mintJobCreds(nats.trust.signer, OTHER, ['a'], { expiresAt: inAnHour });
  coordinatorX = await watchedClient(nats.url, COORDINATOR_USER, credsFile(x.coordinator, 'x-coordinator'));
  coordinatorOther = await watchedClient(nats.url, COORDINATOR_USER, credsFile(other.coordinator, 'other-coordinator'));
  for (const s of SITES_X) sitesX[s] = await watchedClient(nats.url, s, credsFile(x.sites[s]!, `x-${s}`));
  // Job x-up-y runs: its coordinator's state and models buckets, a checkpoint and a global model.
  const objm = new Objm(coordinatorOther.nc);
  const b = buckets(OTHER);
  await (await objm.create(b.state)).putBlob({ name: objectNames.checkpoint }, CHECKPOINT);
  await (await objm.create(b.models)).putBlob({ name: objectNames.global(1) }, MODEL);
});

afterAll(async () => {
  await Promise.all(clients().map((c) => c?.nc.close()));
});

describe('bucket names of jobs on a shared server', () => {
  it('no bucket of job x is a bucket of job x-up-y', () => {
    const of = (job: string, sites: string[]) => {
      const b = buckets(job);
      return [b.models, b.state, ...sites.map((s) => b.updates(s))];
    };
    const mine = new Set(of(X, SITES_X));
    expect(of(OTHER, ['a', ...SITES_X]).filter((n) => mine.has(n))).toEqual([]);
  });

  it("job x's sites write their updates and its coordinator empties and destroys its buckets; job x-up-y's checkpoint and model stay", async () => {
    const b = buckets(X);
    const objm = new Objm(coordinatorX.nc);
    // As the coordinator opens its sites' update buckets (openOrCreate), then each site writes into its own.
    for (const s of SITES_X) {
      await objm.create(b.updates(s)).catch(() => objm.open(b.updates(s)));
      const own = await new Objm(sitesX[s]!.nc).open(b.updates(s));
      await own.putBlob({ name: objectNames.checkpoint }, FORGED);
      await own.putBlob({ name: objectNames.global(1) }, FORGED);
    }
    const other = new Objm(coordinatorOther.nc);
    const read = async (bucket: string, name: string) => digestOf(await (await other.open(bucket)).getBlob(name));
    expect(await read(buckets(OTHER).state, objectNames.checkpoint)).toEqual(digestOf(CHECKPOINT));
    expect(await read(buckets(OTHER).models, objectNames.global(1))).toEqual(digestOf(MODEL));

    // Job x ends (its update buckets emptied) and is deleted (its buckets destroyed).
    for (const s of SITES_X) await (await objm.open(b.updates(s))).destroy();
    expect(await read(buckets(OTHER).state, objectNames.checkpoint)).toEqual(digestOf(CHECKPOINT));
    expect(await read(buckets(OTHER).models, objectNames.global(1))).toEqual(digestOf(MODEL));
    for (const c of clients()) expect(c.violations).toEqual([]);
  });
});
