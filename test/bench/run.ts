// `make bench`: the benchmarks of issue 3, each in a process of its own, one table per result,
// every figure in test/artifacts/bench.json. Timings are reported, never asserted; comparisons
// are ratios measured in the same run.
//   node test/bench/run.ts [--only fedprox|throughput|simulation]... [--quick] [--no-iid]
import { tuneGcForThroughput } from '../../core/gc-tuning.ts';

// The benchmarks measure what runs: V8 tuned as cli/consort.ts tunes it.
tuneGcForThroughput();
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { inChild } from './child.ts';

const BENCHMARKS = {
  fedprox: { module: 'fedprox.ts', what: 'FedProx paper: Synthetic(1,1), (0.5,0.5) and IID, mu 0 and 1, 200 rounds' },
  throughput: { module: 'throughput.ts', what: 'local training throughput of each TF.js backend' },
  simulation: { module: 'simulation.ts', what: '1000-site simulation: s/round and peak RSS' },
  compression: { module: 'compression.ts', what: 'update compression over NATS: bytes per round and accuracy for none / fp16 / int8 / top-k 1 %' },
  goodput: { module: 'nats-goodput.ts', what: 'model broadcast + update collection over NATS against raw nats.js publish/subscribe' },
  overhead: { module: 'nats-overhead.ts', what: 'orchestration overhead per round (10 sites, 1M parameters, no training) against Flower' },
  'coordinator-rss': { module: 'coordinator-rss.ts', what: 'coordinator peak RSS for a large model with 10 and 50 sites' },
  aggregation: { module: 'aggregation.ts', what: 'aggregation throughput against the single-core memory read rate' },
  'operator-scale': {
    module: 'operator-scale.ts',
    what: '200 FederatedJobs created at once on a real control plane: work-queue latency, reconciles per job, operator peak RSS, time to Running',
  },
} as const;
type BenchmarkName = keyof typeof BENCHMARKS;

/** Full runs' figures; --quick runs (estimates, smoke tests) go to bench-quick.json instead. */
const OUT = new URL('../artifacts/bench.json', import.meta.url);
const OUT_QUICK = new URL('../artifacts/bench-quick.json', import.meta.url);

const USAGE = `usage: node test/bench/run.ts [options]
  --only NAME   run only this benchmark (repeatable): ${Object.keys(BENCHMARKS).join(', ')}
  --quick       shorter runs (FedProx: 20 rounds instead of 200; shorter timings)
  --no-iid      FedProx: skip the IID reference set
  -h, --help    this text
Writes every figure to test/artifacts/bench.json (--quick: bench-quick.json); with --only, the\nother benchmarks' entries in that file are kept.`;

function isBenchmark(name: string): name is BenchmarkName {
  return Object.hasOwn(BENCHMARKS, name);
}

async function main(): Promise<number> {
  let values: { only?: string[]; quick?: boolean; 'no-iid'?: boolean; help?: boolean };
  try {
    ({ values } = parseArgs({
      options: {
        only: { type: 'string', multiple: true },
        quick: { type: 'boolean' },
        'no-iid': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const only = (values.only ?? []).flatMap((o) => o.split(','));
  const unknown = only.filter((o) => !isBenchmark(o));
  if (unknown.length > 0) {
    process.stderr.write(`unknown benchmark ${unknown.map((u) => `"${u}"`).join(', ')}\n${USAGE}\n`);
    return 2;
  }
  const selected = (only.length > 0 ? only : Object.keys(BENCHMARKS)) as BenchmarkName[];
  const quick = values.quick ?? false;
  const args = { quick, iid: !values['no-iid'] };

  const machine = {
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryBytes: totalmem(),
    node: process.version,
    loadAverageAtStart: loadavg(),
  };
  process.stdout.write(
    `Consort benchmarks${quick ? ' (quick)' : ''}: ${selected.join(', ')} on ${machine.cpus} cores (${machine.cpuModel}), Node ${machine.node}, load average ${machine.loadAverageAtStart.map((l) => l.toFixed(2)).join(' ')}\n`,
  );

  const results: Record<string, unknown> = {};
  let failed = 0;
  for (const name of selected) {
    const t0 = performance.now();
    process.stdout.write(`\n### ${name}: ${BENCHMARKS[name].what}\n`);
    try {
      results[name] = {
        ...(await inChild<object>(BENCHMARKS[name].module, 'run', args)),
        quick,
        seconds: (performance.now() - t0) / 1000,
        at: new Date().toISOString(),
      };
    } catch (err) {
      failed++;
      process.stderr.write(`benchmark ${name} failed: ${(err as Error).message}\n`);
      results[name] = { error: (err as Error).message, quick, at: new Date().toISOString() };
    }
    process.stdout.write(`### ${name}: ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
  }

  const out = quick ? OUT_QUICK : OUT;
  let previous: { benchmarks?: Record<string, unknown> } = {};
  if (only.length > 0) {
    try {
      previous = JSON.parse(readFileSync(out, 'utf8'));
    } catch {
      previous = {};
    }
  }
  const file = {
    format: 'consort.dev/bench/v1',
    machine: { ...machine, loadAverageAtEnd: loadavg() },
    benchmarks: { ...(previous.benchmarks ?? {}), ...results },
  };
  mkdirSync(dirname(out.pathname), { recursive: true });
  writeFileSync(out, `${JSON.stringify(file, null, 2)}\n`);
  process.stdout.write(`\nfigures written to ${out.pathname}\n`);
  return failed > 0 ? 1 : 0;
}

process.exitCode = await main();
