// Who may do what on a job's NATS account: one user per site and one for the coordinator, each
// limited to the subjects of the protocol map (core/protocol/subjects.ts) and the JetStream API
// subjects that its Object Store calls need. Each entry below was found by experiment against
// nats-server 2.15 with nats.js 3.4 (test/integration/nats-permissions.test.ts checks both what
// is allowed and what is not); cli/nats/README.md explains each one.
import { buckets, inboxPrefix, subjects } from '../../core/protocol/subjects.ts';

/** The coordinator's user name (its inbox prefix): "_" cannot start a site name, so no site shares it. */
export const COORDINATOR_USER = '_coordinator';

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

/** What nats.js's Object Store needs to `open` a bucket and `get` from it. */
function objectGet(bucket: string): string[] {
  const s = stream(bucket);
  return [
    `${JS}.STREAM.INFO.${s}`, // open()
    `${JS}.STREAM.MSG.GET.${s}`, // get(): the meta, by last message on the name's subject
    `${JS}.CONSUMER.CREATE.${s}.*.$O.${bucket}.C.*`, // get(): an ordered push consumer on the object's chunks
    `$JS.FC.${s}.>`, // that consumer's flow-control replies
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

/** A site: speaks only as itself, writes only its own updates, reads only the global models. */
export function sitePermissions(job: string, site: string): UserPermissions {
  const subj = subjects(job);
  const b = buckets(job);
  return {
    publish: unique([
      subj.hello(site),
      subj.update(site),
      subj.evaluation(site),
      `${JS}.INFO`, // jetstreamManager(), which Objm.open calls, checks that JetStream is there
      ...objectGet(b.models),
      ...objectPut(b.updates(site)),
    ]),
    subscribe: [subj.task(site), subj.round, `${inboxPrefix(site)}.>`],
    // A site acknowledges the tasks it is sent (request/reply).
    allowResponses: true,
  };
}

/** The coordinator: every subject of the job and every bucket of the job, and replies to sites' requests. */
export function coordinatorPermissions(job: string, sites: readonly string[]): UserPermissions {
  const subj = subjects(job);
  const b = buckets(job);
  const jobSubjects = [
    subj.hello('*'),
    subj.task('*'),
    subj.update('*'),
    subj.evaluation('*'),
    subj.round,
    subj.status,
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
    subscribe: [...jobSubjects, `${inboxPrefix(COORDINATOR_USER)}.>`],
    allowResponses: true,
  };
}

function unique(list: string[]): string[] {
  return [...new Set(list)];
}
