// One place that turns any failure into a message on stderr and an exit status.
import { basename } from 'node:path';
import { OperatorError } from '../operator/errors.ts';
import { WorkerError } from '../worker/errors.ts';
import { CliError } from './errors.ts';
import { printable } from '../core/printable.ts';

export function reportFailure(err: unknown, stream: NodeJS.WritableStream = process.stderr): number {
  if (err instanceof CliError) {
    stream.write(`consort: ${printable(err.message)} [${err.code}]\n`);
    for (const d of err.details) stream.write(`  ${printable(d)}\n`);
    return err.exitCode;
  }
  if (err instanceof WorkerError) {
    // The full path, unless the message already names the file (as the job wrote it: its name at least).
    const where =
      err.file && !err.message.includes(err.file) && !err.message.includes(basename(err.file)) ? ` (${err.file}${err.line ? ` line ${err.line}` : ''})` : '';
    stream.write(`consort: ${printable(err.message)}${where} [${err.code}]\n`);
    // Data, schema and model problems are the user's input; a training failure is the run's.
    return err.code === 'CONSORT_W_TRAIN' || err.code === 'CONSORT_W_BACKEND' || err.code === 'CONSORT_W_JOB_FAILED' ? 1 : 2;
  }
  if (err instanceof OperatorError) {
    stream.write(`consort: ${printable(err.message)} [${err.code}]\n`);
    return 1;
  }
  stream.write(`consort: unexpected failure: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return 1;
}
