// Connections that record the permission violations the server reports on them, and the small
// waits that permission tests need: a refusal is asynchronous (the server answers -ERR later), so
// a test waits for the violation, and proves the refusal by the same operation allowed elsewhere.
import { createHash } from 'node:crypto';
import { type Msg, type NatsConnection, PermissionViolationError, type Subscription } from '@nats-io/transport-node';
import { connectAs } from '../../cli/nats/connect.ts';

/** A connection and every permission violation the server has reported on it. */
export interface WatchedClient {
  nc: NatsConnection;
  violations: PermissionViolationError[];
}

/** connectAs (seed, seed file or .creds file), recording permission violations. */
export async function watchedClient(url: string, user: string, credentials: string): Promise<WatchedClient> {
  const nc = await connectAs(url, credentials, user);
  const violations: PermissionViolationError[] = [];
  (async () => {
    for await (const s of nc.status()) if (s.type === 'error' && s.error instanceof PermissionViolationError) violations.push(s.error);
  })();
  return { nc, violations };
}

/** Resolves once `c` has been told of a violation for `operation` on `subject`. */
export async function violation(c: WatchedClient, operation: 'publish' | 'subscription', subject: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!c.violations.some((v) => v.operation === operation && v.subject === subject)) {
    if (Date.now() > deadline) throw new Error(`no ${operation} violation for ${subject}; saw: ${c.violations.map((v) => v.message).join('; ')}`);
    await c.nc.flush();
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The messages a subscription receives, in order. */
export function collect(nc: NatsConnection, subject: string): { sub: Subscription; msgs: Msg[] } {
  const msgs: Msg[] = [];
  const sub = nc.subscribe(subject, {
    callback: (err, m) => {
      if (!err) msgs.push(m);
    },
  });
  return { sub, msgs };
}

/** Bytes by size and digest: quick to compare (deep equality walks megabytes element by element), whatever the array type. */
export const digestOf = (b: Uint8Array | null) => (b === null ? null : { size: b.length, sha256: createHash('sha256').update(b).digest('hex') });

/** Polls `cond` every 5 ms for up to `timeoutMs`. */
export async function soon(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
