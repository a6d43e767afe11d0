// Patience on the wire, for the shells that carry protocol v1 (operator/coordinator/,
// worker/nats/): a call that fails because the connection was interrupted (a restarting server
// takes the requests in flight with it) is tried again with backoff until a deadline, and an
// object read that stops making progress is abandoned rather than awaited for ever (an object
// whose metadata names chunks that were never written streams nothing, and never ends). No NATS
// client here: the shells pass their calls in.
import { objectStoreDigest } from './digest.ts';

/** An object read during which no chunk arrived for too long. */
export class StalledReadError extends Error {
  constructor(what: string, idleMs: number) {
    super(`${what}: no data for ${idleMs} ms`);
    this.name = 'StalledReadError';
  }
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

/** An object being read (nats.js's ObjectResult, structurally): its chunks, and its outcome (a digest mismatch...). */
export interface ObjectStream {
  data: ReadableStream<Uint8Array>;
  error: Promise<Error | null>;
}

/**
 * Reads an object to its end; StalledReadError (and the read cancelled) when no chunk arrives for
 * `idleMs`, RangeError past `maxBytes` (what the sender declared: no more is held in memory).
 * With `maxBytes`, the chunks are copied as they come into one array of that size, or into `into`
 * (at least that large: a buffer used again spares the page faults of a fresh one, which cost
 * more than the copy), each chunk dropped at once, and the bytes read are returned as a view of
 * its beginning (8-byte aligned when the array is).
 */
export async function readObjectStream(object: ObjectStream, o: { idleMs: number; maxBytes?: number; into?: Uint8Array; what: string }): Promise<Uint8Array> {
  const { idleMs, what } = o;
  // Settled whether or not the read gets that far: a rejection nobody awaits would end the process.
  const outcome = object.error.then(
    (err) => err,
    (err: unknown) => err,
  );
  const reader = object.data.getReader();
  if (o.into && (o.maxBytes === undefined || o.into.length < o.maxBytes)) throw new RangeError(`${what}: a buffer of ${o.into.length} bytes for ${o.maxBytes}`);
  const into = o.maxBytes !== undefined ? (o.into ?? new Uint8Array(o.maxBytes)) : undefined;
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new StalledReadError(what, idleMs)), idleMs);
    });
    try {
      const { done, value } = await Promise.race([reader.read(), stalled]);
      if (done) break;
      if (o.maxBytes !== undefined && size + value.length > o.maxBytes) throw new RangeError(`${what}: more than the ${o.maxBytes} bytes declared`);
      if (into) into.set(value, size);
      else chunks.push(value);
      size += value.length;
    } catch (err) {
      reader.cancel().catch(() => {});
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }
  const err = await outcome;
  if (err) throw err;
  if (into) return into.subarray(0, size);
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
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
