// Who may do what on NATS: one user per site and one for the coordinator of each job, each
// limited to the subjects of the protocol map (subjects.ts) and the JetStream API subjects that its
// Object Store calls need, and the Consort operator's own user, which runs any job. Each entry
// below was found by experiment against nats-server 2.15 with nats.js 3.4
// (test/integration/nats-permissions.test.ts and nats-jwt-auth.test.ts check both what is allowed
// and what is not); cli/nats/README.md explains each one. Pure: the static per-job configuration
// (cli/nats/config.ts) and the operator's minted JWTs (operator/nats/trust.ts) both render these.
import { assignmentSubject } from './assignment.ts';
import { buckets, inboxPrefix, subjects } from './subjects.ts';

/** The coordinator's user name (its inbox prefix): "_" cannot start a site name, so no site shares it. */
export const COORDINATOR_USER = '_coordinator';

/** The Consort operator's own user name (its inbox prefix): it coordinates any job over one connection. */
export const OPERATOR_USER = '_operator';

export interface UserPermissions {
  publish: string[];
  subscribe: string[];
  /** May answer requests it received (publish once to their reply subjects), and nothing else outside `publish`. */
  allowResponses: boolean;
}

const JS = '$JS.API';
const stream = (bucket: string) => `OBJ_${bucket}`;

/** What nats.js's Object Store needs to `open` a bucket (with its existence check) and `put` into it. */
function objectPut(bucket: string): string[] {
  const s = stream(bucket);
  return [
    `${JS}.STREAM.INFO.${s}`, // open(): the bucket exists
    `${JS}.STREAM.MSG.GET.${s}`, // put(): reads the current meta of the name (to purge a replaced object)
    `$O.${bucket}.C.*`, // the chunks, under a fresh nuid
    `$O.${bucket}.M.*`, // the meta, under the base64 of the name
  ];
}

/**
 * What nats.js's Object Store needs to `open` a bucket, and readObject (object-read.ts) to read it.
 * No consumer (nats.js's `get` makes one): the server does not check a push consumer's delivery
 * subject, so a consumer's creator has the bucket's chunks delivered onto any subject, past
 * publish permissions (another site's task subject, the round subject).
 */
function objectRead(bucket: string): string[] {
  const s = stream(bucket);
  return [
    `${JS}.STREAM.INFO.${s}`, // open()
    `${JS}.STREAM.MSG.GET.${s}`, // readObject(): the meta, by last message on the name's subject
    `${JS}.DIRECT.GET.${s}`, // readObject(): the chunks, in batches (the stream's messages, which MSG.GET reads too)
  ];
}

/** Everything on one bucket: create, read, write, purge, delete it and its consumers. */
function objectAdmin(bucket: string): string[] {
  const s = stream(bucket);
  return [
    `${JS}.STREAM.*.${s}`, // CREATE, UPDATE, INFO, DELETE, PURGE
    `${JS}.STREAM.MSG.*.${s}`, // GET, DELETE
    `${JS}.DIRECT.GET.${s}`,
    `${JS}.DIRECT.GET.${s}.>`,
    `${JS}.CONSUMER.*.${s}`, // CREATE (unnamed), NAMES, LIST
    `${JS}.CONSUMER.*.${s}.>`, // CREATE (named), INFO, DELETE, PAUSE
    `${JS}.CONSUMER.*.*.${s}.>`, // DURABLE.CREATE, MSG.NEXT
    `$JS.FC.${s}.>`,
    `$JS.ACK.${s}.>`,
    `$O.${bucket}.>`,
  ];
}

/**
 * A site: speaks only as itself, writes only its own updates, reads only the global models.
 * `inbox` is the prefix of its replies: inboxPrefix(site) on a server of this job alone,
 * jobInboxPrefix(job, site) on a server shared by many jobs.
 */
export function sitePermissions(job: string, site: string, inbox: string = inboxPrefix(site)): UserPermissions {
  const subj = subjects(job);
  const b = buckets(job);
  return {
    publish: unique([
      subj.hello(site),
      subj.update(site),
      subj.evaluation(site),
      `${JS}.INFO`, // jetstreamManager(), which Objm.open calls, checks that JetStream is there
      ...objectRead(b.models),
      ...objectPut(b.updates(site)),
    ]),
    subscribe: [subj.task(site), subj.round, `${inbox}.>`],
    // A site acknowledges the tasks it is sent (request/reply).
    allowResponses: true,
  };
}

/** The coordinator: every subject of the job and every bucket of the job, and replies to sites' requests. `inbox` as for sites. */
export function coordinatorPermissions(job: string, sites: readonly string[], inbox: string = inboxPrefix(COORDINATOR_USER)): UserPermissions {
  const subj = subjects(job);
  const b = buckets(job);
  const jobSubjects = [
    subj.hello('*'),
    subj.task('*'),
    subj.update('*'),
    subj.evaluation('*'),
    subj.round,
    subj.status,
    subj.summary,
    subj.absent,
    ...(['advertise', 'share', 'unmask'] as const).map((phase) => subj.secagg(phase, '*')),
  ];
  return {
    publish: unique([
      ...jobSubjects,
      `${JS}.INFO`,
      `${JS}.STREAM.NAMES`,
      `${JS}.STREAM.LIST`,
      ...[b.models, b.state, ...sites.map((s) => b.updates(s))].flatMap(objectAdmin),
    ]),
    subscribe: [...jobSubjects, `${inbox}.>`],
    allowResponses: true,
  };
}

/**
 * The Consort operator: everything of every job (all protocol subjects, the JetStream API, every
 * Object Store bucket), so that its in-process coordinators share one connection. Subject
 * wildcards match whole tokens only, and a bucket's name is one token: "every consort bucket"
 * cannot be said more narrowly than "every bucket", so the operator user is the admin of the
 * whole Consort account, which holds nothing but jobs.
 */
export function operatorPermissions(): UserPermissions {
  const everyJob = ['consort.>'];
  return {
    publish: [...everyJob, `${JS}.>`, '$JS.FC.>', '$JS.ACK.>', '$O.>'],
    subscribe: [...everyJob, `${inboxPrefix(OPERATOR_USER)}.>`],
    allowResponses: true,
  };
}

/** The inbox prefix a subscribe list allows replies on: P of its one `P.>` with P starting `_INBOX` (undefined unless exactly one). */
export function inboxOf(subscribe: readonly string[]): string | undefined {
  const inboxes = subscribe.filter((s) => s.startsWith('_INBOX') && s.endsWith('.>')).map((s) => s.slice(0, -2));
  return inboxes.length === 1 ? inboxes[0] : undefined;
}

function unique(list: string[]): string[] {
  return [...new Set(list)];
}

/** A site's agent (`consort operator --mode site`): reads its own assignments and answers them, nothing else. */
export function siteAgentPermissions(site: string): UserPermissions {
  return { publish: [], subscribe: [assignmentSubject(site), `${inboxPrefix(site)}.>`], allowResponses: true };
}
