// Coordinator peak RSS against model size and number of sites. The coordinator
// (runNatsCoordinator, one round: model published, every site's update read, checked and
// folded, checkpoint, final evaluation, final model) runs in a process of its own, so that its
// maxRSS (process.resourceUsage) is its alone; the sites run in another process
// (nats-sites.ts) and each puts the same precomputed update into its own bucket without
// reading the model (a load generator: the coordinator's memory does not depend on it). A
// fresh nats-server per configuration, with the job's generated configuration.
//
// A 1 GB model with 50 sites is 50 GB of updates through JetStream's disk store (~10 minutes
// here, and most of the free disk): the full run measures 256 MB with 10 and 50 sites (how RSS
// scales with sites) and 1 GB with 10 sites (the size the target names), and adds 1 GB with 50
// sites when CONSORT_RSS_1G_50=1 and the store's disk has 60 GB free.
import { fork } from 'node:child_process';
import { statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type { NatsConnection } from '@nats-io/transport-node';
import { natsAuthFor } from '../../cli/nats/config.ts';
import { connectAs } from '../../cli/nats/connect.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { NatsServer } from '../../cli/nats/server.ts';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { benchJob, benchLayout, siteNames, startSites } from './nats-sites.ts';
import { fixed, printTable } from './table.ts';
import { allowWideSimd } from '../../core/aggregation/wide-simd.ts';

export interface RssArgs {
  quick: boolean;
}

const MB = 1e6;

export interface CoordinatorArgs {
  url: string;
  seed: string;
  manifest: unknown;
  siteKeys: Record<string, string>;
}

interface Sample {
  at: string;
  rss: number;
  arrayBuffers: number;
}

export interface CoordinatorFigures {
  maxRssBytes: number;
  /** RSS once the modules are loaded, before the job. */
  idleRssBytes: number;
  seconds: number;
  rejections: number;
  /** The refusals by code (a figure of load: retried envelopes answered NOT_READY, say). */
  rejectionCodes: Record<string, number>;
  participants: number;
  /** process.memoryUsage() at each event, and the largest RSS seen by a 50 ms sampler. */
  samples: Sample[];
  sampledPeakRss: number;
}

/** The coordinator's process: runs the job's one round and reports its own memory. */
export async function coordinator(a: CoordinatorArgs): Promise<CoordinatorFigures> {
  // As a coordinator process (cli/federation/commands.ts): 256-bit folds where the CPU has them.
  allowWideSimd();
  const idleRssBytes = process.memoryUsage().rss;
  const job = FederatedJob.parse(a.manifest);
  const samples: Sample[] = [];
  const sample = (at: string) => {
    const m = process.memoryUsage();
    samples.push({ at, rss: m.rss, arrayBuffers: m.arrayBuffers });
  };
  let sampledPeakRss = 0;
  const sampler = setInterval(() => {
    sampledPeakRss = Math.max(sampledPeakRss, process.memoryUsage.rss());
  }, 50);
  let nc: NatsConnection | undefined;
  try {
    nc = await connectAs(a.url, a.seed, COORDINATOR_USER);
    const t0 = performance.now();
    let answered = 0;
    const result = await runNatsCoordinator({
      job,
      nc,
      siteKeys: a.siteKeys,
      log: () => {},
      joinTimeoutMs: 120_000,
      aliveMs: 30_000,
      events: {
        roundStarted: () => sample('round started'),
        siteAnswered: () => {
          answered++;
          if (answered === 1 || answered === job.spec.sites.length) sample(`update ${answered} taken`);
        },
        roundFinished: () => sample('round finished (checkpoint written)'),
      },
    });
    sample('job done (final model written)');
    return {
      maxRssBytes: process.resourceUsage().maxRSS * 1024,
      idleRssBytes,
      seconds: (performance.now() - t0) / 1000,
      rejections: Object.values(result.rejections).reduce((x, y) => x + y, 0),
      rejectionCodes: Object.fromEntries(Object.entries(result.rejections).filter(([, n]) => n > 0)),
      participants: result.rounds[0]?.participants.length ?? 0,
      samples,
      sampledPeakRss,
    };
  } finally {
    clearInterval(sampler);
    await nc?.close().catch(() => {});
  }
}

function coordinatorProcess(a: CoordinatorArgs): { result: Promise<CoordinatorFigures>; kill(): void } {
  const child = fork(new URL('./child-entry.ts', import.meta.url), ['coordinator-rss.ts', 'coordinator', JSON.stringify(a)], {
    execArgv: [],
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
  });
  const result = new Promise<CoordinatorFigures>((resolve, reject) => {
    child.on('message', (m: { ok: true; result: CoordinatorFigures } | { ok: false; error: string }) =>
      m.ok ? resolve(m.result) : reject(new Error(`coordinator: ${m.error}`)),
    );
    child.on('exit', (code, signal) => reject(new Error(`coordinator process exited with ${signal ?? `code ${code}`}`)));
  });
  result.catch(() => {});
  return {
    result,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

interface Config {
  params: number;
  sites: number;
}

export async function measure(c: Config) {
  const names = siteNames(c.sites);
  const job = benchJob(`rss-${c.sites}`, c.sites, { rounds: 1, aggregation: { roundDeadlineSeconds: 3600 } });
  const layout = benchLayout(c.params);
  const auth = natsAuthFor(job);
  const server = await NatsServer.start({ config: auth.config });
  const sites = startSites({
    url: server.url,
    mode: 'consort',
    manifest: job,
    seeds: Object.fromEntries(names.map((s) => [s, auth.sites[s]!.seed])),
    sites: names,
    layout,
    fetchModel: false,
    update: 'shared',
  });
  const coord = coordinatorProcess({ url: server.url, seed: auth.coordinator.seed, manifest: job, siteKeys: auth.keys.sites });
  try {
    const figures = await coord.result;
    const siteResult = await sites.result;
    return { ...figures, siteRetries: siteResult.retries.length, sitesProcessMaxRssBytes: siteResult.maxRssBytes };
  } finally {
    coord.kill();
    sites.kill();
    await server.stop();
  }
}

export async function run(args: RssArgs): Promise<unknown> {
  const configs: Config[] = args.quick
    ? [
        { params: 16_000_000, sites: 10 },
        { params: 16_000_000, sites: 50 },
      ]
    : [
        { params: 64_000_000, sites: 10 },
        { params: 64_000_000, sites: 50 },
        { params: 250_000_000, sites: 10 },
        ...(process.env.CONSORT_RSS_1G_50 === '1' && freeDiskBytes() > 60e9 ? [{ params: 250_000_000, sites: 50 }] : []),
      ];
  const results: Array<Config & Awaited<ReturnType<typeof measure>> & { modelBytes: number; targetBytes: number }> = [];
  for (const c of configs) {
    const modelBytes = c.params * 4;
    const r = await measure(c);
    results.push({ ...c, ...r, modelBytes, targetBytes: 1.5 * modelBytes + 200 * MB });
    process.stdout.write(
      `   ${fixed(modelBytes / MB, 0)} MB model, ${c.sites} sites: peak RSS ${fixed(r.maxRssBytes / MB, 0)} MB in ${fixed(r.seconds, 0)} s\n`,
    );
  }
  printTable(
    'Coordinator peak RSS (its own process), one round, every site sending a full-size update',
    ['model MB', 'sites', 'peak RSS MB', 'x model', 'target MB', 'meets target', 'idle RSS MB', 'round + final s'],
    results.map((r) => [
      fixed(r.modelBytes / MB, 0),
      r.sites,
      fixed(r.maxRssBytes / MB, 0),
      `${fixed(r.maxRssBytes / r.modelBytes, 2)}x`,
      fixed(r.targetBytes / MB, 0),
      r.maxRssBytes <= r.targetBytes ? 'yes' : 'no',
      fixed(r.idleRssBytes / MB, 0),
      fixed(r.seconds, 0),
    ]),
    [
      `target: <= 1.5 x model + 200 MB, flat as sites grow${results.some((r) => r.params === 250_000_000 && r.sites === 50) ? '' : '; a 1 GB model with 50 sites (50 GB through the disk store) only with CONSORT_RSS_1G_50=1, see the header of coordinator-rss.ts'}`,
      ...results.map(
        (r) =>
          `${fixed(r.modelBytes / MB, 0)} MB x ${r.sites}: ${r.participants} updates folded, ${r.rejections} refused${
            r.rejections > 0
              ? ` (${Object.entries(r.rejectionCodes)
                  .map(([c, n]) => `${c} ${n}`)
                  .join(', ')})`
              : ''
          }, ${r.siteRetries} site retries; RSS at ${r.samples.map((s) => `${s.at} ${fixed(s.rss / MB, 0)}`).join(', ')} MB`,
      ),
      "where it goes: the global model (4 bytes a parameter, stepped in place) and nothing else model-sized: updates are checked as they stream in and read again from their buckets when the round closes, a range of 256Ki parameters at a time (two 4 MiB exact sums, a few 1 MiB buffers, ranges ending on the updates' chunk ends); the rest is what reading leaves to the garbage collector (nats.js assembles each 1 MiB chunk in a buffer it grows by doubling: ~4.5 bytes allocated per byte read) and what the allocator keeps of it; the published model, checkpoint and final model are streamed from the model itself",
    ],
  );
  return {
    configs: results.map(({ samples, ...r }) => ({ ...r, samples })),
  };
}

/** Free bytes on the disk the harness's nats-server stores JetStream on. */
function freeDiskBytes(): number {
  const fs = statfsSync(tmpdir());
  return fs.bavail * fs.bsize;
}
