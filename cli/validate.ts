// `consort validate JOB.yaml`: the job file checked as a run would check it before starting (the
// YAML, the schema, each bad field named), and the rules it sets that cannot act, without
// reading any site's data or starting anything.
import { jobWarnings } from '../core/job/warnings.ts';
import { reportFailure } from './failure.ts';
import { readJobFile } from './job-file.ts';

export function validateCommand(jobPath: string, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): number {
  try {
    const job = readJobFile(jobPath);
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
