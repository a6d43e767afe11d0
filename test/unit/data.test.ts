import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DataQuality } from '../../core/data/quality.ts';
import { DataSpec } from '../../core/job/federated-job.ts';
import { Rng } from '../../core/rng.ts';
import { WorkerError } from '../../worker/errors.ts';
import { concatDatasets, type Dataset, sortLabels, splitDataset, splitIndices } from '../../worker/data/dataset.ts';
import { loadSiteData } from '../../worker/data/load.ts';
import { hospitalRows, toCsvText } from '../../worker/data/synthetic/hospital.ts';
import { writeHospitalCsv } from '../fixtures/hospital-csv.ts';

const fixtures = resolve(import.meta.dirname, '../fixtures/data');
const ctx = { site: 'hospital-a', jobSeed: 7, baseDir: fixtures };

function csv(fields: Record<string, unknown>) {
  return DataSpec.parse({ type: 'csv', labelColumn: 'diagnosis', ...fields });
}

/** The error a promise rejects with, checked to be a WorkerError. */
async function failure(p: Promise<unknown>): Promise<WorkerError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WorkerError);
  return err as WorkerError;
}

function column(ds: Dataset, j: number): number[] {
  const d = ds.sampleShape[0]!;
  return Array.from({ length: ds.n }, (_, i) => ds.x[i * d + j]!);
}

const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
const sd = (v: number[]) => Math.sqrt(mean(v.map((x) => (x - mean(v)) ** 2)));

describe('dataset helpers', () => {
  const ds: Dataset = { x: Float32Array.from({ length: 20 }, (_, i) => i), y: Int32Array.from([0, 1, 0, 1, 1, 0, 0, 1, 0, 1]), n: 10, sampleShape: [2] };

  it('concatenates datasets in order and refuses mixed sample shapes', () => {
    const both = concatDatasets([ds, ds]);
    expect(both.n).toBe(20);
    expect(Array.from(both.x.subarray(20, 24))).toEqual([0, 1, 2, 3]);
    expect(Array.from(both.y.subarray(10))).toEqual(Array.from(ds.y));
    expect(() => concatDatasets([ds, { ...ds, sampleShape: [1, 2] }])).toThrow(/sample shape/);
  });

  it('splits by a seeded shuffle, the same for the same stream', () => {
    const a = splitIndices(10, 0.3, Rng.from(1, 'split', 's'));
    const b = splitIndices(10, 0.3, Rng.from(1, 'split', 's'));
    expect(a).toEqual(b);
    expect(a.test.length).toBe(3);
    expect([...a.train, ...a.test].sort((p, q) => p - q)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const { train, test } = splitDataset(ds, 0.3, Rng.from(1, 'split', 's'));
    expect(train.n + test.n).toBe(10);
    expect(test.x[0]).toBe(ds.x[a.test[0]! * 2]);
    // both parts keep an example even when the fraction rounds to nothing
    expect(splitIndices(2, 0.1, Rng.from(1)).test.length).toBe(1);
  });

  it('sorts labels numerically when all are numbers, else by code units', () => {
    expect(sortLabels(['10', '2', '1', '2'])).toEqual(['1', '2', '10']);
    expect(sortLabels(['yes', 'no', 'No'])).toEqual(['No', 'no', 'yes']);
  });
});

describe('CSV loader', () => {
  let tmp: string;
  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'consort-csv-'));
  });
  afterAll(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  it("loads train and test files, standardising both with the train split's statistics", async () => {
    const data = await loadSiteData(csv({ train: 'hospital-a/train.csv', test: 'hospital-a/test.csv' }), ctx);
    expect(data.classes).toEqual(['no', 'yes']);
    expect(data.featureNames).toEqual(['age', 'lactate', 'temperature']);
    expect(data.train).toMatchObject({ n: 10, sampleShape: [3] });
    expect(data.test).toMatchObject({ n: 3, sampleShape: [3] });
    expect(Array.from(data.train.y)).toEqual([0, 1, 0, 0, 1, 0, 1, 0, 0, 1]);
    expect(Array.from(data.test.y)).toEqual([0, 1, 0]);
    for (let j = 0; j < 3; j++) {
      expect(mean(column(data.train, j))).toBeCloseTo(0, 5);
      expect(sd(column(data.train, j))).toBeCloseTo(1, 5);
    }
    const ages = [64, 71, 45, 58, 80, 39, 67, 52, 76, 61];
    expect(data.test.x[0]).toBeCloseTo((59 - mean(ages)) / sd(ages), 5);
    expect(data.quality).toEqual({
      rowsUsed: 13,
      rowsRejected: {},
      missing: {},
      labels: { no: 8, yes: 5 },
      trainLabels: { no: 6, yes: 4 },
      trainSamples: 10,
      testSamples: 3,
    });
    expect(() => DataQuality.parse(data.quality)).not.toThrow();
  });

  it("takes the job's classes in the job's order", async () => {
    const data = await loadSiteData(csv({ train: 'hospital-a/train.csv', test: 'hospital-a/test.csv' }), { ...ctx, classes: ['yes', 'no', 'maybe'] });
    expect(data.classes).toEqual(['yes', 'no', 'maybe']);
    expect(Array.from(data.test.y)).toEqual([1, 0, 1]);
    expect(data.quality.labels).toEqual({ yes: 5, no: 8, maybe: 0 });
  });

  it('holds out testFraction by a shuffle that the job seed and site decide', async () => {
    const spec = csv({ train: 'hospital-a/train.csv', testFraction: 0.3 });
    const a = await loadSiteData(spec, ctx);
    const b = await loadSiteData(spec, ctx);
    expect(a.train.n).toBe(7);
    expect(a.test.n).toBe(3);
    expect(a.quality).toMatchObject({ rowsUsed: 10, trainSamples: 7, testSamples: 3, labels: { no: 6, yes: 4 } });
    expect(b.train.x).toEqual(a.train.x);
    expect(b.test.y).toEqual(a.test.y);
    // Other seeds pick other rows: among a handful of seeds, some split differs.
    const others = await Promise.all([8, 9, 10, 11].map((jobSeed) => loadSiteData(spec, { ...ctx, jobSeed })));
    expect(others.some((o) => !o.test.x.every((v, i) => v === a.test.x[i]))).toBe(true);
    // The train split alone is standardised.
    for (let j = 0; j < 3; j++) expect(mean(column(a.train, j))).toBeCloseTo(0, 5);
  });

  it('counts empty values as missing and imputes the train mean; skips rows with no label', async () => {
    const data = await loadSiteData(csv({ train: 'hospital-a/missing.csv', test: 'hospital-a/test.csv' }), ctx);
    expect(data.quality.missing).toEqual({ lactate: 2, temperature: 1 });
    expect(data.quality.rowsRejected).toEqual({ 'missing label': 1 });
    expect(data.quality).toMatchObject({ rowsUsed: 10, trainSamples: 7, testSamples: 3 });
    // Rows 2 and 5 of the kept rows had no lactate: they sit at the (observed) mean, 0.
    const lactate = column(data.train, 1);
    expect(lactate[1]).toBe(0);
    expect(lactate[4]).toBe(0);
    const observed = [1.2, 0.9, 1.1, 2.9, 1.3];
    expect(lactate[0]).toBeCloseTo((1.2 - mean(observed)) / sd(observed), 5);
    expect(column(data.train, 2)[3]).toBe(0);
  });

  it('reports a non-numeric value with file, line and column', async () => {
    const err = await failure(loadSiteData(csv({ train: 'broken/non-numeric.csv' }), ctx));
    expect(err.code).toBe('CONSORT_W_DATA_ROW');
    expect(err.message).toContain('broken/non-numeric.csv line 4: column "lactate" is "abc", not a number');
    expect(err.line).toBe(4);
    expect(err.file).toBe(join(fixtures, 'broken/non-numeric.csv'));
  });

  it('refuses a file that is not UTF-8 with its first such line, instead of merging "élevé" and "èlevè" into one class', async () => {
    // Latin-1: é is 0xE9, è is 0xE8, each alone not UTF-8.
    const text = 'age,risque\n50,bas\n61,élevé\n70,èlevè\n';
    await writeFile(join(tmp, 'latin1.csv'), Buffer.from(text, 'latin1'));
    const err = await failure(loadSiteData(csv({ train: 'latin1.csv', labelColumn: 'risque' }), { ...ctx, baseDir: tmp }));
    expect(err.code).toBe('CONSORT_W_DATA_ROW');
    expect(err.message).toBe('site "hospital-a": latin1.csv line 3 is not UTF-8 text (Latin-1, Windows-1252 or UTF-16?): save the file as UTF-8');
    expect(err.line).toBe(3);
    // The same text as UTF-8 has three classes.
    await writeFile(join(tmp, 'utf8.csv'), text.repeat(1).replace(/\n$/, '\n80,bas\n90,élevé\n95,èlevè\n'));
    const data = await loadSiteData(csv({ train: 'utf8.csv', labelColumn: 'risque', testFraction: 0.3 }), { ...ctx, baseDir: tmp });
    expect(data.classes).toEqual(['bas', 'èlevè', 'élevé']);
  });

  it("reads names and labels in Unicode's composed form: a file saved on macOS (NFD) matches the job's names and another site's labels", async () => {
    const nfd = (t: string) => t.normalize('NFD');
    await writeFile(join(tmp, 'nfd.csv'), nfd('âge,Température °C,risque\n50,37,élevé\n61,38,bas\n70,39,élevé\n80,36,bas\n'));
    expect(nfd('é')).not.toBe('é');
    const data = await loadSiteData(csv({ train: 'nfd.csv', labelColumn: 'risque', featureColumns: ['Température °C', 'âge'], testFraction: 0.25 }), {
      ...ctx,
      baseDir: tmp,
    });
    expect(data.classes).toEqual(['bas', 'élevé']);
    expect(data.featureNames).toEqual(['Température °C', 'âge']);
  });

  it('reports a row with the wrong number of fields with file and line', async () => {
    const err = await failure(loadSiteData(csv({ train: 'broken/field-count.csv' }), ctx));
    expect(err.code).toBe('CONSORT_W_DATA_ROW');
    expect(err.message).toMatch(/broken\/field-count\.csv line 4: 3 fields, but the header has 4/);
    expect(err.line).toBe(4);
  });

  it('reports a CSV syntax error with its line', async () => {
    await writeFile(join(tmp, 'quote.csv'), 'a,diagnosis\n1,no\n"2,yes\n');
    const err = await failure(loadSiteData(csv({ train: join(tmp, 'quote.csv') }), ctx));
    expect(err.code).toBe('CONSORT_W_DATA_ROW');
    expect(err.message).toMatch(/quote\.csv line \d/);
  });

  it('names the line where a stray quote opens, not where the parser gave up (the end of the file, or the line that closed it)', async () => {
    const rows = ['age,bp,temp,y', ...Array.from({ length: 199 }, (_, i) => `${i + 1},2,3,no`)];
    rows[3] = '4,5,"6,yes';
    await writeFile(join(tmp, 'open.csv'), `${rows.join('\n')}\n`);
    const open = await failure(loadSiteData(csv({ train: join(tmp, 'open.csv'), labelColumn: 'y' }), ctx));
    expect(open.code).toBe('CONSORT_W_DATA_ROW');
    expect(open.message).toMatch(/open\.csv line 4: a quoted field opens here and is never closed \(a stray " \?\)/);
    expect(open.line).toBe(4);
    // Closed by another stray quote seven lines on: the value runs over eight lines.
    rows[10] = '10,2,3",no';
    await writeFile(join(tmp, 'closed.csv'), `${rows.join('\n')}\n`);
    const closed = await failure(loadSiteData(csv({ train: join(tmp, 'closed.csv'), labelColumn: 'y' }), ctx));
    expect(closed.message).toMatch(/closed\.csv line 4: column "temp" opens a quote that runs on to line 11 \("6,yes\\n/);
    expect(closed.line).toBe(4);
    // Into the label column: not a class of its own.
    rows[10] = '10,2,3,no';
    rows[3] = '4,5,6,"yes';
    rows[6] = '7,2,3,no",';
    await writeFile(join(tmp, 'label.csv'), `${rows.join('\n')}\n`);
    const label = await failure(loadSiteData(csv({ train: join(tmp, 'label.csv'), labelColumn: 'y' }), ctx));
    expect(label.message).toMatch(/label\.csv line 4: /);
    // A quoted field over two lines that is meant so, and lines after it, keep their numbers.
    await writeFile(join(tmp, 'multi.csv'), 'a,note,y\n1,"multi\nline",no\n2,,no\nx,,no\n');
    const after = await failure(loadSiteData(csv({ train: join(tmp, 'multi.csv'), labelColumn: 'y', featureColumns: ['a'] }), ctx));
    expect(after.message).toMatch(/multi\.csv line 5: column "a" is "x", not a number/);
  });

  it('names the missing label column, the file and the columns it has', async () => {
    const err = await failure(loadSiteData(csv({ train: 'broken/no-diagnosis.csv' }), ctx));
    expect(err.code).toBe('CONSORT_W_DATA_COLUMN');
    expect(err.message).toContain('"diagnosis"');
    expect(err.message).toContain('broken/no-diagnosis.csv');
    expect(err.message).toContain('"age", "lactate", "temperature", "outcome"');
  });

  it('names a missing file', async () => {
    const err = await failure(loadSiteData(csv({ train: 'nowhere/train.csv' }), ctx));
    expect(err.code).toBe('CONSORT_W_DATA_FILE');
    expect(err.message).toContain('nowhere/train.csv');
    expect(err.message).toContain('not found');
    expect(err.file).toBe(join(fixtures, 'nowhere/train.csv'));
  });

  it('refuses a site with no usable rows, naming site and file', async () => {
    let err = await failure(loadSiteData(csv({ train: 'broken/header-only.csv' }), ctx));
    expect(err.code).toBe('CONSORT_W_DATA_EMPTY');
    expect(err.message).toContain('hospital-a');
    expect(err.message).toContain('broken/header-only.csv');
    await writeFile(join(tmp, 'unlabelled.csv'), 'age,diagnosis\n60,\n70,\n');
    err = await failure(loadSiteData(csv({ train: join(tmp, 'unlabelled.csv') }), ctx));
    expect(err.code).toBe('CONSORT_W_DATA_EMPTY');
    await writeFile(join(tmp, 'empty.csv'), '');
    err = await failure(loadSiteData(csv({ train: join(tmp, 'empty.csv') }), ctx));
    expect(err.code).toBe('CONSORT_W_DATA_EMPTY');
  });

  it("rejects a label outside the job's classes with file and line", async () => {
    const err = await failure(loadSiteData(csv({ train: 'hospital-a/train.csv' }), { ...ctx, classes: ['no', 'sepsis'] }));
    expect(err.code).toBe('CONSORT_W_DATA_LABEL');
    expect(err.message).toMatch(/hospital-a\/train\.csv line 3: label "yes" is not one of the job's classes/);
    expect(err.line).toBe(3);
  });

  it("requires the test file to have the train file's feature columns, in any order", async () => {
    const err = await failure(loadSiteData(csv({ train: 'hospital-a/train.csv', test: 'broken/other-features.csv' }), ctx));
    expect(err.code).toBe('CONSORT_W_DATA_SCHEMA');
    expect(err.message).toContain('lacks "temperature"');
    expect(err.message).toContain('has extra "heart_rate"');
    await writeFile(join(tmp, 'reordered.csv'), 'temperature,diagnosis,lactate,age\n37.2,no,1.4,59\n');
    const data = await loadSiteData(csv({ train: 'hospital-a/train.csv', test: join(tmp, 'reordered.csv') }), ctx);
    const same = await loadSiteData(csv({ train: 'hospital-a/train.csv', test: 'hospital-a/test.csv' }), ctx);
    expect(Array.from(data.test.x)).toEqual(Array.from(same.test.x.subarray(0, 3)));
  });

  it('takes a number label in any spelling as one class ("1", "1.0", "1e0"), also against the job\'s classes', async () => {
    await writeFile(join(tmp, 'numeric-labels.csv'), 'age,diagnosis\n60,0\n61,1.0\n62,0.00\n63,1e0\n64,1\n');
    const spec = csv({ train: join(tmp, 'numeric-labels.csv'), testFraction: 0.2 });
    const inferred = await loadSiteData(spec, ctx);
    expect(inferred.classes).toEqual(['0', '1']);
    expect(inferred.quality.labels).toEqual({ '0': 2, '1': 3 });
    const named = await loadSiteData(spec, { ...ctx, classes: ['0.0', '1.0'] });
    expect(named.quality.labels).toEqual({ '0.0': 2, '1.0': 3 });
  });

  it('refuses a label column of measurements (more than 20 distinct values, over half the rows), unless the job lists the classes', async () => {
    const rows = Array.from({ length: 30 }, (_, i) => `${i},${(100 + i * 3.7).toFixed(1)}`);
    await writeFile(join(tmp, 'prices.csv'), `age,price\n${rows.join('\n')}\n`);
    const spec = DataSpec.parse({ type: 'csv', labelColumn: 'price', train: join(tmp, 'prices.csv') });
    const err = await failure(loadSiteData(spec, ctx));
    expect(err.code).toBe('CONSORT_W_DATA_LABEL');
    expect(err.message).toContain('label column "price" has 30 distinct values in 30 rows');
    expect(err.message).toContain('spec.classes');
    const classes = rows.map((r) => r.split(',')[1]!);
    expect((await loadSiteData(spec, { ...ctx, classes })).classes).toHaveLength(30);
  });

  it('picks the featureColumns by name, in their order, leaving other columns (text ones too) out', async () => {
    await writeFile(join(tmp, 'with-id.csv'), 'patient,lactate,diagnosis,age\nP-1,1.5,no,60\nP-2,2.5,yes,70\nP-3,3.5,no,80\n');
    const data = await loadSiteData(csv({ train: join(tmp, 'with-id.csv'), featureColumns: ['age', 'lactate'], testFraction: 0.34 }), ctx);
    expect(data.featureNames).toEqual(['age', 'lactate']);
    const err = await failure(loadSiteData(csv({ train: join(tmp, 'with-id.csv'), featureColumns: ['age', 'diagnosis'] }), ctx));
    expect(err.code).toBe('CONSORT_W_DATA_COLUMN');
    expect(err.message).toContain('feature column "diagnosis" of data.featureColumns is not a feature');
    expect(() => csv({ train: 'x.csv', featureColumns: ['age', 'age'] })).toThrow(/lists a column twice/);
  });

  it('refuses a site left with no test examples (one usable row and no test file), naming the site', async () => {
    await writeFile(join(tmp, 'one-row.csv'), 'age,diagnosis\n60,no\n70,\n');
    const err = await failure(loadSiteData(csv({ train: join(tmp, 'one-row.csv') }), ctx));
    expect(err.code).toBe('CONSORT_W_DATA_EMPTY');
    expect(err.message).toBe(
      'site "hospital-a": no test examples (1 usable example: with no test file, at least 2 are needed (one to train on, one to test on))',
    );
  });

  it('reads other delimiters, quoted fields and a byte-order mark', async () => {
    await writeFile(join(tmp, 'semi.csv'), '\uFEFF"age";"note";diagnosis\n60;"1.5";no\n70;2;yes\n');
    const data = await loadSiteData(csv({ train: join(tmp, 'semi.csv'), delimiter: ';', testFraction: 0.5 }), ctx);
    expect(data.featureNames).toEqual(['age', 'note']);
    await writeFile(join(tmp, 'comma-decimal.csv'), 'age,note,diagnosis\n60,"1,5",no\n');
    const err = await failure(loadSiteData(csv({ train: join(tmp, 'comma-decimal.csv') }), ctx));
    expect(err.message).toContain('column "note" is "1,5", not a number');
  });

  it('loads a CSV of synthetic hospital rows as the generator does, scaled by the site itself', async () => {
    const spec = { samples: 120, prevalence: 0.3, shift: 0.5, seed: 4 };
    const site = 'st-mary';
    const path = join(tmp, 'st-mary.csv');
    await writeHospitalCsv(path, spec, { site, jobSeed: 3 });
    const fromCsv = await loadSiteData(DataSpec.parse({ type: 'csv', train: path, labelColumn: 'sepsis', testFraction: 0.25 }), {
      site,
      jobSeed: 3,
      baseDir: tmp,
    });
    const generated = await loadSiteData(DataSpec.parse({ type: 'synthetic', generator: 'hospital', ...spec }), { site, jobSeed: 3, baseDir: tmp });
    expect(fromCsv.featureNames).toEqual(generated.featureNames);
    expect(fromCsv.classes).toEqual(generated.classes);
    // Same rows and split; the CSV is standardised with its own train statistics (mean 0), the
    // generator with the clinical reference.
    expect(fromCsv.train.y).toEqual(generated.train.y);
    expect(fromCsv.test.y).toEqual(generated.test.y);
    for (let j = 0; j < 12; j++) {
      let m = 0;
      for (let i = 0; i < fromCsv.train.n; i++) m += fromCsv.train.x[i * 12 + j]! / fromCsv.train.n;
      expect(Math.abs(m)).toBeLessThan(1e-5);
    }
    expect(fromCsv.train.x).not.toEqual(generated.train.x);
    expect(fromCsv.quality).toEqual(generated.quality);
    expect(toCsvText(hospitalRows(spec, { site, jobSeed: 3 })).split('\n')[0]).toBe(
      'age,heart_rate,resp_rate,temperature,systolic_bp,spo2,wbc,lactate,creatinine,platelets,bilirubin,gcs,sepsis',
    );
  });
});
