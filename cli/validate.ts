// `consort validate JOB.yaml`: the job file checked as a run would check it before starting (the
// YAML, the schema, each bad field named, a model file it names), and the rules it sets that
// cannot act, without reading any site's data or starting anything.
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { ModelSpec } from '../core/job/federated-job.ts';
import { jobWarnings } from '../core/job/warnings.ts';
import { CliError, fileProblem } from './errors.ts';
import { reportFailure } from './failure.ts';
import { readJobFile } from './job-file.ts';
import { layersTopology } from '../worker/model.ts';

/** A Layers model file the job names: there, JSON, and a model (its topology); read as a run reads it, relative to the job file. */
function checkModelFile(model: ModelSpec, jobPath: string): void {
  if (model.type !== 'layers') return;
  const path = resolve(dirname(resolve(jobPath)), model.path);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new CliError('CONSORT_CLI_JOB_SPEC', `spec.model.path: ${model.path}: ${fileProblem(err)} (read from ${path})`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new CliError('CONSORT_CLI_JOB_SPEC', `spec.model.path: ${model.path}: not JSON (${(err as Error).message})`, { cause: err });
  }
  // What a run accepts: a TF.js model.json, or a bare Keras topology (worker/model.ts).
  if (!layersTopology(json)) {
    throw new CliError(
      'CONSORT_CLI_JOB_SPEC',
      `spec.model.path: ${model.path}: not a TF.js Layers model (no modelTopology: what model.save() or the Keras converter writes)`,
    );
  }
}

export function validateCommand(jobPath: string, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): number {
  try {
    const job = readJobFile(jobPath);
    checkModelFile(job.spec.model, jobPath);
    for (const w of jobWarnings(job.spec)) err.write(`warning: ${w}\n`);
    const s = job.spec;
    out.write(
      `${jobPath}: valid: job ${job.metadata.name}, ${s.sites.length} site${s.sites.length === 1 ? '' : 's'}, model ${s.model.type}, ${s.strategy.name}, ${s.rounds} round${s.rounds === 1 ? '' : 's'}, seed ${s.seed}\n`,
    );
    return 0;
  } catch (e) {
    return reportFailure(e, err);
  }
}
