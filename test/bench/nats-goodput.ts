// Goodput of model broadcast + update collection over a real nats-server (the job's generated
// configuration: NKey users, least-privilege permissions), 10 sites and a 100 MB model (25M
// float32), against raw nats.js publish/subscribe of the same bytes on the same server.
//
// Consort: the coordinator's real NatsTransport (publishModel: safetensors written from the
// model's memory by putObject, hashed as it goes; fit tasks; onUpdate: the UpdateIngestor's
// envelope checks, the Object Store read of the update checked against its digest, decode, range
// checks) in this process; the 10 sites in another process (nats-sites.ts: each reads the model
// from the models bucket by direct get (readObject), checked against the task's digest, and
// decodes it, puts a 100 MB update into its own updates bucket with putObject and sends the
// signed envelope). Raw: one publisher sends the model in 128 KiB core-NATS messages to 10
// subscribers, then each of 10 publishers sends its 100 MB to one subscriber, with window flow
// control. Goodput = (10 models delivered + 10 updates collected) / wall time, for both.
import { tuneGcForModel } from '../../core/gc-tuning.ts';
import { availableParallelism } from 'node:os';
import type { NatsConnection } from '@nats-io/transport-node';
import { Objm, type ObjectStore, StorageType } from '@nats-io/obj';
import { natsAuthFor } from '../../cli/nats/config.ts';
import { connectAs } from '../../cli/nats/connect.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { NatsServer } from '../../cli/nats/server.ts';
import { layoutSize } from '../../core/model/layout.ts';
import { UpdateIngestor } from '../../core/protocol/ingestion.ts';
import { buckets, jobKey, OBJECT_CHUNK_BYTES, PROTOCOL_VERSION, subjects } from '../../core/protocol/subjects.ts';
import { encodeSafetensors } from '../../core/tensor/safetensors.ts';
import { STORED_UPDATES_FROM } from '../../operator/coordinator/nats-coordinator.ts';
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
  cpuSeconds,
  cpuSecondsOf,
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

/** CPU seconds spent by each process over a whole variant (all its repetitions, set-up included). */
interface Cpu {
  coordinator: number;
  sites: number;
  server: number;
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
  // Both the raw baseline and Consort's coordinator run in this process: tuned for this model
  // before either, as Consort's coordinator tunes itself (core/gc-tuning.ts).
  tuneGcForModel(modelBytes);
  const auth = natsAuthFor(job);
  const server = await NatsServer.start({ config: withRawAccount(auth.config) });
  const connections: NatsConnection[] = [];
  const processes: Array<{ kill(): void }> = [];
  try {
    // ---- raw baselines: 128 KiB messages (the Object Store's default chunk) and 1 MiB (the server's max_payload) ----
    const rawVariants: Array<{ label: string; plan: RawPlan; reps: Rep[]; cpu: Cpu }> = [];
    for (const [label, chunkBytes] of [
      ['128 KiB', 128 * 1024],
      ['1 MiB', 1024 * 1024],
    ] as const) {
      // 2 MiB in flight per sender (with 4 MiB, the server dropped messages to the one reader of 10 senders).
      const window = Math.max(2, (2 * 1024 * 1024) / chunkBytes);
      const plan: RawPlan = { modelBytes: params * 4, updateBytes: params * 4, chunkBytes, window, ackEvery: Math.max(1, window / 4), reps };
      const cpu0 = { me: cpuSeconds(), server: cpuSecondsOf(server.pid) };
      const rawSites = startSites({ url: server.url, mode: 'raw', sites: names, raw: plan });
      processes.push(rawSites);
      const rawReps = await rawCoordinator(server.url, names, plan);
      const rawResult = await rawSites.result;
      const rawTimings = rawResult.raw!;
      rawVariants.push({
        label,
        plan,
        cpu: { coordinator: cpuSeconds() - cpu0.me, sites: rawResult.cpuSeconds, server: cpuSecondsOf(server.pid) - cpu0.server },
        reps: rawReps.map((r) => ({
          seconds: (r.end - r.start) / 1000,
          broadcastSeconds: (Math.max(...rawTimings.filter((t) => t.rep === r.rep).map((t) => t.modelReceived)) - r.start) / 1000,
          bytes: 2 * sites * plan.modelBytes,
        })),
      });
    }

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
      // As runNatsCoordinator decides: a model this large keeps its updates in their buckets,
      // each checked as it streams in (the read measured here) and read again at round close.
      storedUpdates: params >= STORED_UPDATES_FROM,
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
    const cpu0 = { me: cpuSeconds(), server: cpuSecondsOf(server.pid) };
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
    const consortCpu: Cpu = { coordinator: cpuSeconds() - cpu0.me, sites: sitesResult.cpuSeconds, server: cpuSecondsOf(server.pid) - cpu0.server };
    const phases: Array<{
      firstTaskS: number;
      modelReadMedianS: number;
      modelReadMaxS: number;
      updateWriteMedianS: number;
      lastWrittenS: number;
      lastAckS: number;
    }> = [];
    for (let rep = 0; rep < reps; rep++) {
      const fits = sitesResult.timings.filter((t) => t.type === 'fit' && t.round === rep + 1);
      const t0 = consortStarts[rep]!;
      const s = (ms: number) => ms / 1000;
      phases.push({
        firstTaskS: s(Math.min(...fits.map((t) => t.received)) - t0),
        modelReadMedianS: s(median(fits.map((t) => t.modelRead - t.received))),
        modelReadMaxS: s(Math.max(...fits.map((t) => t.modelRead - t.received))),
        updateWriteMedianS: s(median(fits.map((t) => t.written - t.deltaReady))),
        lastWrittenS: s(Math.max(...fits.map((t) => t.written)) - t0),
        lastAckS: s(Math.max(...fits.map((t) => t.acked)) - t0),
      });
      consort[rep]!.broadcastSeconds = (Math.max(...fits.map((t) => t.modelRead)) - t0) / 1000;
      consort[rep]!.bytes = sites * modelBytes + (transport.bytesIn.get(rep + 1) ?? 0);
    }
    if (accepted !== sites * reps) throw new Error(`only ${accepted} of ${sites * reps} updates were accepted`);

    const rate = (r: Rep) => r.bytes / MB / r.seconds;
    const summary = (list: Rep[], modelSize: number, updateSize: number) => ({
      seconds: median(list.map((r) => r.seconds)),
      goodputMBps: median(list.map(rate)),
      broadcastMBps: median(list.map((r) => (sites * modelSize) / MB / r.broadcastSeconds)),
      collectionMBps: median(list.map((r) => (sites * updateSize) / MB / (r.seconds - r.broadcastSeconds))),
    });
    const raws = rawVariants.map((v) => ({ ...v, ...summary(v.reps, v.plan.modelBytes, v.plan.updateBytes) }));
    const rawRate = Math.max(...raws.map((r) => r.goodputMBps));
    const mine = summary(consort, modelBytes, modelBytes);
    const row = (label: string, r: ReturnType<typeof summary>) => [
      label,
      fixed(r.seconds, 2),
      fixed(r.broadcastMBps, 0),
      fixed(r.collectionMBps, 0),
      fixed(r.goodputMBps, 0),
      `${fixed(r.goodputMBps / rawRate, 2)}x`,
    ];
    const med = (f: (p: (typeof phases)[number]) => number) => fixed(median(phases.map(f)), 2);
    const retried = [...new Set(sitesResult.retries.map((r) => r.replace(/^site-\d+ /, '').replace(/r\d+\/\S+/, 'r…')))];
    printTable(
      `Goodput: model broadcast + update collection, ${sites} sites, ${fixed(modelBytes / MB, 0)} MB model, one nats-server (median of ${reps})`,
      ['path', 'round s', 'broadcast MB/s', 'collection MB/s', 'goodput MB/s', 'vs raw'],
      [
        ...raws.map((r) => row(`raw nats.js pub/sub, ${r.label} messages, windowed`, r)),
        row(`Consort: NatsTransport, Object Store (${OBJECT_CHUNK_BYTES / 1024} KiB chunks), ingestor`, mine),
      ],
      [
        `goodput = (${sites} x model delivered + ${sites} x update collected) / wall time from the model's publication to the last update taken; vs raw: against the faster raw variant; target: Consort >= 0.6x`,
        'broadcast: until the last site has the model (for Consort: read, SHA-256 checked, decoded); collection: the rest of the round',
        `Consort's round in s: tasks out (model encoded, hashed, written) ${med((p) => p.firstTaskS)}; one site's model read ${med((p) => p.modelReadMedianS)} (slowest ${med((p) => p.modelReadMaxS)}); one site's update write ${med((p) => p.updateWriteMedianS)}; last update written at ${med((p) => p.lastWrittenS)}, last one taken at ${med((p) => p.lastAckS)}`,
        `CPU seconds per GB moved (coordinator + sites + nats-server; all on this machine's ${availableParallelism()} cores): ${[...raws.map((r) => [`raw ${r.label}`, r.cpu, r.reps.length] as const), ['Consort', consortCpu, consort.length] as const].map(([l, c, n]) => `${l} ${fixed(c.coordinator / ((2 * n * sites * modelBytes) / 1e9), 2)} + ${fixed(c.sites / ((2 * n * sites * modelBytes) / 1e9), 2)} + ${fixed(c.server / ((2 * n * sites * modelBytes) / 1e9), 2)}`).join('; ')}`,
        `reads and writes tried again after an error (as site-runner does): ${sitesResult.retries.length}${retried.length > 0 ? ` (${retried.slice(0, 3).join('; ')})` : ''}`,
        'coordinator and sites in two processes on loopback; Object Store on disk (JetStream file storage), as the product uses it',
      ],
    );
    return {
      sites,
      parameters: params,
      modelBytes,
      reps,
      raw: raws.map((r) => ({
        label: r.label,
        chunkBytes: r.plan.chunkBytes,
        windowChunks: r.plan.window,
        reps: r.reps,
        goodputMBps: r.goodputMBps,
        broadcastMBps: r.broadcastMBps,
        collectionMBps: r.collectionMBps,
        cpuSeconds: r.cpu,
      })),
      consort: { chunkBytes: OBJECT_CHUNK_BYTES, reps: consort, phases, ...mine, updateBytesIn: bytesIn, cpuSeconds: consortCpu },
      ratio: mine.goodputMBps / rawRate,
      siteRetries: sitesResult.retries,
      sitesProcessMaxRssBytes: sitesResult.maxRssBytes,
      coordinatorMaxRssBytes: process.resourceUsage().maxRSS * 1024,
    };
  } finally {
    for (const p of processes) p.kill();
    for (const c of connections) await c.close().catch(() => {});
    await server.stop();
  }
}
