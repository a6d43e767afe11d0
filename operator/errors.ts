// The control plane's error catalogue (coordinator, controller and the HTTP API). Stable codes:
// never reused, never renamed.

export const OperatorErrorCodes = {
  CONSORT_C_SITE_FAILED: 'a site reported that it could not carry out its task (its training or evaluation failed)',
  CONSORT_C_QUORUM: 'fewer updates than sampling.minSites arrived in a round',
  CONSORT_C_EVALUATION: 'no site could evaluate the global model',
  CONSORT_C_AGGREGATE: "a round's updates could not be aggregated (a partial step from stored updates that cannot be undone)",
  CONSORT_C_NATS_TRUST: 'a NATS account signing key, user name or user seed is invalid',
  CONSORT_C_PAUSED: 'the job was suspended after a round; its checkpoint is saved',
  CONSORT_C_ABORTED: 'the run was stopped (job deleted, or the operator is shutting down)',
  CONSORT_C_ANOTHER_COORDINATOR: 'another coordinator process of the job is running on this NATS server (a job has one; the later one stops)',
  CONSORT_C_CHECKPOINT:
    "the job's checkpoint cannot be resumed: written by the job with other terms (seed, model, training, strategy, compression), or unreadable (damaged, another version)",
  CONSORT_C_INITIAL_WEIGHTS: "the sites' model file carries weights (a pre-trained model), but no site's copy of them could be read",
  CONSORT_C_DEADLINE: "a site's answer (update or evaluation) had not arrived, or was refused, when the round's deadline passed",
  CONSORT_C_UNREACHABLE: "a site's task could not be delivered (no process of the site answered on its task subject, or its hello was refused)",
  CONSORT_C_TASK_REFUSED: 'a site refused its task on receipt (one it could not read: another protocol version, another job or site)',
  CONSORT_API_BAD_REQUEST: 'a path or query parameter is invalid (the answer names it in `field`)',
  CONSORT_API_UNAUTHENTICATED: 'no bearer token, or one the API server does not accept (TokenReview)',
  CONSORT_API_FORBIDDEN: 'the user may not get this FederatedJob (or /metrics): SubjectAccessReview said no',
  CONSORT_API_NOT_FOUND: 'no such FederatedJob (or no such path)',
  CONSORT_API_METHOD_NOT_ALLOWED: 'the API is read-only: GET and HEAD only',
  CONSORT_API_NOT_READY: 'the job has not produced it yet (the final model or the report of a job that has not succeeded)',
  CONSORT_API_UNAVAILABLE: 'the API server or NATS could not be asked (authentication, authorisation or a bucket read failed)',
  CONSORT_API_INTERNAL: 'an unexpected failure inside the operator',
} as const;
export type OperatorErrorCode = keyof typeof OperatorErrorCodes;
export type ApiErrorCode = Extract<OperatorErrorCode, `CONSORT_API_${string}`>;

/** The HTTP status of each API error. */
export const API_ERROR_STATUS: Record<ApiErrorCode, number> = {
  CONSORT_API_BAD_REQUEST: 400,
  CONSORT_API_UNAUTHENTICATED: 401,
  CONSORT_API_FORBIDDEN: 403,
  CONSORT_API_NOT_FOUND: 404,
  CONSORT_API_METHOD_NOT_ALLOWED: 405,
  CONSORT_API_NOT_READY: 409,
  CONSORT_API_UNAVAILABLE: 503,
  CONSORT_API_INTERNAL: 500,
};

export class OperatorError extends Error {
  override readonly name = 'OperatorError';
  readonly code: OperatorErrorCode;
  /** API errors: the request parameter at fault (e.g. `namespace`). */
  readonly field: string | undefined;
  constructor(code: OperatorErrorCode, message: string, opts: { cause?: unknown; field?: string } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.field = opts.field;
  }
}

export const isApiErrorCode = (code: string): code is ApiErrorCode => code in API_ERROR_STATUS;
