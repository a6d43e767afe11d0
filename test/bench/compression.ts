// Update compression on the hospital job over a real nats-server: bytes of updates per round and
// the final accuracy for none / fp16 / int8 / top-k 1 % (error feedback on the sites). The
// coordinator and five site runners share this process; the bytes are the update objects the
// coordinator fetched from the sites' buckets.
import { readFileSync } from 'node:fs';
import type { NatsConnection } from '@nats-io/transport-node';
import { parse } from 'yaml';
import { natsAuthFor } from '../../cli/nats/config.ts';
import { connectAs } from '../../cli/nats/connect.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { NatsServer } from '../../cli/nats/server.ts';
import { type CompressionSpec, FederatedJob } from '../../core/job/federated-job.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { runSite } from '../../worker/nats/site-runner.ts';
import { fixed, printTable } from './table.ts';

export interface CompressionArgs {
  quick: boolean;
}

const EXAMPLE = new URL('../../manifests/examples/hospitals.yaml', import.meta.url);

async function runWith(compression: CompressionSpec, rounds: number) {
  const raw = parse(readFileSync(EXAMPLE, 'utf8')) as { spec: Record<string, unknown> };
  const job = FederatedJob.parse({ ...raw, spec: { ...raw.spec, rounds, compression } });
  const auth = natsAuthFor(job);
  const server = await NatsServer.start({ config: auth.config });
  const connections: NatsConnection[] = [];
  try {
    const sites: Promise<unknown>[] = [];
    for (const s of job.spec.sites) {
      const nc = await connectAs(server.url, auth.sites[s.name]!.seed, s.name);
      connections.push(nc);
      sites.push(runSite({ job, site: s.name, nc, seed: auth.sites[s.name]!.seed, baseDir: '.', backend: 'auto', log: () => {} }));
    }
    const nc = await connectAs(server.url, auth.coordinator.seed, COORDINATOR_USER);
    connections.push(nc);
    const result = await runNatsCoordinator({ job, nc, siteKeys: auth.keys.sites, log: () => {} });
    await Promise.all(sites);
    const perRound = Object.values(result.bytesIn);
    const mean = perRound.reduce((a, b) => a + b, 0) / perRound.length;
    const finalAcc = result.rounds[result.rounds.length - 1]!.globalAccuracy;
    return { bytesPerRound: mean, accuracy: finalAcc, rejections: Object.values(result.rejections).reduce((a, b) => a + b, 0) };
  } finally {
    for (const c of connections) await c.close().catch(() => {});
    await server.stop();
  }
}

export async function run(args: CompressionArgs): Promise<unknown> {
  const rounds = args.quick ? 5 : 20;
  const variants: Array<[string, CompressionSpec]> = [
    ['none', { codec: 'none', topkFraction: 0.01 }],
    ['fp16', { codec: 'fp16', topkFraction: 0.01 }],
    ['int8', { codec: 'int8', topkFraction: 0.01 }],
    ['top-k 1 %', { codec: 'topk', topkFraction: 0.01 }],
  ];
  const results: Record<string, { bytesPerRound: number; accuracy: number; rejections: number }> = {};
  for (const [name, spec] of variants) results[name] = await runWith(spec, rounds);
  const base = results.none!;
  printTable(
    `Update compression, hospital job over NATS (5 sites, ${rounds} rounds, MLP of 978 parameters)`,
    ['codec', 'update bytes / round', 'vs none', 'final accuracy', 'Δ accuracy (points)'],
    Object.entries(results).map(([name, r]) => [
      name,
      Math.round(r.bytesPerRound),
      `${fixed(base.bytesPerRound / r.bytesPerRound, 1)}x smaller`,
      fixed(r.accuracy, 4),
      fixed(100 * (r.accuracy - base.accuracy), 1),
    ]),
    ['bytes: the safetensors update objects the coordinator fetched (all sites of a round, mean over rounds)'],
  );
  return { rounds, results };
}
