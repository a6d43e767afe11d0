// The native TF.js backend (tfjs-node, built by `make setup`) runs jobs end to end: a tabular job
// that asks for it, and a small CNN on image folders.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runConsort, transcript } from '../helpers/consort-cli.ts';
import { hospitalSpec, readReport, writeJob } from '../helpers/jobs.ts';
import { writeHalvesImageFolder } from '../helpers/site-data.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

describe('training.backend: tensorflow', () => {
  const tmp = useTmpDirs();

  it('runs a tabular job on the native backend and says so in the report', async () => {
    const dir = tmp('native-tabular');
    const spec = hospitalSpec();
    const job = writeJob(dir, { ...spec, rounds: 2, training: { ...(spec.training as object), backend: 'tensorflow' } });
    const out = join(dir, 'out');
    const r = await runConsort(['run', job, '--quiet', '--out', out]);
    expect(r.code, transcript(r)).toBe(0);
    const report = readReport(out);
    expect(report.backend).toBe('tensorflow');
    expect(report.final.rounds).toBe(2);
    expect(r.stdout).toContain('backend tensorflow');
  });

  it("trains a small CNN on two sites' image folders past 80% accuracy", async () => {
    const dir = tmp('native-images');
    const sites = ['clinic-a', 'clinic-b'];
    sites.forEach((site, i) => {
      writeHalvesImageFolder(join(dir, 'images', site, 'train'), 30, 100 + i);
      writeHalvesImageFolder(join(dir, 'images', site, 'test'), 10, 200 + i);
    });
    const job = writeJob(dir, {
      model: { type: 'cnn', filters: [4], kernelSize: 3, dense: 8 },
      sites: sites.map((name) => ({
        name,
        data: { type: 'imageFolder', train: `images/${name}/train`, test: `images/${name}/test`, width: 8, height: 8, channels: 1 },
      })),
      rounds: 3,
      training: { epochs: 2, batchSize: 8, optimizer: 'adam', learningRate: 0.01, backend: 'tensorflow' },
      seed: 5,
    });
    const out = join(dir, 'out');
    const r = await runConsort(['run', job, '--quiet', '--out', out]);
    expect(r.code, transcript(r)).toBe(0);
    const report = readReport(out);
    expect(report.backend).toBe('tensorflow');
    expect(report.model.type).toBe('cnn');
    expect(report.model.inputShape).toEqual([8, 8, 1]);
    expect(report.model.imageInput).toEqual({
      height: 8,
      width: 8,
      channels: 1,
      color: 'grayscale',
      resize: 'bilinear-half-pixel',
      scale: 'divide-by-255',
      layout: 'NHWC',
    });
    expect(report.model.classes).toEqual(['left', 'right']);
    for (const site of sites) {
      expect(report.final.perSite[site]?.samples).toBe(20);
      expect(report.sites.find((s) => s.site === site)?.quality).toMatchObject({ trainSamples: 60, testSamples: 20, labels: { left: 40, right: 40 } });
    }
    expect(report.final.accuracy).toBeGreaterThan(0.8);
  });
});
