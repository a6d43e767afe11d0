// The `consort` command's error catalogue. Each code maps to an exit status: 2 for bad input
// (the job file, a flag, the data), 1 for a failure of the run itself.

export const CliErrorCodes = {
  CONSORT_CLI_USAGE: { exit: 2, what: 'a flag or argument is invalid' },
  CONSORT_CLI_JOB_FILE: { exit: 2, what: 'the job file cannot be read or parsed' },
  CONSORT_CLI_JOB_SPEC: { exit: 2, what: 'the job does not match the FederatedJob schema' },
  CONSORT_CLI_DATA: { exit: 2, what: "the sites' data is unusable" },
  CONSORT_CLI_OUTPUT: { exit: 1, what: 'the results cannot be written' },
  CONSORT_CLI_RUN: { exit: 1, what: 'the run failed' },
  CONSORT_CLI_CREDENTIALS: { exit: 2, what: 'a NATS credentials (NKey seed) file cannot be read' },
  CONSORT_CLI_NATS: { exit: 1, what: 'the NATS server refused or dropped the connection' },
} as const;
export type CliErrorCode = keyof typeof CliErrorCodes;

export class CliError extends Error {
  override readonly name = 'CliError';
  readonly code: CliErrorCode;
  /** Extra lines (one per problem) shown under the message. */
  readonly details: string[];
  constructor(code: CliErrorCode, message: string, opts: { details?: string[]; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.details = opts.details ?? [];
  }
  get exitCode(): number {
    return CliErrorCodes[this.code].exit;
  }
}

/** Why a file could not be read, in words (node's own text for a rarer errno, or a parser's message). */
export function fileProblem(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EISDIR') return 'a folder, not a file';
  if (code === 'EACCES') return 'permission denied';
  return (err as Error).message;
}
