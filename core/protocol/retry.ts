// Patience on the wire, for the shells that carry protocol v1 (operator/coordinator/,
// worker/nats/): a call that fails because the connection was interrupted (a restarting server
// takes the requests in flight with it) is tried again with backoff until a deadline; an object
// read that stops making progress is abandoned (StalledReadError) rather than awaited for ever (an
// object whose metadata names chunks that were never written streams nothing, and never ends). No
// NATS client here: the shells pass their calls in.
import { objectStoreDigest } from './digest.ts';

/** An object read during which no chunk arrived for too long. */
export class StalledReadError extends Error {
  constructor(what: string, idleMs: number) {
    super(`${what}: no data for ${idleMs} ms`);
    this.name = 'StalledReadError';
  }
}

/** nats.js's errors of the connection, not of the data: a request that a restart of the server, or the client's reconnect, cut short. */
const CONNECTION_ERRORS = new Set(['ConnectionError', 'ClosedConnectionError', 'TimeoutError', 'NoResponders', 'NoRespondersError', 'StalledReadError']);

/**
 * Whether `err` (or the error it wraps) says the connection failed the request rather than the
 * data being wrong: worth trying again. It may come before the client's own status event says the
 * server went away, so a retry cannot wait for that event alone.
 */
export function connectionFailed(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 4; e = e.cause, depth++) if (CONNECTION_ERRORS.has(e.name)) return true;
  return false;
}

export interface RetryOptions {
  /** Epoch ms: no try starts after this; the last error is thrown. */
  until: number;
  /** Whether a failure is worth another try (default: every failure); `startedAt` is when the failed try began. */
  retryable?: (err: unknown, startedAt: number) => boolean;
  signal?: AbortSignal;
}

/** `attempt()` until it resolves, waiting 250 ms, doubling to 2 s, between failures. */
export async function retrying<T>(attempt: () => Promise<T>, o: RetryOptions): Promise<T> {
  let wait = 250;
  for (;;) {
    const startedAt = Date.now();
    try {
      return await attempt();
    } catch (err) {
      if (o.signal?.aborted || Date.now() + wait > o.until || (o.retryable && !o.retryable(err, startedAt))) throw err;
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(wait * 2, 2000);
    }
  }
}

/** What an Object Store keeps of an object (nats.js's ObjectInfo, structurally). */
export interface StoredObjectInfo {
  bucket: string;
  name: string;
  size: number;
  digest: string;
}

/**
 * Why the stored object is not the one a reference names (undefined when it is): another bucket
 * or name (the store follows links), another size, or another digest. A read of an object that
 * passes is checked by the store against that digest, so the bytes read are the referenced ones.
 */
export function storedObjectMismatch(info: StoredObjectInfo, ref: { bucket: string; name: string; sha256: string; size: number }): string | undefined {
  const digest = objectStoreDigest(ref.sha256);
  if (info.bucket === ref.bucket && info.name === ref.name && info.size === ref.size && info.digest === digest) return undefined;
  return `the stored object (${info.bucket}/${info.name}, ${info.size} bytes, ${info.digest}) is not the one referenced (${ref.bucket}/${ref.name}, ${ref.size} bytes, ${digest})`;
}
