// Reading an object of a JetStream Object Store (the format putObject and nats.js write) without a
// consumer: its metadata (the last message on its meta subject), then its chunks by direct get, a
// batch of at most `batchBytes` at a time, the SHA-256 taken as they arrive and checked against the
// metadata's digest at the end. nats.js's get() creates an ordered push consumer for every read,
// and on a file-backed stream that costs the server a directory and state files written
// atomically (about 2 ms of its CPU a read: with the 20 reads of a 10-site round, a third of the
// server's CPU in the overhead bench) and the reader a round trip more. The NATS calls come in
// through a wire (object-wire.ts makes one of a connection; the tests, of memory).
import { objectStoreDigest, sha256 } from './digest.ts';
import { objectChunkSubject, objectMetaSubject } from './object-put.ts';
import { StalledReadError, storedObjectMismatch } from './retry.ts';

/** What readObject needs of a JetStream client on the bucket's stream. */
export interface ObjectReadWire {
  /** The data of the last message on a subject, or null when there is none. */
  lastMessage(subject: string): Promise<Uint8Array | null>;
  /**
   * Direct get of up to `batch` messages on `subject` from sequence `seq` on, at most about
   * `maxBytes` of them (at least one), each handed to `onMessage` in order; resolves when the
   * batch is over (at once when there is no such message).
   */
  directBatch(subject: string, seq: number, o: { batch: number; maxBytes: number }, onMessage: (data: Uint8Array, seq: number) => void): Promise<void>;
}

/** A reply to a direct get (nats.js's Msg, structurally): a stored message, or a status (204: the batch is over, 404: nothing more). */
export interface DirectGetReply {
  data: Uint8Array;
  headers?: { code: number; description: string; get(key: string): string };
}

/** What a direct get needs of a NATS connection (nats.js's NatsConnection, structurally). */
export interface DirectGetConnection {
  subscribe(subject: string, opts: { callback: (err: Error | null, msg: DirectGetReply) => void }): { unsubscribe(): void };
  publish(subject: string, data: string, opts: { reply: string }): void;
}

/**
 * ObjectReadWire's directBatch over a connection: the request goes to
 * `$JS.API.DIRECT.GET.<stream>` with its replies on `inbox` (a fresh subject under the user's own
 * inbox prefix), subscribed for this batch only; StalledReadError when nothing comes for
 * `idleMs`. (nats.js's getBatch keeps its inbox subscribed until a fixed 5 s timeout that also
 * ends a batch still streaming.)
 */
export function directGetBatch(
  nc: DirectGetConnection,
  inbox: string,
  stream: string,
  subject: string,
  seq: number,
  o: { batch: number; maxBytes: number; idleMs: number },
  onMessage: (data: Uint8Array, seq: number) => void,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    let over = false;
    const finish = (err?: unknown) => {
      if (over) return;
      over = true;
      clearTimeout(timer);
      sub.unsubscribe();
      if (err === undefined) resolve();
      else reject(err);
    };
    const idle = () => {
      clearTimeout(timer);
      timer = setTimeout(() => finish(new StalledReadError(`direct get of ${subject}`, o.idleMs)), o.idleMs);
    };
    const sub = nc.subscribe(inbox, {
      callback: (err, msg) => {
        if (over) return;
        if (err) return finish(err);
        idle();
        const code = msg.headers?.code ?? 0;
        if (code === 204 || code === 404) return finish();
        if (code !== 0) return finish(new Error(`direct get of ${subject}: ${code} ${msg.headers?.description ?? ''}`));
        try {
          onMessage(msg.data, Number(msg.headers?.get('Nats-Sequence')));
        } catch (e) {
          return finish(e);
        }
        // A server without batched direct get (before 2.11) answers one message, with no count of those pending.
        if (!msg.headers?.get('Nats-Num-Pending')) finish();
      },
    });
    idle();
    nc.publish(`$JS.API.DIRECT.GET.${stream}`, JSON.stringify({ seq, next_by_subj: subject, batch: o.batch, max_bytes: o.maxBytes }), { reply: inbox });
  });
}

/** An object's metadata as the store keeps it (the fields read here). */
export interface StoredObjectMeta {
  bucket: string;
  name: string;
  nuid: string;
  size: number;
  chunks: number;
  digest: string;
  deleted?: boolean;
  options?: { link?: unknown };
}

/** The object is not there (no metadata, deleted, or chunks of it missing). */
export class ObjectNotFoundError extends Error {}

/** The object's metadata is not the reference's, or its bytes are not what its metadata says. */
export class ObjectMismatchError extends Error {}

/** The object is cut into more chunks than its size may take (mostChunks). */
export class ObjectChunkingError extends ObjectMismatchError {}

/**
 * Fewest bytes a chunk may hold on average. Writers cut objects into chunks of 1 MiB (nats.js:
 * 128 KiB), but whoever writes a bucket chooses: an object cut into tiny chunks costs its reader a
 * message each (a 64 MiB update in 16-byte chunks, four million of them, held the coordinator's
 * read, and its memory budget, for many minutes).
 */
export const MIN_AVERAGE_CHUNK_BYTES = 16 * 1024;

/** The most chunks an object of `size` bytes may be stored in. */
export function mostChunks(size: number): number {
  return Math.ceil(size / MIN_AVERAGE_CHUNK_BYTES) + 16;
}

export interface ReadObjectOptions {
  /** What the object must be (bucket, name, size, SHA-256), checked before its chunks are read. */
  expect?: { bucket: string; name: string; sha256: string; size: number };
  /** Refused (RangeError) beyond this size, before anything is read. */
  maxBytes: number;
  /** An array to read into (at least the object's size); a new one otherwise. */
  into?: Uint8Array;
  /** Bytes of chunks asked for at a time: what the server may have on its way to this reader. */
  batchBytes: number;
}

/**
 * The bytes of object `name` of `bucket` (a view of `into` when given). Throws
 * ObjectNotFoundError when it is not there, ObjectMismatchError when its metadata is not
 * `expect`, is a link, or its chunks are not its size and digest (a truncated or altered
 * object), RangeError past `maxBytes`.
 */
export async function readObject(wire: ObjectReadWire, bucket: string, name: string, o: ReadObjectOptions): Promise<Uint8Array> {
  const raw = await wire.lastMessage(objectMetaSubject(bucket, name));
  const meta = raw ? parseMeta(raw) : undefined;
  if (!meta || meta.deleted) throw new ObjectNotFoundError(`object ${name} not found in ${bucket}`);
  if (meta.options?.link !== undefined) throw new ObjectMismatchError(`object ${name} in ${bucket} is a link`);
  if (o.expect) {
    const mismatch = storedObjectMismatch(meta, o.expect);
    if (mismatch) throw new ObjectMismatchError(mismatch);
  }
  if (meta.size > o.maxBytes) throw new RangeError(`object ${name} in ${bucket}: ${meta.size} bytes, more than the ${o.maxBytes} allowed`);
  if (o.into && o.into.length < meta.size) throw new RangeError(`object ${name}: a buffer of ${o.into.length} bytes for ${meta.size}`);
  const most = mostChunks(meta.size);
  if (meta.chunks < 0 || meta.chunks > most) {
    throw new ObjectChunkingError(`object ${name} in ${bucket}: stored in ${meta.chunks} chunks, more than the ${most} its ${meta.size} bytes may take`);
  }
  const into = o.into ?? new Uint8Array(meta.size);
  const subject = objectChunkSubject(bucket, meta.nuid);
  const hash = sha256();
  let size = 0;
  let chunks = 0;
  let seq = 0;
  let overflow = false;
  let tooMany = false;
  while (size < meta.size && !overflow && !tooMany) {
    const before = chunks;
    await wire.directBatch(subject, seq + 1, { batch: Math.max(1, meta.chunks - chunks), maxBytes: o.batchBytes }, (data, at) => {
      if (overflow || tooMany) return;
      if (size + data.length > meta.size) {
        overflow = true;
        return;
      }
      // Past the metadata's count, each further chunk would be asked for alone.
      if (chunks === meta.chunks) {
        tooMany = true;
        return;
      }
      into.set(data, size);
      hash.update(data);
      size += data.length;
      chunks++;
      seq = at;
    });
    // No chunk came: the metadata names chunks that are not (or no longer) there.
    if (chunks === before) break;
  }
  if (overflow) throw new ObjectMismatchError(`object ${name} in ${bucket}: its chunks are more than the ${meta.size} bytes its metadata declares`);
  if (tooMany) throw new ObjectChunkingError(`object ${name} in ${bucket}: its chunks are more than the ${meta.chunks} its metadata declares`);
  // Chunks missing (never written, or purged): the object as declared is not there.
  if (size !== meta.size) throw new ObjectNotFoundError(`object ${name} in ${bucket}: ${size} of the ${meta.size} bytes its metadata declares are stored`);
  const digest = objectStoreDigest(hash.hex());
  if (digest !== meta.digest) throw new ObjectMismatchError(`object ${name} in ${bucket}: digests do not match (metadata ${meta.digest}, chunks ${digest})`);
  return into.subarray(0, size);
}

function parseMeta(data: Uint8Array): StoredObjectMeta | undefined {
  try {
    const m = JSON.parse(new TextDecoder().decode(data)) as Partial<StoredObjectMeta>;
    const ok =
      typeof m.bucket === 'string' &&
      typeof m.name === 'string' &&
      typeof m.nuid === 'string' &&
      Number.isSafeInteger(m.size) &&
      m.size! >= 0 &&
      Number.isSafeInteger(m.chunks) &&
      typeof m.digest === 'string';
    return ok ? (m as StoredObjectMeta) : undefined;
  } catch {
    return undefined;
  }
}
