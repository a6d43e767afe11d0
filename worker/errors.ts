// The worker's error catalogue: every failure a site can report has a stable code.
// Codes are never reused or renumbered; add new ones at the end.

export const WorkerErrorCodes = {
  CONSORT_W_DATA_FILE: 'data file or folder not found or unreadable',
  CONSORT_W_DATA_ROW: 'a data row is malformed',
  CONSORT_W_DATA_COLUMN: 'a required column is missing',
  CONSORT_W_DATA_EMPTY: 'the site has no usable examples',
  CONSORT_W_DATA_LABEL: "a label is not one of the job's classes",
  CONSORT_W_DATA_SCHEMA: "the site's data does not match the job's data schema",
  CONSORT_W_MODEL: 'the model cannot be built for this data',
  CONSORT_W_BACKEND: 'no TF.js backend could be initialised',
  CONSORT_W_TRAIN: 'local training failed',
  CONSORT_W_REFUSED: 'the coordinator refused the site: it runs another job, protocol or model',
  CONSORT_W_JOB_FAILED: 'the coordinator ended the job in a failure (a quorum not met, say)',
} as const;
export type WorkerErrorCode = keyof typeof WorkerErrorCodes;

export class WorkerError extends Error {
  override readonly name = 'WorkerError';
  readonly code: WorkerErrorCode;
  /** The file (and 1-based line) the problem is in, when there is one. */
  readonly file: string | undefined;
  readonly line: number | undefined;

  constructor(code: WorkerErrorCode, message: string, opts: { file?: string; line?: number; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.file = opts.file;
    this.line = opts.line;
  }

  /** Plain form, for crossing a worker_threads boundary. */
  toJSON(): { code: WorkerErrorCode; message: string; file?: string; line?: number } {
    return { code: this.code, message: this.message, ...(this.file ? { file: this.file } : {}), ...(this.line ? { line: this.line } : {}) };
  }
}
