// Reads a FederatedJob manifest: the same YAML `kubectl apply` takes. A multi-document file is
// accepted when exactly one document is a FederatedJob (others, e.g. a Namespace, are ignored).
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';
import { FederatedJob, FederatedJobSpec, KIND, siteRuleIssues } from '../core/job/federated-job.ts';
import { describeIssues, fieldPath } from '../core/job/issues.ts';
import { CliError, fileProblem } from './errors.ts';

export function readJobFile(path: string): FederatedJob {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
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
  const values = list.map((d) => d.toJS() as unknown).filter((v) => v !== null && v !== undefined);
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
