// Goodput of model broadcast + update collection over a real nats-server (the job's generated
// configuration: NKey users, least-privilege permissions), 10 sites and a 100 MB model (25M
// float32), against raw nats.js publish/subscribe of the same bytes on the same server.
//
// Consort: the coordinator's real NatsTransport (publishModel: safetensors, SHA-256, Object
// Store put; fit tasks; onUpdate: the UpdateIngestor's envelope checks, the Object Store read
// of the update, SHA-256, decode, range checks) in this process; the 10 sites in another
// process (nats-sites.ts: each reads the model from the models bucket, checks it and decodes
// it, encodes a 100 MB update, puts it into its own updates bucket and sends the signed
// envelope). Raw: one publisher sends the model in 128 KiB core-NATS messages to 10
// subscribers, then each of 10 publishers sends its 100 MB to one subscriber, with window flow
// control. Goodput = (10 models delivered + 10 updates collected) / wall time, for both.
import type { NatsConnection } from '@nats-io/transport-node';
import { Objm, type ObjectStore, StorageType } from '@nats-io/obj';
import { natsAuthFor } from '../../cli/nats/config.ts';
import { connectAs } from '../../cli/nats/connect.ts';
import { COORDINATOR_USER } from '../../cli/nats/permissions.ts';
import { NatsServer } from '../../cli/nats/server.ts';
import { layoutSize } from '../../core/model/layout.ts';
import { UpdateIngestor } from '../../core/protocol/ingestion.ts';
import { buckets, jobKey, PROTOCOL_VERSION, subjects } from '../../core/protocol/subjects.ts';
import { encodeSafetensors } from '../../core/tensor/safetensors.ts';
import { NatsTransport } from '../../operator/coordinator/nats-transport.ts';
import {
  benchJob,
  benchLayout,
  benchValues,
  now,
  type RawPlan,
  rawCoordinator,
  type SitesResult,
  siteNames,
  startSites,
  withRawAccount,
} from './nats-sites.ts';
import { fixed, median, printTable } from './table.ts';

export interface GoodputArgs {
  quick: boolean;
}

const MB = 1e6;

async function openOrCreate(objm: Objm, name: string): Promise<ObjectStore> {
  try {
    return await objm.create(name, { storage: StorageType.File });
  } catch {
    return await objm.open(name);
  }
}

interface Rep {
  seconds: number;
  broadcastSeconds: number;
  bytes: number;
}

export async function run(args: GoodputArgs): Promise<unknown> {
  const sites = 10;
  const params = args.quick ? 5_000_000 : 25_000_000;
  const reps = args.quick ? 1 : 3;
  const names = siteNames(sites);
  const job = benchJob('goodput', sites, { aggregation: { roundDeadlineSeconds: 600 } });
  const key = jobKey(job.metadata);
  const subj = subjects(key);
  const bucket = buckets(key);
  const layout = benchLayout(params);
  const modelBytes = encodeSafetensors(layout, new Float32Array(layoutSize(layout))).length;
  const auth = natsAuthFor(job);
  const server = await NatsServer.start({ config: withRawAccount(auth.config) });
  const connections: NatsConnection[] = [];
  const processes: Array<{ kill(): void }> = [];
  try {
    // ---- raw baseline ----
    const plan: RawPlan = { modelBytes: params * 4, updateBytes: params * 4, chunkBytes: 128 * 1024, window: 16, ackEvery: 4, reps };
    if (process.env.CONSORT_BENCH_DEBUG) setTimeout(() => process.stderr.write(server.log().slice(-3000)), 12_000).unref();
    const rawSites = startSites({ url: server.url, mode: 'raw', sites: names, raw: plan });
    processes.push(rawSites);
    const rawReps = await rawCoordinator(server.url, names, plan);
    const rawTimings = (await rawSites.result).raw!;
    const raw: Rep[] = rawReps.map((r) => ({
      seconds: (r.end - r.start) / 1000,
      broadcastSeconds: (Math.max(...rawTimings.filter((t) => t.rep === r.rep).map((t) => t.modelReceived)) - r.start) / 1000,
      bytes: 2 * sites * plan.modelBytes,
    }));

    // ---- Consort: NatsTransport and the UpdateIngestor, sites in their own process ----
    const nc = await connectAs(server.url, auth.coordinator.seed, COORDINATOR_USER);
    connections.push(nc);
    const objm = new Objm(nc);
    const models = await openOrCreate(objm, bucket.models);
    const updateStores = new Map<string, ObjectStore>();
    for (const s of names) updateStores.set(s, await openOrCreate(objm, bucket.updates(s)));
    const ingestor = new UpdateIngestor({
      job: key,
      protocol: PROTOCOL_VERSION,
      siteKeys: new Map(Object.entries(auth.keys.sites)),
      layout,
      codec: job.spec.compression.codec,
      maxUpdateBytes: 64 * 1024 * 1024 + 16 * params,
      mode: 'sync',
      maxStaleness: job.spec.aggregation.maxStaleness,
      control: false,
    });
    const joined = new Set<string>();
    let allJoined: () => void = () => {};
    const everyoneIn = new Promise<void>((r) => {
      allJoined = r;
    });
    const transport = new NatsTransport({
      nc,
      spec: job.spec,
      job: key,
      subjects: subj,
      layout,
      models,
      modelsBucket: bucket.models,
      updates: async (s) => updateStores.get(s)!,
      ingestor,
      alive: () => [...joined],
      log: (l) => process.stderr.write(`goodput coordinator: ${l}\n`),
    });
    // As runNatsCoordinator: envelopes one at a time; hellos welcomed (the sites' heartbeat).
    let inbox: Promise<void> = Promise.resolve();
    const lastToken = (subject: string) => subject.split('.').pop() ?? '';
    let done = false;
    nc.subscribe(subj.updateAll, {
      callback: (_e, msg) => {
        inbox = inbox
          .then(() => transport.onUpdate(lastToken(msg.subject), msg))
          .catch((e: unknown) => {
            process.stderr.write(`goodput coordinator: ${(e as Error).message}\n`);
          });
      },
    });
    nc.subscribe(subj.helloAll, {
      callback: (_e, msg) => {
        joined.add(lastToken(msg.subject));
        if (joined.size === sites) allJoined();
        msg.respond(new TextEncoder().encode(JSON.stringify({ type: 'welcome', protocol: PROTOCOL_VERSION, accepted: true, round: 0, done })));
      },
    });
    await nc.flush();
    const consortSites = startSites({
      url: server.url,
      mode: 'consort',
      manifest: job,
      seeds: Object.fromEntries(names.map((s) => [s, auth.sites[s]!.seed])),
      sites: names,
      layout,
      update: 'model',
    });
    processes.push(consortSites);
    await everyoneIn;
    const consortStarts: number[] = [];
    const consort: Rep[] = [];
    let accepted = 0;
    let bytesIn = 0;
    for (let rep = 0; rep < reps; rep++) {
      const round = rep + 1;
      const global = benchValues(params, 100 + rep);
      const start = now();
      consortStarts.push(start);
      for await (const o of transport.fit(round, names, global, { proximalMu: 0 })) if (o.ok) accepted++;
      consort.push({ seconds: (now() - start) / 1000, broadcastSeconds: 0, bytes: 0 });
      bytesIn += transport.bytesIn.get(round) ?? 0;
    }
    done = true;
    nc.publish(subj.round, new TextEncoder().encode(JSON.stringify({ type: 'round', protocol: PROTOCOL_VERSION, job: key, round: reps, phase: 'done' })));
    await nc.flush();
    const sitesResult: SitesResult = await consortSites.result;
    for (let rep = 0; rep < reps; rep++) {
      const fits = sitesResult.timings.filter((t) => t.type === 'fit' && t.round === rep + 1);
      consort[rep]!.broadcastSeconds = (Math.max(...fits.map((t) => t.modelRead)) - consortStarts[rep]!) / 1000;
      consort[rep]!.bytes = sites * modelBytes + (transport.bytesIn.get(rep + 1) ?? 0);
    }
    if (accepted !== sites * reps) throw new Error(`only ${accepted} of ${sites * reps} updates were accepted`);

    const rate = (r: Rep) => r.bytes / MB / r.seconds;
    const rawRate = median(raw.map(rate));
    const consortRate = median(consort.map(rate));
    const rawBroadcast = median(raw.map((r) => (sites * plan.modelBytes) / MB / r.broadcastSeconds));
    const consortBroadcast = median(consort.map((r) => (sites * modelBytes) / MB / r.broadcastSeconds));
    const rawCollect = median(raw.map((r) => (sites * plan.updateBytes) / MB / (r.seconds - r.broadcastSeconds)));
    const consortCollect = median(consort.map((r) => (sites * modelBytes) / MB / (r.seconds - r.broadcastSeconds)));
    printTable(
      `Goodput: model broadcast + update collection, ${sites} sites, ${fixed(modelBytes / MB, 0)} MB model, one nats-server (median of ${reps})`,
      ['path', 'round s', 'broadcast MB/s', 'collection MB/s', 'goodput MB/s', 'vs raw'],
      [
        [
          'raw nats.js pub/sub (128 KiB messages, windowed)',
          fixed(median(raw.map((r) => r.seconds)), 2),
          fixed(rawBroadcast, 0),
          fixed(rawCollect, 0),
          fixed(rawRate, 0),
          '1.00x',
        ],
        [
          'Consort (NatsTransport, Object Store, ingestor)',
          fixed(median(consort.map((r) => r.seconds)), 2),
          fixed(consortBroadcast, 0),
          fixed(consortCollect, 0),
          fixed(consortRate, 0),
          `${fixed(consortRate / rawRate, 2)}x`,
        ],
      ],
      [
        `goodput = (${sites} x model delivered + ${sites} x update collected) / wall time from the model's publication to the last update taken; target: Consort >= 0.6x of raw`,
        'broadcast: until the last site has the model (read, checked and decoded for Consort); collection: the rest of the round',
        `coordinator and sites in two processes, on ${server.url.split(':')[1]?.replace('//', '')} loopback; Object Store on disk (JetStream file storage) as the product uses it`,
      ],
    );
    return {
      sites,
      parameters: params,
      modelBytes,
      reps,
      raw: { reps: raw, goodputMBps: rawRate, broadcastMBps: rawBroadcast, collectionMBps: rawCollect, chunkBytes: plan.chunkBytes, window: plan.window },
      consort: { reps: consort, goodputMBps: consortRate, broadcastMBps: consortBroadcast, collectionMBps: consortCollect, updateBytesIn: bytesIn },
      ratio: consortRate / rawRate,
      sitesProcessMaxRssBytes: sitesResult.maxRssBytes,
      coordinatorMaxRssBytes: process.resourceUsage().maxRSS * 1024,
    };
  } finally {
    if (process.env.CONSORT_BENCH_DEBUG) process.stderr.write(server.log().slice(-3000));
    for (const p of processes) p.kill();
    for (const c of connections) await c.close().catch(() => {});
    await server.stop();
  }
}
