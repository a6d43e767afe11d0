import { isUtf8 } from 'node:buffer';
// The CSV loader. Broken data fails the load with file and line rather than vanishing: a wrong
// field count or a non-numeric value is an error, a label outside the job's classes is an error.
// Only two things are tolerated, and both are counted in the quality report: an empty feature
// value (missing; imputed with the train split's mean) and an empty label (the row is skipped).
import { CsvError, parse } from 'csv-parse/sync';
import { type CsvData, DEFAULT_TEST_FRACTION } from '../../core/job/federated-job.ts';
import { className, NUMBER } from '../../core/data/labels.ts';
import { Rng } from '../../core/rng.ts';
import { WorkerError } from '../errors.ts';
import { addCounts, type LoadContext, type SiteData, sortLabels, splitIndices } from './dataset.ts';
import { readDataFile, resolveDataPath } from './files.ts';
import { type RawSplit, selectRows, tabularSiteData } from './tabular.ts';

export const MISSING_LABEL = 'missing label';

/** One parsed CSV file: feature values (NaN = missing) and labels of the usable rows. */
interface CsvTable {
  shown: string;
  resolved: string;
  features: string[];
  /** n × features.length, row-major, NaN where the value was empty. */
  values: Float64Array;
  labels: string[];
  /** 1-based line of each usable row, for error messages. */
  lines: number[];
  n: number;
  missing: Record<string, number>;
  rejected: Record<string, number>;
}

function newlines(field: string): number {
  let n = 0;
  for (let i = field.indexOf('\n'); i >= 0; i = field.indexOf('\n', i + 1)) n++;
  return n;
}

/** The largest float32: a feature beyond it is Infinity to the model. */
const FLOAT32_MAX = 3.4028234663852886e38;

/** Past this many distinct labels, and more than one per two rows, the column holds measurements, not classes. */
const MANY_LABELS = 20;

function quote(s: string): string {
  return JSON.stringify(s.length > 40 ? `${s.slice(0, 40)}…` : s);
}

const QUOTE_ERRORS = new Set(['CSV_QUOTE_NOT_CLOSED', 'CSV_INVALID_CLOSING_QUOTE', 'CSV_NON_TRIMABLE_CHAR_AFTER_CLOSING_QUOTE']);

/**
 * The line (1-based) where the quoted field open at line `at` began (at the file's end when `at`
 * is Infinity), by CSV's rules: a field that starts with a quote (after spaces) runs to the next
 * lone quote, "" being a quote within it. Undefined when no quoted field spans that line.
 */
export function quoteOpenedAt(text: string, delimiter: string, at: number): number | undefined {
  let line = 1;
  let fieldStart = true;
  let openedAt: number | undefined;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (openedAt !== undefined) {
      if (ch === '"') {
        if (text[i + 1] === '"') i++;
        else {
          if (line >= at) return openedAt;
          openedAt = undefined;
        }
      } else if (ch === '\n') line++;
      continue;
    }
    if (ch === '\n') {
      if (line >= at) return undefined;
      line++;
      fieldStart = true;
    } else if (text.startsWith(delimiter, i)) {
      fieldStart = true;
      i += delimiter.length - 1;
    } else if (ch === '"' && fieldStart) openedAt = line;
    else if (ch !== ' ' && ch !== '\t' && ch !== '\r') fieldStart = false;
  }
  return openedAt;
}

function parseCsvTable(
  text: string,
  shown: string,
  resolved: string,
  delimiter: string,
  labelColumnAsWritten: string,
  wantedAsWritten?: readonly string[],
): CsvTable {
  // Column names compared in Unicode's composed form (NFC): "Température" typed in a job file and
  // the same name in a file saved on macOS (decomposed, NFD) print alike, and used to differ.
  const labelColumn = labelColumnAsWritten.normalize('NFC');
  const wanted = wantedAsWritten?.map((f) => f.normalize('NFC'));
  let records: { record: string[]; info: { lines: number } }[];
  try {
    records = parse(text, { delimiter, bom: true, trim: true, skip_empty_lines: true, relax_column_count: true, info: true }) as unknown as typeof records;
  } catch (err) {
    let line = err instanceof CsvError ? (err as CsvError & { lines?: number }).lines : undefined;
    let message = err instanceof Error ? err.message : String(err);
    // The parser says where it gave up: for a quote left open, the file's end. Said instead: the
    // line where that quoted field began, which is where the stray quote is.
    if (err instanceof CsvError && QUOTE_ERRORS.has(err.code)) {
      const opened = quoteOpenedAt(text, delimiter, err.code === 'CSV_QUOTE_NOT_CLOSED' ? Number.POSITIVE_INFINITY : (line ?? Number.POSITIVE_INFINITY));
      if (opened !== undefined && opened !== line) {
        message = `a quoted field opens here and ${err.code === 'CSV_QUOTE_NOT_CLOSED' ? 'is never closed' : `runs on to line ${line}`} (a stray " ?); the parser said: ${message}`;
        line = opened;
      }
    }
    const where = line !== undefined ? ` line ${line}` : '';
    throw new WorkerError('CONSORT_W_DATA_ROW', `${shown}${where}: ${message}`, {
      file: resolved,
      ...(line !== undefined ? { line } : {}),
      cause: err,
    });
  }
  const first = records[0];
  if (first === undefined) {
    throw new WorkerError('CONSORT_W_DATA_EMPTY', `${shown}: the file is empty; a header row is required`, { file: resolved });
  }
  const header = first.record.map((name) => name.normalize('NFC'));
  const seen = new Set<string>();
  header.forEach((name, i) => {
    if (name === '') {
      throw new WorkerError('CONSORT_W_DATA_SCHEMA', `${shown} line ${first.info.lines}: column ${i + 1} of the header has no name`, {
        file: resolved,
        line: first.info.lines,
      });
    }
    if (seen.has(name)) {
      throw new WorkerError('CONSORT_W_DATA_SCHEMA', `${shown} line ${first.info.lines}: column "${name}" appears twice in the header`, {
        file: resolved,
        line: first.info.lines,
      });
    }
    seen.add(name);
  });
  // Each name's column, looked up once: a header of 200,000 columns took 92 s by indexOf.
  const at = new Map(header.map((name, i) => [name, i]));
  const labelAt = at.get(labelColumn) ?? -1;
  if (labelAt < 0) {
    throw new WorkerError(
      'CONSORT_W_DATA_COLUMN',
      `${shown}: label column "${labelColumn}" not found; the file has columns ${header.map((h) => `"${h}"`).join(', ')}`,
      { file: resolved, line: first.info.lines },
    );
  }
  if (wanted) {
    const absent = wanted.filter((f) => f === labelColumn || !at.has(f));
    if (absent.length > 0) {
      throw new WorkerError(
        'CONSORT_W_DATA_COLUMN',
        `${shown}: feature column${absent.length > 1 ? 's' : ''} ${absent.map((f) => `"${f}"`).join(', ')} of data.featureColumns ${absent.length > 1 ? 'are' : 'is'} not ${absent.includes(labelColumn) ? 'a feature' : 'in the file'}; the file has columns ${header.map((h) => `"${h}"`).join(', ')}`,
        { file: resolved, line: first.info.lines },
      );
    }
  }
  const features = wanted ? [...wanted] : header.filter((_, i) => i !== labelAt);
  if (features.length === 0) {
    throw new WorkerError('CONSORT_W_DATA_SCHEMA', `${shown}: no feature columns besides the label column "${labelColumn}"`, { file: resolved });
  }
  const d = features.length;
  /** The header position of each feature, in the features' order. */
  const columns = features.map((f) => at.get(f)!);
  const values: number[] = [];
  const labels: string[] = [];
  const lines: number[] = [];
  const missing: Record<string, number> = {};
  const rejected: Record<string, number> = {};
  const row = new Float64Array(d);
  for (let r = 1; r < records.length; r++) {
    const { record, info } = records[r]!;
    // A record that a quoted field carries over several lines is named by its first (info.lines is its last).
    const line = info.lines - record.reduce((n, f) => n + newlines(f), 0);
    if (record.length !== header.length) {
      throw new WorkerError('CONSORT_W_DATA_ROW', `${shown} line ${line}: ${record.length} fields, but the header has ${header.length}`, {
        file: resolved,
        line,
      });
    }
    let missingHere = 0;
    for (let j = 0; j < d; j++) {
      const c = columns[j]!;
      const field = record[c]!;
      if (field === '') {
        row[j] = Number.NaN;
        missingHere++;
      } else if (NUMBER.test(field) && Math.abs(Number(field)) <= FLOAT32_MAX) {
        row[j] = Number(field);
      } else if (NUMBER.test(field)) {
        // 1e400 reads as Infinity, and 1e200 is one in float32 (what the model computes in) and
        // overflows the column's variance: either turned the pooled scaling, and every site's
        // training, into NaN (after a warning that the sites measured it on other scales).
        throw new WorkerError(
          'CONSORT_W_DATA_ROW',
          `${shown} line ${line}: column "${header[c]}" is ${quote(field)}, too large for a number (the model computes in float32, up to ±3.4e38)`,
          { file: resolved, line },
        );
      } else if (newlines(field) > 0) {
        throw new WorkerError(
          'CONSORT_W_DATA_ROW',
          `${shown} line ${line}: column "${header[c]}" opens a quote that runs on to line ${line + newlines(field)} (${quote(field)}): a stray " ?`,
          { file: resolved, line },
        );
      } else {
        throw new WorkerError(
          'CONSORT_W_DATA_ROW',
          `${shown} line ${line}: column "${header[c]}" is ${quote(field)}, not a number (leave the field empty for a missing value${wanted ? '' : '; a column that is not a feature, such as an ID, is left out by listing the columns to use in data.featureColumns'})`,
          { file: resolved, line },
        );
      }
    }
    const label = record[labelAt]!;
    if (newlines(label) > 0) {
      throw new WorkerError(
        'CONSORT_W_DATA_ROW',
        `${shown} line ${line}: label column "${labelColumn}" opens a quote that runs on to line ${line + newlines(label)} (${quote(label)}): a stray " ?`,
        { file: resolved, line },
      );
    }
    if (label === '') {
      rejected[MISSING_LABEL] = (rejected[MISSING_LABEL] ?? 0) + 1;
      continue;
    }
    if (missingHere > 0) {
      for (let j = 0; j < d; j++) if (Number.isNaN(row[j]!)) missing[features[j]!] = (missing[features[j]!] ?? 0) + 1;
    }
    for (let j = 0; j < d; j++) values.push(row[j]!);
    labels.push(className(label));
    lines.push(line);
  }
  return { shown, resolved, features, values: Float64Array.from(values), labels, lines, n: labels.length, missing, rejected };
}

/**
 * The file's text, which must be UTF-8: decoded leniently, a Latin-1 "élevé" and "èlevè" both
 * became "\uFFFDlev\uFFFD", one class out of two, and a column name no featureColumns entry could match.
 */
function utf8Text(bytes: Buffer, path: string, site: string, resolved: string): string {
  if (isUtf8(bytes)) return bytes.toString('utf8');
  let line = 1;
  let start = 0;
  for (let i = 0; i <= bytes.length; i++) {
    if (i < bytes.length && bytes[i] !== 0x0a) continue;
    if (!isUtf8(bytes.subarray(start, i))) break;
    line++;
    start = i + 1;
  }
  throw new WorkerError(
    'CONSORT_W_DATA_ROW',
    `site "${site}": ${path} line ${line} is not UTF-8 text (Latin-1, Windows-1252 or UTF-16?): save the file as UTF-8`,
    { file: resolved, line },
  );
}

async function readCsvTable(path: string, ctx: LoadContext, spec: CsvData): Promise<CsvTable> {
  const resolved = resolveDataPath(ctx.baseDir, path);
  const bytes = await readDataFile(resolved, path);
  const table = parseCsvTable(utf8Text(bytes, path, ctx.site, resolved), path, resolved, spec.delimiter, spec.labelColumn, spec.featureColumns);
  if (table.n === 0) {
    throw new WorkerError('CONSORT_W_DATA_EMPTY', `site "${ctx.site}": ${path} has no usable rows`, { file: resolved });
  }
  return table;
}

/** The test table's columns reordered to the train table's feature order. */
function alignColumns(test: CsvTable, features: string[]): CsvTable {
  const extra = test.features.filter((f) => !features.includes(f));
  const absent = features.filter((f) => !test.features.includes(f));
  if (extra.length > 0 || absent.length > 0) {
    const parts = [
      absent.length > 0 ? `lacks ${absent.map((f) => `"${f}"`).join(', ')}` : '',
      extra.length > 0 ? `has extra ${extra.map((f) => `"${f}"`).join(', ')}` : '',
    ].filter((p) => p !== '');
    throw new WorkerError('CONSORT_W_DATA_SCHEMA', `${test.shown}: feature columns differ from the train file's: it ${parts.join(' and ')}`, {
      file: test.resolved,
    });
  }
  if (test.features.every((f, i) => f === features[i])) return test;
  const d = features.length;
  const from = features.map((f) => test.features.indexOf(f));
  const values = new Float64Array(test.n * d);
  for (let i = 0; i < test.n; i++) for (let j = 0; j < d; j++) values[i * d + j] = test.values[i * d + from[j]!]!;
  return { ...test, features, values };
}

function classIndices(table: CsvTable, classes: readonly string[]): Int32Array {
  const index = new Map(classes.map((c, i) => [className(c), i] as const).reverse());
  const y = new Int32Array(table.n);
  for (let i = 0; i < table.n; i++) {
    const k = index.get(table.labels[i]!);
    if (k === undefined) {
      throw new WorkerError(
        'CONSORT_W_DATA_LABEL',
        `${table.shown} line ${table.lines[i]}: label ${quote(table.labels[i]!)} is not one of the job's classes (${classes.map((c) => `"${c}"`).join(', ')})`,
        { file: table.resolved, line: table.lines[i]! },
      );
    }
    y[i] = k;
  }
  return y;
}

export async function loadCsv(spec: CsvData, ctx: LoadContext): Promise<SiteData> {
  const trainTable = await readCsvTable(spec.train, ctx, spec);
  const testTable = spec.test === undefined ? undefined : alignColumns(await readCsvTable(spec.test, ctx, spec), trainTable.features);
  const classes = ctx.classes ?? sortLabels([...trainTable.labels, ...(testTable?.labels ?? [])]);
  const rows = trainTable.n + (testTable?.n ?? 0);
  if (ctx.classes === undefined && classes.length > MANY_LABELS && classes.length > rows / 2) {
    throw new WorkerError(
      'CONSORT_W_DATA_LABEL',
      `${spec.train}: label column "${spec.labelColumn}" has ${classes.length} distinct values in ${rows} rows; Consort trains classifiers, and these look like measurements, not classes (if they are classes, list them in spec.classes)`,
      { file: trainTable.resolved },
    );
  }
  const d = trainTable.features.length;
  const yAll = classIndices(trainTable, classes);
  const missing: Record<string, number> = {};
  const rejected: Record<string, number> = {};
  addCounts(missing, trainTable.missing);
  addCounts(rejected, trainTable.rejected);
  let train: RawSplit;
  let test: RawSplit;
  if (testTable !== undefined) {
    addCounts(missing, testTable.missing);
    addCounts(rejected, testTable.rejected);
    train = { values: trainTable.values, y: yAll, n: trainTable.n };
    test = { values: testTable.values, y: classIndices(testTable, classes), n: testTable.n };
  } else {
    const split = splitIndices(trainTable.n, spec.testFraction ?? DEFAULT_TEST_FRACTION, Rng.from(ctx.jobSeed, 'split', ctx.site));
    const all: RawSplit = { values: trainTable.values, y: yAll, n: trainTable.n };
    train = selectRows(all, d, split.train);
    test = selectRows(all, d, split.test);
  }
  return tabularSiteData({
    features: trainTable.features,
    classes,
    train,
    test,
    missing,
    rejected,
    ...(ctx.scaler ? { federation: ctx.scaler } : {}),
    ...(ctx.raw ? { raw: true } : {}),
  });
}
