// Orchestration overhead per round: 10 sites, 1M parameters, no training. Consort: the real
// coordinator (runNatsCoordinator: sampling, fit tasks, Object Store model and updates, signed
// envelopes, ingestion, exact aggregation, checkpoint after every round, written while the next
// round's model is put) over a real
// nats-server with the job's generated configuration; the 10 sites in another process
// (nats-sites.ts), each answering at once with a zero delta. Overhead = round time (round
// started to round finished, checkpoint included) minus the slowest site's work (producing
// its delta), median over the rounds that have no evaluation. Baseline: Flower doing the same
// round with 10 SuperNodes on loopback (flower-baseline.ts), measured in the same run.
import { availableParallelism } from 'node:os';
import type { NatsConnection } from '@nats-io/transport-node';
import { natsAuthFor } from '../../cli/nats/config.ts';
import { connectAs } from '../../cli/nats/connect.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { NatsServer } from '../../cli/nats/server.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { FLWR_VERSION, flowerRounds } from './flower-baseline.ts';
import { benchJob, benchLayout, cpuSeconds, cpuSecondsOf, now, siteNames, startSites, type TaskTiming } from './nats-sites.ts';
import { fixed, median, printTable } from './table.ts';
import { allowWideSimd } from '../../core/aggregation/wide-simd.ts';

export interface OverheadArgs {
  quick: boolean;
}

/** What the issue quotes for Flower 1.42 on this machine, used only when Flower cannot be run here. */
const QUOTED_FLOWER_SECONDS = 10;

interface RoundFigures {
  round: number;
  ms: number;
  slowestWorkMs: number;
  overheadMs: number;
  /** Medians over the sites: round start → task received, → model read, → update written, → envelope acknowledged. */
  taskMs: number;
  modelMs: number;
  writeMs: number;
  ackMs: number;
  /** Last acknowledgement → round finished (aggregation, strategy step, checkpoint). */
  closeMs: number;
}

export async function consortRounds(rounds: number, params: number, sites: number) {
  // As a coordinator process (cli/federation/commands.ts): 256-bit folds where the CPU has them.
  allowWideSimd();
  const names = siteNames(sites);
  const job = benchJob('overhead', sites, { rounds, evaluation: { every: 1_000_000 }, aggregation: { roundDeadlineSeconds: 120 } });
  const layout = benchLayout(params);
  const auth = natsAuthFor(job);
  const server = await NatsServer.start({ config: auth.config });
  let nc: NatsConnection | undefined;
  const sitesProcess = startSites({
    url: server.url,
    mode: 'consort',
    manifest: job,
    seeds: Object.fromEntries(names.map((s) => [s, auth.sites[s]!.seed])),
    sites: names,
    layout,
    update: 'zeros',
  });
  try {
    nc = await connectAs(server.url, auth.coordinator.seed, COORDINATOR_USER);
    const started = new Map<number, number>();
    const finished = new Map<number, number>();
    // CPU time of the three processes from round 2's start to the end of the second-to-last round
    // (neither start-up nor the final evaluation): what a round costs the machine's cores.
    const cpuNow = () => ({ coordinator: cpuSeconds(), sites: cpuSecondsOf(sitesProcess.pid), server: cpuSecondsOf(server.pid), at: now() });
    let cpuFrom: ReturnType<typeof cpuNow> | undefined;
    let cpuTo: ReturnType<typeof cpuNow> | undefined;
    const result = await runNatsCoordinator({
      job,
      nc,
      siteKeys: auth.keys.sites,
      log: () => {},
      joinTimeoutMs: 60_000,
      events: {
        roundStarted: (r) => {
          if (r === 2) cpuFrom = cpuNow();
          started.set(r, now());
        },
        roundFinished: (_rec, r) => {
          finished.set(r, now());
          if (r === rounds - 1) cpuTo = cpuNow();
        },
      },
    });
    const { timings, retries } = await sitesProcess.result;
    const figures: RoundFigures[] = [];
    for (let r = 1; r <= result.roundsCompleted; r++) {
      const t0 = started.get(r)!;
      const fits = timings.filter((t: TaskTiming) => t.type === 'fit' && t.round === r);
      const ms = finished.get(r)! - t0;
      const slowestWorkMs = Math.max(0, ...fits.map((t) => t.workMs));
      figures.push({
        round: r,
        ms,
        slowestWorkMs,
        overheadMs: ms - slowestWorkMs,
        taskMs: median(fits.map((t) => t.received - t0)),
        modelMs: median(fits.map((t) => t.modelRead - t.received)),
        writeMs: median(fits.map((t) => t.written - t.deltaReady)),
        ackMs: median(fits.map((t) => t.acked - t.written)),
        closeMs: finished.get(r)! - Math.max(...fits.map((t) => t.acked)),
      });
    }
    const measuredRounds = rounds - 2;
    const perRound = (k: 'coordinator' | 'sites' | 'server') => (cpuFrom && cpuTo ? ((cpuTo[k] - cpuFrom[k]) * 1000) / measuredRounds : Number.NaN);
    const cpu = {
      coordinatorMs: perRound('coordinator'),
      sitesMs: perRound('sites'),
      serverMs: perRound('server'),
      wallMs: cpuFrom && cpuTo ? (cpuTo.at - cpuFrom.at) / measuredRounds : Number.NaN,
    };
    return { figures, retries, rejections: Object.values(result.rejections).reduce((a, b) => a + b, 0), cpu };
  } finally {
    sitesProcess.kill();
    await nc?.close().catch(() => {});
    await server.stop();
  }
}

export async function run(args: OverheadArgs): Promise<unknown> {
  const sites = 10;
  const params = 1_000_000;
  const rounds = args.quick ? 5 : 11;
  const flowerRoundsWanted = args.quick ? 2 : 4;
  const log = (line: string) => process.stdout.write(`   ${line}\n`);

  const consort = await consortRounds(rounds, params, sites);
  // The last round also runs the final evaluation: left out of the median.
  const plain = consort.figures.filter((f) => f.round < rounds);
  const consortMs = median(plain.map((f) => f.overheadMs));

  let flower: { measured: true; version: string; seconds: number[]; startSeconds: number } | { measured: false; error: string };
  try {
    const f = await flowerRounds({ nodes: sites, parameters: params, rounds: flowerRoundsWanted, timeoutS: 90 * flowerRoundsWanted + 60, log });
    flower = { measured: true, version: f.version, seconds: f.rounds, startSeconds: f.startSeconds };
  } catch (err) {
    flower = { measured: false, error: (err as Error).message };
    process.stdout.write(
      `   Flower could not be run here, so its figure below is QUOTED from the issue, not measured:\n${(err as Error).message.replace(/^/gm, '     ')}\n`,
    );
  }
  const flowerMs = flower.measured ? median(flower.seconds) * 1000 : QUOTED_FLOWER_SECONDS * 1000;
  const cores = availableParallelism();
  const cpuTotal = consort.cpu.coordinatorMs + consort.cpu.sitesMs + consort.cpu.serverMs;
  const flowerLabel = flower.measured
    ? `Flower ${/\d+\.\d+\.\d+/.exec(flower.version)?.[0] ?? flower.version} (measured, ${flower.seconds.length} rounds)`
    : `Flower ${FLWR_VERSION} (QUOTED from the issue, not measured)`;

  printTable(
    `Orchestration overhead per round: ${sites} sites, ${(params / 1e6).toFixed(0)}M parameters, no training (median)`,
    ['system', 'round ms', 'slowest site work ms', 'overhead ms', 'Flower / this'],
    [
      [
        `Consort over NATS (${plain.length} rounds)`,
        fixed(median(plain.map((f) => f.ms)), 1),
        fixed(median(plain.map((f) => f.slowestWorkMs)), 2),
        fixed(consortMs, 1),
        `${fixed(flowerMs / consortMs, 0)}x`,
      ],
      [flowerLabel, fixed(flowerMs, 0), '~0', fixed(flowerMs, 0), '1x'],
    ],
    [
      `target: Consort >= 50x lower than Flower; Consort's round: round started -> round finished (tasks, 10 updates read, checked, folded; the checkpoint and the next round's model written at once: each round puts one model)`,
      `Flower's round: configure_train -> end of aggregate_train in its ServerApp (evaluation off); its ClientApp returns the parameters at once, so its work is ~0`,
      `Consort's median round, in ms from the round's start (medians over sites): task received ${fixed(median(plain.map((f) => f.taskMs)), 1)}, model read +${fixed(median(plain.map((f) => f.modelMs)), 1)}, update written +${fixed(median(plain.map((f) => f.writeMs)), 1)}, acknowledged +${fixed(median(plain.map((f) => f.ackMs)), 1)}; last ack -> round closed (aggregate, checkpoint) ${fixed(median(plain.map((f) => f.closeMs)), 1)}`,
      `CPU per round (rounds 2-${rounds - 1}): coordinator ${fixed(consort.cpu.coordinatorMs, 0)} ms, sites process ${fixed(consort.cpu.sitesMs, 0)} ms, nats-server ${fixed(consort.cpu.serverMs, 0)} ms: ${fixed(cpuTotal, 0)} ms of CPU over ${cores} cores = a floor of ${fixed(cpuTotal / cores, 0)} ms a round (mean round ${fixed(consort.cpu.wallMs, 0)} ms: ${fixed((100 * cpuTotal) / cores / consort.cpu.wallMs, 0)}% of the cores busy); 50x Flower is ${fixed(flowerMs / 50, 0)} ms`,
      ...(flower.measured
        ? [
            `Flower: SuperLink and ${sites} SuperNodes up in ${fixed(flower.startSeconds, 1)} s (not counted); rounds ${flower.seconds.map((s) => fixed(s, 1)).join(', ')} s`,
          ]
        : []),
    ],
  );
  return {
    sites,
    parameters: params,
    consort: {
      rounds: consort.figures,
      medianOverheadMs: consortMs,
      medianRoundMs: median(plain.map((f) => f.ms)),
      retries: consort.retries,
      rejections: consort.rejections,
      cpuPerRound: { ...consort.cpu, cores, floorMs: cpuTotal / cores },
    },
    flower: flower.measured ? { ...flower, medianRoundMs: flowerMs } : { ...flower, quotedRoundMs: flowerMs },
    ratio: flowerMs / consortMs,
  };
}
