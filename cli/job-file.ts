// Reads a FederatedJob manifest: the same YAML `kubectl apply` takes. A multi-document file is
// accepted when exactly one document is a FederatedJob (others, e.g. a Namespace, are ignored).
import { readFileSync, statSync } from 'node:fs';
import { kindOf } from '../worker/data/files.ts';
import { parseAllDocuments } from 'yaml';
import { FederatedJob, FederatedJobSpec, KIND, siteRuleIssues } from '../core/job/federated-job.ts';
import { describeIssues, fieldPath } from '../core/job/issues.ts';
import { CliError, fileProblem } from './errors.ts';

/**
 * The largest job file read: a FederatedJob must fit etcd's 1.5 MiB as a Kubernetes object. A
 * 50 MB file took 14 s and 1.2 GB to refuse, /dev/zero ran the machine out of memory, and a FIFO
 * blocked for ever: the path is checked before it is read.
 */
export const MAX_JOB_FILE_BYTES = 4 * 1024 * 1024;

export function readJobFile(path: string): FederatedJob {
  let text: string;
  try {
    const info = statSync(path);
    if (info.isFile() && info.size > MAX_JOB_FILE_BYTES) {
      throw new CliError(
        'CONSORT_CLI_JOB_FILE',
        `${path}: ${info.size} bytes, more than a job file may have (${MAX_JOB_FILE_BYTES}; a FederatedJob must fit the 1.5 MiB of a Kubernetes object)`,
      );
    }
    if (!info.isFile() && !info.isDirectory()) throw new CliError('CONSORT_CLI_JOB_FILE', `${path}: is not a regular file (${kindOf(info)})`);
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (err instanceof CliError) throw err;
    throw new CliError('CONSORT_CLI_JOB_FILE', `${path}: ${fileProblem(err)}`, { cause: err });
  }
  return parseJob(text, path);
}

export function parseJob(text: string, source: string): FederatedJob {
  const docs = parseAllDocuments(text, { prettyErrors: true });
  const list = Array.isArray(docs) ? docs : [docs];
  const bad = list.find((d) => d.errors.length > 0);
  if (bad) {
    const e = bad.errors[0]!;
    const line = e.linePos?.[0]?.line;
    throw new CliError('CONSORT_CLI_JOB_FILE', `${source}${line ? ` line ${line}` : ''}: not valid YAML: ${e.message.split('\n')[0]!.replace(/:\s*$/, '')}`);
  }
  let values: unknown[];
  try {
    values = list.map((d) => d.toJS() as unknown).filter((v) => v !== null && v !== undefined);
  } catch (err) {
    // The yaml package refuses an alias bomb ("billion laughs") as it expands it.
    throw new CliError('CONSORT_CLI_JOB_FILE', `${source}: not valid YAML: ${(err as Error).message}`, { cause: err });
  }
  const jobs = values.filter((v) => (v as { kind?: unknown }).kind === KIND);
  if (jobs.length !== 1) {
    const found = values.length === 1 ? values : jobs;
    if (found.length === 1) return validate(found[0], source); // one document: validate it, whatever its kind
    throw new CliError('CONSORT_CLI_JOB_FILE', `${source}: expected one ${KIND} document, found ${jobs.length}`);
  }
  return validate(jobs[0], source);
}

function validate(value: unknown, source: string): FederatedJob {
  const parsed = FederatedJob.safeParse(value);
  if (!parsed.success) {
    const details = describeIssues(parsed.error);
    // The rules between sites, which zod skipped for the field that failed: every problem at once.
    for (const issue of siteRuleIssues((value as { spec?: { sites?: unknown } } | null)?.spec?.sites)) {
      const line = `${fieldPath(['spec', ...issue.path])}: ${issue.message}`;
      if (!details.includes(line)) details.push(line);
    }
    throw new CliError('CONSORT_CLI_JOB_SPEC', `${source}: not a valid ${KIND} (${details.length} problem${details.length > 1 ? 's' : ''})`, { details });
  }
  return parsed.data;
}

/** The job with `--seed` / `--rounds` from the command line in place of spec.seed / spec.rounds (validated again). */
export function withOverrides(job: FederatedJob, flags: { seed?: number | undefined; rounds?: number | undefined }): FederatedJob {
  if (flags.seed === undefined && flags.rounds === undefined) return job;
  const spec = FederatedJobSpec.safeParse({
    ...job.spec,
    ...(flags.seed !== undefined ? { seed: flags.seed } : {}),
    ...(flags.rounds !== undefined ? { rounds: flags.rounds } : {}),
  });
  if (!spec.success) throw new CliError('CONSORT_CLI_USAGE', 'the flags make the job invalid', { details: describeIssues(spec.error, ['spec']) });
  return { ...job, spec: spec.data };
}
