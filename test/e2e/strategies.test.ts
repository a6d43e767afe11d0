// Every strategy end to end: a small three-hospital job trains for three rounds and ends better
// than always answering the majority class.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { FederatedJob } from '../../core/job/federated-job.ts';
import type { RunReport } from '../../core/report/run-report.ts';
import { hospitalSiteData } from '../../worker/data/synthetic/hospital.ts';
import { runConsort, transcript } from '../helpers/consort-cli.ts';
import { hospitalSpec, jobManifest, readReport, writeJob } from '../helpers/jobs.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const STRATEGIES: Record<string, unknown>[] = [
  { name: 'fedavg' },
  { name: 'fedprox', mu: 0.1 },
  { name: 'fedavgm' },
  { name: 'fedadam' },
  { name: 'fedyogi' },
  { name: 'fedadagrad' },
  { name: 'scaffold' },
];

/** Share of the largest class over all sites' test splits, rebuilt from the generator. */
function majorityRate(spec: Record<string, unknown>): number {
  const job = FederatedJob.parse(jobManifest('majority', spec));
  const counts = [0, 0];
  for (const site of job.spec.sites) {
    if (site.data.type !== 'synthetic' || site.data.generator !== 'hospital') throw new Error('hospital sites only');
    const { test } = hospitalSiteData(site.data, { site: site.name, jobSeed: job.spec.seed, baseDir: '.', classes: ['no', 'yes'] });
    for (const y of test.y) counts[y]!++;
  }
  return Math.max(...counts) / (counts[0]! + counts[1]!);
}

describe('every strategy trains a small hospital job', () => {
  const tmp = useTmpDirs('file');

  it('each learns something, and each ends with its own model', async () => {
    const dir = tmp('strategies');
    const majority = majorityRate(hospitalSpec());
    expect(majority).toBeGreaterThan(0.6);
    const reports = new Map<string, RunReport>();
    const runOne = async (strategy: Record<string, unknown>) => {
      const name = String(strategy.name);
      const job = writeJob(dir, hospitalSpec(undefined, { strategy }), { file: `${name}.yaml`, name });
      const out = join(dir, `out-${name}`);
      const r = await runConsort(['run', job, '--quiet', '--out', out]);
      expect(r.code, `${name}\n${transcript(r)}`).toBe(0);
      reports.set(name, readReport(out));
    };
    // Two at a time: each run already has a thread per core.
    for (let i = 0; i < STRATEGIES.length; i += 2) await Promise.all(STRATEGIES.slice(i, i + 2).map(runOne));

    for (const s of STRATEGIES) {
      const name = String(s.name);
      const report = reports.get(name)!;
      expect(report.strategy).toBe(name);
      expect(report.final.rounds, name).toBe(3);
      expect(report.rounds, name).toHaveLength(3);
      expect(report.final.accuracy, `${name}: final accuracy against the majority-class rate ${majority.toFixed(3)}`).toBeGreaterThan(majority + 0.03);
    }
    // The strategy and its parameters reach the run: no two strategies end with the same weights.
    const hashes = STRATEGIES.map((s) => reports.get(String(s.name))!.final.modelSha256);
    expect(new Set(hashes).size).toBe(STRATEGIES.length);
  });
});

describe('SCAFFOLD under a momentum local optimizer', () => {
  const tmp = useTmpDirs('file');

  it('learns: its client variate is the mean of the local gradients, not the SGD shortcut (x - y) / (K lr) that made it ten times theirs and diverged in round 11', async () => {
    const dir = tmp('scaffold-momentum');
    const manifest = parseYaml(readFileSync('manifests/examples/hospitals.yaml', 'utf8')) as { spec: Record<string, unknown> };
    const spec = { ...manifest.spec, strategy: { name: 'scaffold' }, training: { epochs: 3, batchSize: 32, optimizer: 'momentum', learningRate: 0.1 } };
    const majority = majorityRate(spec);
    const job = writeJob(dir, spec, { file: 'scaffold-momentum.yaml', name: 'scaffold-momentum' });
    const out = join(dir, 'out');
    const r = await runConsort(['run', job, '--quiet', '--out', out]);
    expect(r.code, transcript(r)).toBe(0);
    const report = readReport(out);
    expect(report.final.rounds).toBe(20);
    expect(report.final.accuracy, `final accuracy against the majority-class rate ${majority.toFixed(3)}`).toBeGreaterThan(majority + 0.03);
  });
});

describe('a run whose training diverges says which setting to change', () => {
  const tmp = useTmpDirs('file');

  it('FedProx with mu x learningRate past 1: a site whose update is finite but far out of range says so (it was refused "out of range", naming neither)', async () => {
    const dir = tmp('diverge');
    const fedprox = writeJob(
      dir,
      hospitalSpec(undefined, {
        strategy: { name: 'fedprox', mu: 1000 },
        training: { epochs: 1, batchSize: 16, optimizer: 'sgd', learningRate: 0.1 },
        seed: 7,
      }),
      { file: 'fedprox.yaml', name: 'fedprox' },
    );
    const r = await runConsort(['run', fedprox, '--quiet', '--out', join(dir, 'out-fedprox')]);
    expect(r.code, transcript(r)).not.toBe(0);
    expect(r.stderr).toMatch(
      /diverged in round 1 \(its update changes a weight by [\d.e+]+, beyond the ±1048576 an update may\); lower strategy\.mu \(1000\): with training\.learningRate 0\.1/,
    );
    expect(r.stderr).toMatch(/^warning: strategy\.mu 1000 with training\.learningRate 0\.1:/m);
    expect(r.stderr).not.toMatch(/exceeds ±1048576/);
  });
});
