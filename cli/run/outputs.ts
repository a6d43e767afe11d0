// Writes a finished run's results. Everything goes into a fresh sibling folder first and is
// renamed into place at the end, so a failed or interrupted run never leaves a half-written
// folder that looks like a result.
import { lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { REPORT_FORMAT } from '../../core/report/run-report.ts';
import { encodeSafetensors } from '../../core/tensor/safetensors.ts';
import { renderReportHtml } from '../../core/report/html.ts';
import { renderModelCard } from '../../core/report/model-card.ts';
import { CliError } from '../errors.ts';
import type { LocalRunResult } from './local-run.ts';

export const OUTPUT_FILES = {
  reportJson: 'report.json',
  reportHtml: 'report.html',
  modelCard: 'MODEL_CARD.md',
  safetensors: 'model.safetensors',
  tfjsDir: 'tfjs',
} as const;

/** Whether `dir` holds a report.json of a Consort run (an earlier result, which a new one replaces). */
function holdsEarlierResult(dir: string): boolean {
  try {
    const report = JSON.parse(readFileSync(join(dir, OUTPUT_FILES.reportJson), 'utf8')) as { format?: unknown };
    return report.format === REPORT_FORMAT;
  } catch {
    return false;
  }
}

/**
 * Refuses (CONSORT_CLI_USAGE) an output folder that writing the results would destroy: results
 * replace the whole folder, so it must be new, empty, or an earlier Consort result, and neither
 * the current folder nor one that holds it. Called before the run starts (a mistaken --out is
 * told at once, not after the training) and again just before the results replace the folder.
 */
export function checkOutputDir(outDir: string): void {
  const dir = resolve(outDir);
  const here = relative(dir, process.cwd());
  if (here === '' || (here !== '..' && !here.startsWith(`..${sep}`) && !isAbsolute(here)))
    throw new CliError(
      'CONSORT_CLI_USAGE',
      `--out ${outDir}: the results replace the whole folder, and this one holds the current folder; choose a new folder`,
    );
  let isDir: boolean;
  try {
    isDir = lstatSync(dir).isDirectory();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new CliError('CONSORT_CLI_USAGE', `--out ${outDir}: ${(err as Error).message}`);
  }
  if (!isDir) throw new CliError('CONSORT_CLI_USAGE', `--out ${outDir}: is a file, not a folder`);
  const entries = readdirSync(dir);
  if (entries.length === 0) return;
  // An earlier result, and nothing else: what a new one may replace.
  const ours = new Set<string>(Object.values(OUTPUT_FILES));
  const others = entries.filter((e) => !ours.has(e));
  if (others.length === 0 && holdsEarlierResult(dir)) return;
  const named = others.length > 0 ? others : entries;
  const shown = named.slice(0, 5).join(', ') + (named.length > 5 ? `, … (${named.length} entries)` : '');
  throw new CliError(
    'CONSORT_CLI_USAGE',
    `--out ${outDir}: the folder exists and is not only an earlier Consort result (it holds ${shown}); the results replace the whole folder, so choose a new or empty one`,
  );
}

export async function writeOutputs(outDir: string, run: LocalRunResult): Promise<string[]> {
  checkOutputDir(outDir);
  const staging = join(dirname(outDir), `.${basename(outDir)}.partial-${process.pid}`);
  try {
    rmSync(staging, { recursive: true, force: true });
    mkdirSync(join(staging, OUTPUT_FILES.tfjsDir), { recursive: true });
    const { report } = run;
    const files: string[] = [];
    const put = (name: string, data: string | Uint8Array) => {
      writeFileSync(join(staging, name), data);
      files.push(name);
    };
    put(OUTPUT_FILES.reportJson, `${JSON.stringify(report, null, 2)}\n`);
    put(
      OUTPUT_FILES.safetensors,
      encodeSafetensors(run.layout, run.weights, { format: 'pt', job: report.job, seed: String(report.seed), sha256: report.final.modelSha256 }),
    );
    const weightsName = 'weights.bin';
    const manifest = [{ paths: [weightsName], weights: run.tfjsModel.weightSpecs }];
    put(
      join(OUTPUT_FILES.tfjsDir, 'model.json'),
      `${JSON.stringify({ format: 'layers-model', generatedBy: 'consort', convertedBy: null, modelTopology: run.tfjsModel.modelTopology, weightsManifest: manifest }, null, 1)}\n`,
    );
    put(join(OUTPUT_FILES.tfjsDir, weightsName), new Uint8Array(run.tfjsModel.weightData));
    put(OUTPUT_FILES.reportHtml, await renderReportHtml(report));
    put(
      OUTPUT_FILES.modelCard,
      renderModelCard(report, {
        weightsFile: OUTPUT_FILES.safetensors,
        modelFiles: [`${OUTPUT_FILES.tfjsDir}/model.json`, `${OUTPUT_FILES.tfjsDir}/${weightsName}`],
      }),
    );
    mkdirSync(dirname(outDir), { recursive: true });
    rmSync(outDir, { recursive: true, force: true });
    renameSync(staging, outDir);
    return files.map((f) => join(outDir, f));
  } catch (err) {
    rmSync(staging, { recursive: true, force: true });
    throw new CliError('CONSORT_CLI_OUTPUT', `cannot write the results to ${outDir}: ${(err as Error).message}`, { cause: err });
  }
}
