// putObject's and readObject's calls (object-put.ts, object-read.ts) on a NATS connection, for
// one bucket: the coordinator's and each site's.
import { type JetStreamManager, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { createInbox, headers, type NatsConnection, nuid } from '@nats-io/transport-node';
import type { ObjectPutWire } from './object-put.ts';
import { directGetBatch, type ObjectReadWire } from './object-read.ts';

/** A read during which nothing arrives for this long is abandoned. */
const READ_IDLE_MS = 5000;

export function objectWire(nc: NatsConnection, bucket: string): ObjectPutWire & ObjectReadWire {
  const js = jetstream(nc);
  const stream = `OBJ_${bucket}`;
  let jsm: Promise<JetStreamManager> | undefined;
  const manager = () => (jsm ??= jetstreamManager(nc, { checkAPI: false }));
  return {
    publish: (subject, data) => js.publish(subject, data),
    publishRollup: (subject, data) => {
      const h = headers();
      h.set('Nats-Rollup', 'sub');
      return js.publish(subject, data, { headers: h });
    },
    lastMessage: async (subject) => (await (await manager()).streams.getMessage(stream, { last_by_subj: subject }))?.data ?? null,
    purge: async (subject) => (await manager()).streams.purge(stream, { filter: subject }),
    nuid: () => nuid.next(),
    maxPayload: () => nc.info?.max_payload,
    // Replies under the connection's own inbox prefix: its user may subscribe to nothing else.
    directBatch: (subject, seq, o, onMessage) =>
      directGetBatch(
        nc,
        createInbox((nc as NatsConnection & { options?: { inboxPrefix?: string } }).options?.inboxPrefix),
        stream,
        subject,
        seq,
        { ...o, idleMs: READ_IDLE_MS },
        onMessage,
      ),
  };
}
