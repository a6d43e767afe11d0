// Writing an object into a JetStream Object Store bucket in the store's own format (ADR-20, what
// nats.js's get() reads): the chunks under a fresh nuid on `$O.<bucket>.C.<nuid>`, then the
// metadata on `$O.<bucket>.M.<base64url(name)>` (size, chunk count, SHA-256 of the whole), which
// replaces the name's earlier metadata (rollup), then the replaced object's chunks purged. Faster
// than nats.js's put, which gathers every chunk into a fresh copy (twice, as its buffer works) and
// waits for each chunk's acknowledgement before it sends the next: chunks here are views of the
// caller's arrays, several are in flight at once, and the SHA-256 is taken as they go. The NATS
// calls come in through a wire (object-wire.ts makes one of a connection; the tests, of memory).
import { objectStoreDigest, sha256 } from './digest.ts';

/** What putObject needs of a JetStream client on the bucket's stream. */
export interface ObjectPutWire {
  /** A JetStream publish; resolves once the server stored it. */
  publish(subject: string, data: Uint8Array): Promise<unknown>;
  /** A JetStream publish that replaces every earlier message on its subject (the Nats-Rollup header); resolves once stored. */
  publishRollup(subject: string, data: Uint8Array): Promise<unknown>;
  /** The data of the last message on a subject, or null when there is none. */
  lastMessage(subject: string): Promise<Uint8Array | null>;
  /** Removes every message on a subject. */
  purge(subject: string): Promise<unknown>;
  /** A fresh unique token (nats.js's nuid). */
  nuid(): string;
  /** The server's largest message (its max_payload), when known: chunks are no larger. */
  maxPayload(): number | undefined;
}

export interface PutObjectOptions {
  /** Chunk size (capped at the server's max_payload). */
  chunkBytes: number;
  /** Bytes of chunks sent and not yet acknowledged (at least one chunk). */
  windowBytes: number;
  /** Kept in the object's metadata (the store's `metadata` field, which nats.js reads back in ObjectInfo). */
  metadata?: Record<string, string>;
}

/** The metadata of the object written, as the store keeps it. */
export interface PutObjectInfo {
  bucket: string;
  nuid: string;
  size: number;
  chunks: number;
  name: string;
  description: string;
  options: { max_chunk_size: number };
  mtime: string;
  /** "SHA-256=" and the padded base64url of the hash (objectStoreDigest). */
  digest: string;
  deleted: false;
  metadata?: Record<string, string>;
  /** Lower-case hex SHA-256 of the bytes. */
  sha256: string;
}

/** The subject of an object's metadata: nats.js's spelling (padded base64url of the name). */
export function objectMetaSubject(bucket: string, name: string): string {
  const b64 = Buffer.from(name, 'utf8').toString('base64url');
  return `$O.${bucket}.M.${b64}${'='.repeat((4 - (b64.length % 4)) % 4)}`;
}

/** The subject of an object's chunks. */
export function objectChunkSubject(bucket: string, nuid: string): string {
  return `$O.${bucket}.C.${nuid}`;
}

/**
 * The bytes of `parts` (one after the other) as chunks of at most `size`, copying as little as
 * possible: parts that lie next to each other in one buffer count as one; a chunk within a part is
 * a view of it; a part's end shorter than a chunk is sent alone (a view) when it is at least half a
 * chunk or the next part is at least a chunk long, and otherwise gathered with what follows into a
 * chunk of its own (a copy: a header and small tensors travel in one message, not one each).
 * Readers of an object take its chunks in order, whatever their sizes.
 */
export function* chunksOf(parts: readonly Uint8Array[], size: number): Generator<Uint8Array> {
  if (!(size >= 1)) throw new RangeError(`chunksOf: a chunk size of ${size}`);
  const runs: Uint8Array[] = [];
  for (const p of parts) {
    if (p.length === 0) continue;
    const last = runs.at(-1);
    if (last && last.buffer === p.buffer && last.byteOffset + last.length === p.byteOffset) {
      runs[runs.length - 1] = new Uint8Array(p.buffer, last.byteOffset, last.length + p.length);
    } else runs.push(p);
  }
  let run = 0;
  let at = 0;
  while (run < runs.length) {
    const rest = runs[run]!.length - at;
    const next = runs[run + 1];
    if (rest >= size || rest >= size / 2 || !next || next.length >= size) {
      const n = Math.min(size, rest);
      yield runs[run]!.subarray(at, at + n);
      at += n;
    } else {
      let n = 0;
      for (let r = run; r < runs.length && n < size; r++) n += runs[r]!.length - (r === run ? at : 0);
      const piece = new Uint8Array(Math.min(size, n));
      for (let filled = 0; filled < piece.length; ) {
        const src = runs[run]!;
        const k = Math.min(piece.length - filled, src.length - at);
        piece.set(src.subarray(at, at + k), filled);
        filled += k;
        at += k;
        if (at === src.length && filled < piece.length) {
          run++;
          at = 0;
        }
      }
      yield piece;
    }
    if (at === runs[run]!.length) {
      run++;
      at = 0;
    }
  }
}

/**
 * Writes `parts` (one after the other) as the object `name` of `bucket`. Resolves once its
 * metadata is stored (the object is then whole and readable) and a replaced object's chunks are
 * purged; on failure, purges what it wrote (where the user may) and rejects.
 */
export async function putObject(wire: ObjectPutWire, bucket: string, name: string, parts: readonly Uint8Array[], o: PutObjectOptions): Promise<PutObjectInfo> {
  const chunkBytes = Math.min(o.chunkBytes, wire.maxPayload() ?? o.chunkBytes);
  const nuid = wire.nuid();
  const chunkSubject = objectChunkSubject(bucket, nuid);
  const metaSubject = objectMetaSubject(bucket, name);
  // The object this one replaces (its chunks are purged after), looked up while the chunks go out.
  const replaced = wire.lastMessage(metaSubject).then(
    (data) => (data ? previousNuid(data) : undefined),
    (err: unknown) => ({ err }),
  );
  const hash = sha256();
  let size = 0;
  let chunks = 0;
  const inFlight = new Set<Promise<unknown>>();
  let inFlightBytes = 0;
  let failure: { err: unknown } | undefined;
  try {
    for (const chunk of chunksOf(parts, chunkBytes)) {
      while (inFlight.size > 0 && inFlightBytes + chunk.length > o.windowBytes && !failure) await Promise.race(inFlight);
      if (failure) break;
      hash.update(chunk);
      size += chunk.length;
      chunks++;
      inFlightBytes += chunk.length;
      const sent: Promise<unknown> = wire.publish(chunkSubject, chunk).then(
        () => {
          inFlight.delete(sent);
          inFlightBytes -= chunk.length;
        },
        (err: unknown) => {
          inFlight.delete(sent);
          inFlightBytes -= chunk.length;
          failure ??= { err };
        },
      );
      inFlight.add(sent);
    }
    await Promise.all(inFlight);
    if (failure) throw failure.err;
    const before = await replaced;
    if (before && typeof before === 'object') throw before.err;
    const sha256hex = hash.hex();
    const info: Omit<PutObjectInfo, 'sha256'> = {
      bucket,
      nuid,
      size,
      chunks,
      name,
      description: '',
      options: { max_chunk_size: chunkBytes },
      mtime: new Date().toISOString(),
      digest: objectStoreDigest(sha256hex),
      deleted: false,
      ...(o.metadata ? { metadata: o.metadata } : {}),
    };
    await wire.publishRollup(metaSubject, new TextEncoder().encode(JSON.stringify(info)));
    if (before && before !== nuid) await wire.purge(objectChunkSubject(bucket, before)).catch(() => {});
    return { ...info, sha256: sha256hex };
  } catch (err) {
    await Promise.all(inFlight);
    // Chunks that no metadata names are never read: purged where this user may (a site may not).
    await wire.purge(chunkSubject).catch(() => {});
    throw err;
  }
}

function previousNuid(data: Uint8Array): string | undefined {
  try {
    const meta = JSON.parse(new TextDecoder().decode(data)) as { nuid?: unknown };
    return typeof meta.nuid === 'string' ? meta.nuid : undefined;
  } catch {
    return undefined;
  }
}
