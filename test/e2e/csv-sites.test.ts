// The CSV path end to end: three hospitals' train and test files on disk, a job that names them
// relative to its own folder, and per-site results and data-quality counts in the report.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { runConsort, transcript } from '../helpers/consort-cli.ts';
import { loadExportedModel, readReport, writeJob } from '../helpers/jobs.ts';
import { csvData, writeDataFile, writeHospitalCsvSite, writePretrainedDense } from '../helpers/site-data.ts';
import { HOSPITAL_FEATURES } from '../../worker/data/synthetic/hospital.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

describe('consort run on CSV sites', () => {
  const tmp = useTmpDirs();

  it("trains on each site's train.csv and reports per-site test accuracy and data quality", async () => {
    const root = tmp('csv-sites');
    // The job sits in its own folder; the run's working directory is the repository, so the
    // relative paths only work if they resolve against the job file's folder.
    const jobDir = join(root, 'consortium');
    const sites = [
      writeHospitalCsvSite(jobDir, { name: 'north', train: 160, test: 60, prevalence: 0.3, shift: 0 }, 11),
      writeHospitalCsvSite(jobDir, { name: 'south', train: 120, test: 45, prevalence: 0.4, shift: 0.4, blanks: { lactate: 3, temperature: 2 } }, 12),
      writeHospitalCsvSite(jobDir, { name: 'east', train: 90, test: 35, prevalence: 0.25, shift: -0.3 }, 13),
    ];
    const job = writeJob(jobDir, {
      model: { type: 'mlp', hidden: [16] },
      sites: sites.map((s) => ({ name: s.name, data: csvData(s) })),
      rounds: 4,
      training: { epochs: 3, batchSize: 16, learningRate: 0.1 },
      seed: 3,
    });
    const out = join(root, 'out');
    const r = await runConsort(['run', job, '--quiet', '--out', out]);
    expect(r.code, transcript(r)).toBe(0);
    const report = readReport(out);

    expect(report.model.classes).toEqual(['no', 'yes']);
    expect(report.model.inputShape).toEqual([12]);
    expect(report.rounds).toHaveLength(4);
    for (const s of sites) {
      const final = report.final.perSite[s.name];
      expect(final, s.name).toBeDefined();
      expect(final!.samples, `${s.name}: test samples = rows of test.csv`).toBe(s.testRows);
      expect(final!.accuracy).toBeGreaterThanOrEqual(0);
      expect(final!.accuracy).toBeLessThanOrEqual(1);
      expect(report.rounds.at(-1)!.sites.find((m) => m.site === s.name)?.samples).toBe(s.testRows);

      const q = report.sites.find((x) => x.site === s.name)?.quality;
      expect(q, s.name).toBeDefined();
      expect(q!.trainSamples).toBe(s.trainRows);
      expect(q!.testSamples).toBe(s.testRows);
      expect(q!.rowsUsed).toBe(s.trainRows + s.testRows);
      expect(q!.rowsRejected).toEqual({});
      expect(q!.labels.no! + q!.labels.yes!).toBe(s.trainRows + s.testRows);
      expect(q!.missing, s.name).toEqual(s.name === 'south' ? { lactate: 3, temperature: 2 } : {});
    }
    // Sample-weighted global accuracy over the test files, and a model that learned something.
    const total = sites.reduce((n, s) => n + s.testRows, 0);
    const weighted = sites.reduce((a, s) => a + report.final.perSite[s.name]!.accuracy * s.testRows, 0) / total;
    expect(report.final.accuracy).toBeCloseTo(weighted, 9);
    expect(report.final.accuracy).toBeGreaterThan(0.7);
  });

  it("scales every site's inputs with the pooled moments of all train splits, the same in one process and over NATS; the TF.js model takes raw values", async () => {
    const root = tmp('csv-scaling');
    const sites = [
      writeHospitalCsvSite(root, { name: 'north', train: 150, test: 40, prevalence: 0.3, shift: 0, blanks: { lactate: 4 } }, 31),
      // Sicker patients: other means, which a site's own scaling would hide from the model.
      writeHospitalCsvSite(root, { name: 'south', train: 60, test: 30, prevalence: 0.5, shift: 1.2 }, 32),
    ];
    const job = writeJob(root, {
      model: { type: 'logistic' },
      classes: ['no', 'yes'],
      sites: sites.map((s) => ({ name: s.name, data: csvData(s) })),
      rounds: 3,
      seed: 7,
    });
    const run = async (name: string, flags: string[]) => {
      const r = await runConsort(['run', job, '--quiet', '--out', join(root, name), ...flags]);
      expect(r.code, transcript(r)).toBe(0);
      const report = readReport(join(root, name));
      // --quiet drops the progress, not the result: both modes print the summary and the model's hash.
      expect(r.stdout, name).toContain(`model sha256 ${report.final.modelSha256}`);
      return report;
    };
    const [local, nats] = await Promise.all([run('local', []), run('nats', ['--nats', 'embedded'])]);
    // What one pooled train split would give: mean and population std per column, blanks left out.
    const columns = HOSPITAL_FEATURES.map(() => [] as number[]);
    for (const s of sites) {
      const [header, ...lines] = readFileSync(join(root, s.train), 'utf8').trim().split('\n');
      const names = header!.split(',');
      for (const line of lines) {
        const cells = line.split(',');
        HOSPITAL_FEATURES.forEach((f, j) => {
          const cell = cells[names.indexOf(f)]!;
          if (cell !== '') columns[j]!.push(Number(cell));
        });
      }
    }
    const scaler = local.model.inputScaler!;
    expect(scaler).toBeDefined();
    columns.forEach((values, j) => {
      const mean = values.reduce((a, b) => a + b, 0) / values.length;
      const std = Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / values.length);
      expect(scaler.mean[j], HOSPITAL_FEATURES[j]).toBeCloseTo(mean, 9);
      expect(scaler.std[j]! / std, HOSPITAL_FEATURES[j]).toBeCloseTo(1, 9);
    });
    // The sites pooled their moments over NATS to the very same scaling, and so the same model.
    expect(nats.model.inputScaler).toEqual(scaler);
    expect(nats.final.modelSha256).toBe(local.final.modelSha256);

    // The exported TF.js model takes raw values (the scaling folded into its first layer): on each
    // site's raw test.csv it scores what the run reported, and so does the one the NATS run wrote.
    for (const [name, report] of [
      ['local', local],
      ['nats', nats],
    ] as const) {
      expect(report.model.tfjsTakesRawInputs, name).toBe(true);
      expect(readFileSync(join(root, name, 'MODEL_CARD.md'), 'utf8')).toContain('`tfjs/model.json` takes the raw values');
      const model = await loadExportedModel(join(root, name));
      try {
        for (const s of sites) {
          const [header, ...lines] = readFileSync(join(root, s.test), 'utf8').trim().split('\n');
          const names = header!.split(',');
          const x = lines.map((line) => HOSPITAL_FEATURES.map((f) => Number(line.split(',')[names.indexOf(f)])));
          const y = lines.map((line) => report.model.classes.indexOf(line.split(',')[names.indexOf('sepsis')]!));
          const predicted = tf.tidy(() => (model.predict(tf.tensor2d(x)) as tf.Tensor).argMax(-1).arraySync() as number[]);
          const accuracy = predicted.filter((p, i) => p === y[i]).length / lines.length;
          expect(Math.abs(accuracy - report.final.perSite[s.name]!.accuracy), `${name} ${s.name}`).toBeLessThanOrEqual(1 / lines.length + 1e-9);
        }
      } finally {
        model.dispose();
      }
    }
  });

  it("feeds a pre-trained model every site's columns as they are: two sites scoring one test file agree, with the exported model on the raw rows", async () => {
    const root = tmp('csv-pretrained');
    const north = writeHospitalCsvSite(root, { name: 'north', train: 120, test: 50, prevalence: 0.3, shift: 0, blanks: { lactate: 3 } }, 41);
    // Other means: scaled each by its own split (as the sites did), the same row would be another input at each.
    const south = writeHospitalCsvSite(root, { name: 'south', train: 80, test: 10, prevalence: 0.5, shift: 1.5 }, 42);
    await writePretrainedDense(root, (i) => (((i * 29) % 17) - 8) / 200);
    const job = writeJob(root, {
      model: { type: 'layers', path: 'model.json' },
      classes: ['no', 'yes'],
      // Both sites score north's test file.
      sites: [north, { ...south, test: north.test }].map((s) => ({ name: s.name, data: csvData(s) })),
      rounds: 2,
      training: { epochs: 1, learningRate: 0.01 },
      seed: 3,
    });
    const r = await runConsort(['run', job, '--quiet', '--out', join(root, 'out')]);
    expect(r.code, transcript(r)).toBe(0);
    const report = readReport(join(root, 'out'));
    expect(report.model.inputScaler).toBeUndefined();
    const [a, b] = [report.final.perSite.north!, report.final.perSite.south!];
    expect(b.loss).toBe(a.loss);
    expect(b.accuracy).toBe(a.accuracy);
    // The exported model on north's raw test rows scores what the run reported.
    const model = await loadExportedModel(join(root, 'out'));
    try {
      const [header, ...lines] = readFileSync(join(root, north.test), 'utf8').trim().split('\n');
      const names = header!.split(',');
      const x = lines.map((line) => HOSPITAL_FEATURES.map((f) => Number(line.split(',')[names.indexOf(f)])));
      const y = lines.map((line) => report.model.classes.indexOf(line.split(',')[names.indexOf('sepsis')]!));
      // The exported model ends in a softmax: its outputs are probabilities.
      const p = tf.tidy(() => (model.predict(tf.tensor2d(x)) as tf.Tensor).arraySync() as number[][]);
      const loss = -y.reduce((sum, c, i) => sum + Math.log(p[i]![c]!), 0) / y.length;
      expect(loss).toBeCloseTo(a.loss, 4);
    } finally {
      model.dispose();
    }
  });

  it('warns of a class that spec.classes lists and no site has, and trains on', async () => {
    const root = tmp('csv-empty-class');
    const north = writeHospitalCsvSite(root, { name: 'north', train: 40, test: 15, prevalence: 0.3, shift: 0 }, 51);
    const job = writeJob(root, { model: { type: 'logistic' }, classes: ['no', 'yes', 'Yes'], sites: [{ name: 'north', data: csvData(north) }], rounds: 1 });
    const r = await runConsort(['run', job, '--quiet', '--out', join(root, 'out')]);
    expect(r.code, transcript(r)).toBe(0);
    expect(r.stderr).toContain(
      `warning: spec.classes lists "Yes", which no site's data has (1 site counted): the model keeps an output for it that no example trains`,
    );
    expect(readReport(join(root, 'out')).model.classes).toEqual(['no', 'yes', 'Yes']);
  });

  it('warns of a class only the test data has (a misspelt test label), and trains on', async () => {
    const root = tmp('csv-test-only-class');
    const north = writeHospitalCsvSite(root, { name: 'north', train: 40, test: 15, prevalence: 0.3, shift: 0 }, 52);
    const [header, ...lines] = readFileSync(join(root, north.test), 'utf8').trim().split('\n');
    const label = header!.split(',').indexOf('sepsis');
    const misspelt = lines.map((line, i) =>
      i < 3
        ? line
            .split(',')
            .map((v, c) => (c === label ? 'Yes' : v))
            .join(',')
        : line,
    );
    writeDataFile(root, north.test, `${[header, ...misspelt].join('\n')}\n`);
    const job = writeJob(root, { model: { type: 'logistic' }, sites: [{ name: 'north', data: csvData(north) }], rounds: 1 });
    const r = await runConsort(['run', job, '--quiet', '--out', join(root, 'out')]);
    expect(r.code, transcript(r)).toBe(0);
    expect(r.stderr).toContain('warning: class "Yes" (3) is only in test data: no site trains on it, so every such test example is scored wrong');
    const report = readReport(join(root, 'out'));
    expect(report.model.classes).toEqual(['Yes', 'no', 'yes']);
    expect(report.sites.find((s) => s.site === 'north')?.quality.trainLabels).toEqual({ Yes: 0, no: expect.any(Number), yes: expect.any(Number) });
  });

  it('warns of a column one site measures in other units (temperature in °F), from the moments alone, and trains on', async () => {
    const root = tmp('csv-units');
    const sites = [
      writeHospitalCsvSite(root, { name: 'north', train: 60, test: 20, prevalence: 0.3, shift: 0 }, 61),
      writeHospitalCsvSite(root, { name: 'south', train: 50, test: 20, prevalence: 0.4, shift: 0.3 }, 62),
      writeHospitalCsvSite(root, { name: 'east', train: 40, test: 20, prevalence: 0.3, shift: 0.1 }, 63),
    ];
    const east = sites[2]!;
    for (const file of [east.train, east.test]) {
      const [header, ...lines] = readFileSync(join(root, file), 'utf8').trim().split('\n');
      const c = header!.split(',').indexOf('temperature');
      const fahrenheit = lines.map((line) =>
        line
          .split(',')
          .map((v, i) => (i === c && v !== '' ? String((Number(v) * 9) / 5 + 32) : v))
          .join(','),
      );
      writeDataFile(root, file, `${[header, ...fahrenheit].join('\n')}\n`);
    }
    const job = writeJob(root, { model: { type: 'logistic' }, sites: sites.map((s) => ({ name: s.name, data: csvData(s) })), rounds: 1 });
    const r = await runConsort(['run', job, '--quiet', '--out', join(root, 'out')]);
    expect(r.code, transcript(r)).toBe(0);
    const warnings = r.stderr.split('\n').filter((l) => l.includes('looks on another scale'));
    expect(warnings, transcript(r)).toHaveLength(1);
    expect(warnings[0]).toMatch(/warning: column "temperature" at site "east" looks on another scale than at the other sites \(mean 9\d\.\d+, sd/);
  });

  /** jobDir/rel's CSV (no quoted fields) rewritten with its columns in reverse and, with `id`, a text column first. */
  function reordered(jobDir: string, rel: string, id: boolean): string {
    const lines = readFileSync(join(jobDir, rel), 'utf8').trim().split('\n');
    const text = lines.map((line, i) => [...(id ? [i === 0 ? 'patient id' : `P-${i}`] : []), ...line.split(',').reverse()].join(','));
    return writeDataFile(jobDir, rel.replace('.csv', id ? '-with-id.csv' : '-reversed.csv'), `${text.join('\n')}\n`);
  }

  it('matches columns by name: another order is refused, and data.featureColumns gives the same model bytes whatever the order and extra columns', async () => {
    const root = tmp('csv-columns');
    const north = writeHospitalCsvSite(root, { name: 'north', train: 80, test: 30, prevalence: 0.3, shift: 0 }, 21);
    const south = writeHospitalCsvSite(root, { name: 'south', train: 70, test: 30, prevalence: 0.4, shift: 0.3 }, 22);
    const spec = (southFiles: { train: string; test: string }, features?: readonly string[]) => ({
      model: { type: 'logistic' },
      sites: [
        { name: 'north', data: { ...csvData(north), ...(features ? { featureColumns: features } : {}) } },
        { name: 'south', data: { ...csvData(southFiles), ...(features ? { featureColumns: features } : {}) } },
      ],
      rounds: 2,
      seed: 5,
    });
    const run = async (name: string, s: Record<string, unknown>) => {
      const job = writeJob(root, s, { file: `${name}.yaml` });
      return { r: await runConsort(['run', job, '--quiet', '--out', join(root, name)]), out: join(root, name) };
    };

    const same = await run('same', spec(south));
    expect(same.r.code, transcript(same.r)).toBe(0);

    // The same columns in another order: the count agrees, the meaning does not.
    const reversed = { train: reordered(root, south.train, false), test: reordered(root, south.test, false) };
    const refused = await run('reversed', spec(reversed));
    expect(refused.r.code, transcript(refused.r)).toBe(2);
    expect(refused.r.stderr).toContain('CONSORT_CLI_DATA');
    expect(refused.r.stderr).toContain('sites disagree on the feature columns: "north" and "south": the same columns in another order');
    expect(refused.r.stderr).toContain('data.featureColumns');

    // A text ID column, not named away: the message says how to leave it out.
    const withId = { train: reordered(root, south.train, true), test: reordered(root, south.test, true) };
    const text = await run('text-id', spec(withId));
    expect(text.r.code, transcript(text.r)).toBe(2);
    expect(text.r.stderr).toContain(
      'column "patient id" is "P-1", not a number (leave the field empty for a missing value; a column that is not a feature, such as an ID, is left out by listing the columns to use in data.featureColumns)',
    );
    // An extra number column: the column is named, not only the counts of columns.
    const withWeight = (rel: string) => {
      const lines = readFileSync(join(root, rel), 'utf8').trim().split('\n');
      return writeDataFile(root, rel.replace('.csv', '-weight.csv'), `${lines.map((l, i) => `${l},${i === 0 ? 'weight' : 60 + (i % 30)}`).join('\n')}\n`);
    };
    const extra = await run('extra', spec({ train: withWeight(south.train), test: withWeight(south.test) }));
    expect(extra.r.code, transcript(extra.r)).toBe(2);
    expect(extra.r.stderr).toContain('sites disagree on the feature columns: "north" and "south": only "south" has "weight"');

    // Named: each site picks its columns by name, leaving its text ID column out.
    const named = await run('named', spec(withId, HOSPITAL_FEATURES));
    expect(named.r.code, transcript(named.r)).toBe(0);
    expect(readReport(named.out).final.modelSha256).toBe(readReport(same.out).final.modelSha256);
    // The report and the model card say which columns the model takes, in its order.
    expect(readReport(named.out).model.features).toEqual(HOSPITAL_FEATURES);
    const card = readFileSync(join(named.out, 'MODEL_CARD.md'), 'utf8');
    const rows = card.split('\n').filter((l) => /^ {2}\| `/.test(l));
    expect(rows.map((l) => /`([^`]+)`/.exec(l)?.[1])).toEqual(HOSPITAL_FEATURES);

    // A column data.featureColumns names that a file lacks is named, with the file's columns.
    const missing = await run('missing', spec(south, [...HOSPITAL_FEATURES, 'weight']));
    expect(missing.r.code, transcript(missing.r)).toBe(2);
    expect(missing.r.stderr).toMatch(/train\.csv: feature column "weight" of data.featureColumns is not in the file; the file has columns /);
  });
});
