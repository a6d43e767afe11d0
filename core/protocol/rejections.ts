// Why the coordinator refuses a message: one catalogue, stable codes (never renamed, never
// reused), each with a short description. Codes are metric labels and travel in Acks and
// Welcomes, so sites and dashboards can rely on them.

export const REJECTIONS = {
  CONSORT_R_MALFORMED: 'not UTF-8 JSON, or does not fit the message schema',
  CONSORT_R_UNKNOWN_PROTOCOL: 'speaks a protocol version this coordinator does not',
  CONSORT_R_WRONG_JOB: 'names another job',
  CONSORT_R_UNKNOWN_SITE: 'comes from a site that is not part of the job',
  CONSORT_R_SUBJECT_MISMATCH: "the envelope's site differs from the site of the subject it was published on",
  CONSORT_R_MISSING_SIGNATURE: 'carries no signature',
  CONSORT_R_BAD_SIGNATURE: "signature is malformed or not made by the site's key",
  CONSORT_R_REPLAYED_NONCE: 'reuses a nonce the site already used',
  CONSORT_R_STALE_ROUND: 'belongs to a round that is closed (or, buffered, more than maxStaleness rounds old)',
  CONSORT_R_FUTURE_ROUND: 'belongs to a round that has not begun',
  CONSORT_R_NOT_READY: 'the coordinator has no round open yet (send it again later)',
  CONSORT_R_NOT_SAMPLED: 'the site was not asked for this round',
  CONSORT_R_DUPLICATE: 'another update (another nonce) was already taken for this round and site',
  CONSORT_R_TOO_MANY_ATTEMPTS: 'the site sent more envelopes for this round than the coordinator keeps track of',
  CONSORT_R_WRONG_CODEC: 'encoded with a codec other than the one the job negotiated',
  CONSORT_R_WRONG_OBJECT: "names an object outside the site's own updates bucket or under another name than the protocol's",
  CONSORT_R_OBJECT_MISSING: 'the update object named by the envelope cannot be fetched',
  CONSORT_R_OVERSIZED: 'larger than the coordinator accepts',
  CONSORT_R_HASH_MISMATCH: "the object's size or SHA-256 differs from the envelope's",
  CONSORT_R_BAD_ENCODING: 'the object is not a valid encoded update (safetensors or codec format)',
  CONSORT_R_WRONG_SHAPE: "tensors' names or shapes do not match the model",
  CONSORT_R_NON_FINITE: 'contains NaN or Infinity',
  CONSORT_R_OUT_OF_RANGE: 'contains values beyond the magnitude the coordinator accepts',
  CONSORT_R_SITE_TWICE: 'another process of the same site (started before it) is still running: a site runs once',
  CONSORT_R_HELLO_RATE: 'the site says hello with more bytes a second than the coordinator reads',
} as const;

export type RejectionCode = keyof typeof REJECTIONS;

export const REJECTION_CODES = Object.keys(REJECTIONS) as RejectionCode[];

/** Codes only a hello can get (the coordinator's, about the site's process): no update envelope reaches them. */
export const HELLO_ONLY_REJECTIONS: ReadonlySet<RejectionCode> = new Set(['CONSORT_R_SITE_TWICE', 'CONSORT_R_HELLO_RATE']);

/**
 * Refusals of an update that leave its fate open: `NOT_READY` (the coordinator has no round open,
 * say while it restarts: it may have counted this very update before a checkpoint, or take it when
 * its round is open again) and `DUPLICATE` (another envelope of the same site and round was
 * counted: the site's own, from the same state). Every other code says the update counts for
 * nothing.
 */
const UPDATE_FATE_OPEN: ReadonlySet<RejectionCode> = new Set(['CONSORT_R_NOT_READY', 'CONSORT_R_DUPLICATE']);

/**
 * Whether an update refused with `code` is known never to be counted, so that the site may take
 * back what it did to its own state for it (error-feedback residual, SCAFFOLD's c_i). A code this
 * catalogue does not know (a newer coordinator's) tells nothing.
 */
export function refusedForGood(code: string | undefined): boolean {
  return code !== undefined && isRejectionCode(code) && !UPDATE_FATE_OPEN.has(code);
}

/** A refused message: a catalogue code and a reason that names what was wrong. */
export interface Rejection {
  code: RejectionCode;
  reason: string;
}

export function isRejectionCode(code: string): code is RejectionCode {
  return Object.hasOwn(REJECTIONS, code);
}

export function rejection(code: RejectionCode, reason: string): Rejection {
  return { code, reason };
}

/** A rejection thrown rather than returned (for callers that prefer exceptions). */
export class RejectionError extends Error {
  readonly code: RejectionCode;
  readonly reason: string;

  constructor(code: RejectionCode, reason: string, options?: { cause?: unknown }) {
    super(`${reason} [${code}]`, options);
    this.name = 'RejectionError';
    this.code = code;
    this.reason = reason;
  }
}

/** Remembers which (site, code) pairs were already logged, so a process logs each once. */
export class RejectionLog {
  private readonly seen = new Set<string>();
  private readonly capacity: number;

  constructor(capacity = 10_000) {
    this.capacity = capacity;
  }

  /** True the first time this (site, code) is seen (and remembers it); false afterwards, or once full. */
  shouldLog(site: string, code: RejectionCode): boolean {
    const key = `${site}\u0000${code}`;
    if (this.seen.has(key) || this.seen.size >= this.capacity) return false;
    this.seen.add(key);
    return true;
  }
}
