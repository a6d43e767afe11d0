// The subject map of protocol v1 (documented in README.md beside this file). The version is part
// of every data subject, so a site of another version never reads or writes v1 traffic; the
// hello subject alone is version-free, so that such a site is told why it is refused.

export const PROTOCOL_VERSION = 1;

/** A job's key in subjects and bucket names: "<namespace>_<name>" ("_" never occurs in either). */
export function jobKey(job: { name: string; namespace?: string | undefined }): string {
  return `${job.namespace ?? 'default'}_${job.name}`;
}

export function subjects(job: string, v: number = PROTOCOL_VERSION) {
  const base = `consort.v${v}.${job}`;
  return {
    /** site → coordinator, request/reply: join or heartbeat (version-free). */
    hello: (site: string) => `consort.hello.${job}.${site}`,
    helloAll: `consort.hello.${job}.*`,
    /** coordinator → one site: fit and evaluate tasks. */
    task: (site: string) => `${base}.task.${site}`,
    /** site → coordinator, request/reply: a signed update envelope. */
    update: (site: string) => `${base}.update.${site}`,
    updateAll: `${base}.update.*`,
    /** site → coordinator, request/reply: a signed evaluation. */
    evaluation: (site: string) => `${base}.eval.${site}`,
    evaluationAll: `${base}.eval.*`,
    /** coordinator → everyone: round started/closed, job done. */
    round: `${base}.round`,
    /** anyone with the coordinator's rights → coordinator: counters and state. */
    status: `${base}.status`,
    /** coordinator → its watchers (the operator), once when the loop ends: its last status (a coordinator Pod is gone right after). */
    summary: `${base}.summary`,
    /** coordinator → the operator, request/reply, while the sites join: the sites whose own operator refused the job (site mode), not to be waited for. */
    absent: `${base}.absent`,
    /** Reserved for secure aggregation (key advertisement, share exchange, unmasking). */
    secagg: (phase: 'advertise' | 'share' | 'unmask', site: string) => `${base}.secagg.${phase}.${site}`,
  };
}

/**
 * Object Store buckets of a job: global models (sites read), one per site for its updates (only it
 * writes, only the coordinator reads), coordinator state. An update bucket's name has a second
 * "_" (a job key has one, a site name none), so no two (job, site) pairs share a bucket: with
 * "-up-" the update bucket of job "x"'s site "y-state" was job "x-up-y"'s state bucket, which
 * that site could write and job x's cleanup destroyed, on a server shared by jobs.
 */
export function buckets(job: string) {
  return {
    models: `consort-${job}-models`,
    updates: (site: string) => `consort-${job}_up_${site}`,
    state: `consort-${job}-state`,
  };
}

/**
 * Chunk size of the objects the coordinator and the sites write (models, updates, checkpoints),
 * capped at the server's max_payload (1 MiB unless configured). nats.js's default, 128 KiB, costs
 * one acknowledged JetStream publish per 128 KiB: a 100 MB object then reads at about 0.7x
 * (test/bench/nats-goodput.ts).
 */
export const OBJECT_CHUNK_BYTES = 1024 * 1024;

/**
 * Bytes of an object's chunks sent and not yet acknowledged while it is written (putObject): the
 * writer and the server work at the same time, where one chunk at a time (nats.js's put) leaves
 * each waiting for the other; a 100 MB put takes about half the time with 8 MiB in flight as with one chunk.
 */
export const OBJECT_PUT_WINDOW_BYTES = 8 * 1024 * 1024;

/** putObject's options for every object the coordinator and the sites write. */
export const OBJECT_PUT = { chunkBytes: OBJECT_CHUNK_BYTES, windowBytes: OBJECT_PUT_WINDOW_BYTES } as const;

/**
 * Bytes of an object's chunks asked for by one direct get (readObject): exactly what the server
 * sends at once, well under nats-server's 64 MiB slow-consumer limit.
 */
export const OBJECT_READ_BATCH_BYTES = 8 * 1024 * 1024;

export const objectNames = {
  global: (round: number) => `global/r${round}`,
  control: (round: number) => `control/r${round}`,
  update: (round: number, nonce: string) => `update/r${round}/${nonce}`,
  checkpoint: 'checkpoint',
  /** The coordinator's round records kept apart from its checkpoint, RECORDS_PER_SEGMENT a segment (operator/coordinator/checkpoint.ts). */
  records: (segment: number) => `records/${segment}`,
  /**
   * Buffered mode: the signed envelope of `site`'s late update for `round`, kept in the state
   * bucket from its acknowledgement until the round that folds it is checkpointed.
   */
  late: (round: number, site: string) => `late/r${round}/${site}`,
  /** A site's copy of the weights its model file carries (a pre-trained model), in its own bucket: round 1's global model. */
  initial: 'initial',
};

/** Inbox prefix of a user, so that replies to one site cannot be read by another. */
export function inboxPrefix(user: string): string {
  return `_INBOX_${user}`;
}

/**
 * Inbox prefix of a job's user on a server shared by many jobs, where one site name (or
 * "_coordinator") is a user of each job it takes part in: `_INBOX_<job>_<user>`, so that a site
 * or coordinator of one job cannot subscribe to the replies of another job's, JetStream's
 * included (which carry object chunks). Unambiguous: a job key has one "_", a site name none.
 */
export function jobInboxPrefix(job: string, user: string): string {
  return inboxPrefix(`${job}_${user}`);
}
