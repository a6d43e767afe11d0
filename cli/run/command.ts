// `consort run JOB.yaml`: flags checked with zod, the job read and validated, the run, the
// outputs written atomically, and a summary table on stdout.
import { separateProcessesProblem } from '../../core/job/federated-job.ts';
import { jobWarnings } from '../../core/job/warnings.ts';
import { noBetterThanMajority } from '../../core/report/no-better.ts';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import type { FederatedJob } from '../../core/job/federated-job.ts';
import type { RunReport } from '../../core/report/run-report.ts';
import { CliError } from '../errors.ts';
import { reportFailure } from '../failure.ts';
import { readJobFile, withOverrides } from '../job-file.ts';
import { runLocal } from './local-run.ts';
import { runOverNats } from './nats-run.ts';
import { checkOutputDir, writeOutputs } from './outputs.ts';
import { createProgress } from './progress.ts';
import { fanOut, LocalRunMetrics } from './run-metrics.ts';
import { type ApiServer, startApiServer } from '../../operator/api/server.ts';
import { intFlag, invalidFlags } from '../flags.ts';
import { siteOrder } from '../../core/report/format.ts';

/** Kept for the commands that took it from here. */
export { intFlag };

export const RunFlags = z
  .object({
    out: z.string().min(1).optional(),
    seed: intFlag(0, 2 ** 31 - 1).optional(),
    rounds: intFlag(1, 100_000).optional(),
    baselines: z.boolean().default(false),
    backend: z.enum(['auto', 'tensorflow-gpu', 'tensorflow', 'wasm', 'cpu']).default('auto'),
    threads: intFlag(1, 256).optional(),
    nats: z.string().min(1).optional(),
    metricsPort: intFlag(0, 65_535).optional(),
    metricsAddress: z.union([z.ipv4(), z.ipv6()]).default('127.0.0.1'),
    quiet: z.boolean().default(false),
  })
  .strict();
export type RunFlags = z.infer<typeof RunFlags>;

export async function runCommand(jobPath: string, rawFlags: Record<string, unknown>): Promise<number> {
  const progress = { current: undefined as ReturnType<typeof createProgress> | undefined };
  try {
    const parsed = RunFlags.safeParse(rawFlags);
    if (!parsed.success) {
      throw invalidFlags(parsed.error);
    }
    const flags = parsed.data;
    const job = withOverrides(readJobFile(jobPath), flags);
    const outDir = resolve(flags.out ?? `out/${job.metadata.name}`);
    checkOutputDir(outDir);
    // Said even with --quiet: a rule the user set that cannot act.
    for (const w of jobWarnings(job.spec)) process.stderr.write(`warning: ${w}\n`);
    if (flags.nats !== undefined) {
      if (flags.metricsPort !== undefined)
        throw new CliError('CONSORT_CLI_USAGE', '--metrics-port serves the metrics of a run in this process; it cannot be combined with --nats');
      if (flags.baselines) throw new CliError('CONSORT_CLI_USAGE', "--baselines needs every site's data in one process; it cannot be combined with --nats");
      // Sites that run apart cannot agree on classes they each infer from their own labels.
      const apart = separateProcessesProblem(job.spec);
      if (apart) throw new CliError('CONSORT_CLI_JOB_SPEC', `${jobPath}: with --nats, ${apart}`);
      return await runOverNats({
        jobPath,
        job,
        nats: flags.nats,
        outDir,
        backend: flags.backend,
        quiet: flags.quiet,
        ...(flags.seed !== undefined ? { seed: flags.seed } : {}),
        ...(flags.rounds !== undefined ? { rounds: flags.rounds } : {}),
      });
    }
    progress.current = createProgress({ rounds: job.spec.rounds, stream: process.stderr, quiet: flags.quiet, evaluateEvery: job.spec.evaluation.every });
    const p = progress.current;
    // Where the metrics are is said even with --quiet (with --metrics-port 0 nothing else tells the port).
    const tell = flags.quiet ? (line: string) => process.stderr.write(`${line}\n`) : p.phase;
    const served = flags.metricsPort !== undefined ? await serveMetrics(job, flags.metricsPort, flags.metricsAddress, tell) : undefined;
    let run: Awaited<ReturnType<typeof runLocal>>;
    try {
      run = await runLocal({
        job,
        baseDir: dirname(resolve(jobPath)),
        baselines: flags.baselines,
        backend: flags.backend,
        ...(flags.threads !== undefined ? { threads: flags.threads } : {}),
        events: served ? { ...fanOut([p, served.metrics]), phase: p.phase } : p,
        // Said even with --quiet, as the job's own warnings are; through the progress display when it is on.
        warn: (w) => (flags.quiet ? process.stderr.write(`warning: ${w}\n`) : p.phase(`warning: ${w}`)),
      });
      served?.metrics.finished('Succeeded');
      await served?.lastScrape(tell);
    } catch (err) {
      served?.metrics.finished('Failed');
      await served?.lastScrape(tell);
      throw err;
    } finally {
      await served?.server.close();
    }
    progress.current.stop();
    const files = await writeOutputs(outDir, run);
    process.stdout.write(summaryTable(run.report));
    process.stdout.write(`wrote ${files.length} files to ${outDir}\n`);
    return 0;
  } catch (err) {
    progress.current?.stop();
    return reportFailure(err);
  }
}

/** /metrics (and /healthz, /readyz) for the length of the run; no authentication: loopback by default. */
async function serveMetrics(
  job: FederatedJob,
  port: number,
  address: string,
  say: (line: string) => void,
): Promise<{ metrics: LocalRunMetrics; server: ApiServer; lastScrape: (say: (line: string) => void) => Promise<void> }> {
  const metrics = new LocalRunMetrics(job);
  // The scrapes seen, so that a scraper's last look at the run sees how it ended: the server used
  // to close in the tick the run finished, and Prometheus kept the job Running for good.
  const scrapes: number[] = [];
  const collect = metrics.registry.metrics.bind(metrics.registry);
  let scraped: () => void = () => {};
  metrics.registry.metrics = () => {
    scrapes.push(Date.now());
    scraped();
    return collect();
  };
  const lastScrape = async (tell: (line: string) => void) => {
    // Nobody scraped (no Prometheus): nothing to wait for.
    if (scrapes.length === 0) return;
    const gaps = scrapes.slice(1).map((t, i) => t - scrapes[i]!);
    const interval = gaps.length > 0 ? gaps.sort((a, b) => a - b)[Math.floor(gaps.length / 2)]! : DEFAULT_SCRAPE_INTERVAL_MS;
    const waitMs = Math.min(2 * interval + 1000, MAX_LAST_SCRAPE_WAIT_MS);
    tell(`metrics: waiting up to ${Math.ceil(waitMs / 1000)} s for a last scrape of the final state`);
    await new Promise<void>((done) => {
      const timer = setTimeout(done, waitMs);
      scraped = () => {
        clearTimeout(timer);
        // The answer goes out before the server closes.
        setTimeout(done, 200);
      };
    });
  };
  let server: ApiServer;
  try {
    server = await startApiServer({ registry: metrics.registry, ready: () => true, port, address });
  } catch (err) {
    throw new CliError('CONSORT_CLI_USAGE', `--metrics-port ${port}: cannot listen on ${address}: ${(err as Error).message}`, { cause: err });
  }
  const host = address.includes(':') ? `[${address}]` : address;
  say(`metrics on http://${host}:${server.port}/metrics while the job runs`);
  return { metrics, server, lastScrape };
}

/** Prometheus' default scrape interval: how long a run that was scraped once waits for the next. */
const DEFAULT_SCRAPE_INTERVAL_MS = 15_000;
const MAX_LAST_SCRAPE_WAIT_MS = 60_000;

const pct = (x: number | undefined) => (x === undefined || Number.isNaN(x) ? '-' : `${(100 * x).toFixed(1)}%`);

/** Final accuracy per site, the federated model against the baselines. */
export function summaryTable(r: RunReport): string {
  const f = r.final;
  const rows: string[][] = [['site', 'test samples', 'federated', ...(f.siteAlone ? ['site alone'] : [])]];
  // The job's site order, as the model card and the page list them.
  for (const site of siteOrder(r)) {
    const m = f.perSite[site];
    if (m) rows.push([site, String(m.samples), pct(m.accuracy), ...(f.siteAlone ? [pct(f.siteAlone[site])] : [])]);
  }
  rows.push([
    'all (weighted)',
    String(Object.values(f.perSite).reduce((n, m) => n + m.samples, 0)),
    pct(f.accuracy),
    ...(f.siteAlone ? [pct(f.siteAloneMean)] : []),
  ]);
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const line = (row: string[]) => row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ');
  const out = [
    '',
    `${r.job}: ${f.rounds} rounds of ${r.strategy} (${f.stoppedBy === 'rounds' ? 'all rounds done' : `stopped by ${f.stoppedBy}`}), backend ${r.backend}, seed ${r.seed}`,
    line(rows[0]!),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...rows.slice(1, -1).map(line),
    widths.map((w) => '-'.repeat(w)).join('  '),
    line(rows[rows.length - 1]!),
  ];
  if (f.pooled !== undefined) out.push(`pooled training (all data in one place): ${pct(f.pooled)}`);
  out.push(`accuracy spread across sites: min ${pct(f.accuracySpread.min)}, max ${pct(f.accuracySpread.max)}, std ${pct(f.accuracySpread.std)}`);
  for (const m of f.missing ?? []) out.push(`warning: site ${m.site} did not score the final model (${m.reason}): the figures above leave it out`);
  const warning = noBetterThanMajority(r);
  if (warning) out.push(`warning: ${warning}`);
  out.push(`model sha256 ${f.modelSha256}`, '');
  return out.join('\n');
}
