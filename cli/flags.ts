// Flag schemas shared by the commands. A module of its own, so that a command importing one does
// not load another command's dependencies (the operator importing the local runner would load
// TF.js and the site workers).
import { z } from 'zod';
import { describeIssues } from '../core/job/issues.ts';
import { CliError } from './errors.ts';

/** A whole-number flag in [min, max]. */
export const intFlag = (min: number, max: number) =>
  z
    .string()
    // A sign is read, so that -5 is told it is below the minimum, not that it is no whole number.
    .regex(/^[-+]?\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`));

/** A NATS server URL, as nats.js takes it: a scheme it speaks, a host, and a port that can exist. */
export const natsUrlFlag = z
  .string()
  .regex(/^(nats|tls|ws|wss):\/\/\S+$/, 'must be a nats://, tls://, ws:// or wss:// URL')
  .refine((url) => {
    try {
      const { hostname, port } = new URL(url);
      return hostname !== '' && (port === '' || (Number(port) >= 1 && Number(port) <= 65_535));
    } catch {
      return false;
    }
  }, 'must name a host and, if any, a port from 1 to 65535');

/** CONSORT_CLI_USAGE naming each bad flag as it is typed (--join-timeout, not the schema's joinTimeout). */
export function invalidFlags(error: z.ZodError): CliError {
  const asTyped = (line: string) => `--${line.replace(/^[A-Za-z]+/, (name) => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`))}`;
  return new CliError('CONSORT_CLI_USAGE', 'invalid flags', { details: describeIssues(error).map(asTyped) });
}
