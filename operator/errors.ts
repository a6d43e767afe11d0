// The control plane's error catalogue (coordinator and, later, controller). Stable codes.

export const OperatorErrorCodes = {
  CONSORT_C_QUORUM: 'fewer updates than sampling.minSites arrived in a round',
  CONSORT_C_EVALUATION: 'no site could evaluate the global model',
  CONSORT_C_NATS_TRUST: 'a NATS account signing key, user name or user seed is invalid',
  CONSORT_C_PAUSED: 'the job was suspended after a round; its checkpoint is saved',
  CONSORT_C_ABORTED: 'the run was stopped (job deleted, or the operator is shutting down)',
} as const;
export type OperatorErrorCode = keyof typeof OperatorErrorCodes;

export class OperatorError extends Error {
  override readonly name = 'OperatorError';
  readonly code: OperatorErrorCode;
  constructor(code: OperatorErrorCode, message: string, opts: { cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
  }
}
