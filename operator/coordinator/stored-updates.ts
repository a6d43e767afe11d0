// Update objects read where they are stored, never held whole: the NATS side of the coordinator's
// path for large models (core/aggregation/stored-round.ts). An object is read twice, each time a
// few chunks at a time with JetStream direct gets on its bucket's stream:
//
// - on arrival, in order, to check it (SHA-256, and the codec's checks as the bytes stream by,
//   UpdateScanner), noting where each chunk is: its stream sequence, its end in the object, its
//   CRC-32;
// - when its round closes, a range of the model at a time (possibly from the middle of the object,
//   for a control delta or top-k's values): the same chunks, asked for by those sequences.
//
// Why the second read gives the bytes the first one checked: a message in a JetStream stream is
// never rewritten, so a chunk at its sequence is the one checked, or gone. A site cannot delete
// messages of its bucket (no such permission), but it can publish a rollup that purges a subject:
// then the sequence asked for is gone and the server answers with a later one, or nothing, and the
// read fails (CONSORT_R_HASH_MISMATCH or CONSORT_R_OBJECT_MISSING); the round loop leaves that
// update out and aggregates again. Overwriting the object under its name changes nothing (new
// chunks, new sequences). The CRC-32 of each chunk guards this bookkeeping against our own
// mistakes and storage faults (a CRC at 4 GB/s beside SHA-256's 1.7: the bytes cannot be swapped
// behind a fixed sequence, so no cryptographic hash is needed twice).
//
// Flow control: a direct get asks for a number of messages and the server sends exactly those,
// so the bytes on their way to this connection are what was asked (one window over all these
// reads, well under nats-server's 64 MiB slow-consumer limit), and a read interrupted by the
// connection carries on from the next sequence.
import { crc32 } from 'node:zlib';
import type { ObjectInfo } from '@nats-io/obj';
import { StoredUpdateError } from '../../core/aggregation/stored-round.ts';
import { sha256 } from '../../core/protocol/digest.ts';
import type { RejectionCode } from '../../core/protocol/rejections.ts';
import { objectChunkSubject } from '../../core/protocol/object-put.ts';
import { mostChunks, type ObjectReadWire } from '../../core/protocol/object-read.ts';
import type { ByteCursor } from '../../core/protocol/update-stream.ts';

/** Bytes asked for by one direct get (chunks of 1 MiB: four of them). */
const BATCH_BYTES = 4 * 1024 * 1024;

/** A bound on bytes in flight (nats-transport.ts's ByteBudget). */
export interface ByteWindow {
  acquire(bytes: number): Promise<() => void>;
}

/** Why an object read failed, with its rejection code. */
export class ObjectReadError extends Error {
  readonly code: RejectionCode;
  constructor(code: RejectionCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** Where an object's chunks are, as its first read found them. */
export interface ChunkIndex {
  bucket: string;
  subject: string;
  size: number;
  /** Per chunk: its stream sequence, the end of its bytes in the object, its CRC-32. */
  seqs: Float64Array;
  ends: Float64Array;
  crcs: Uint32Array;
}

export interface StoredObjectsOptions {
  /** The direct gets of a bucket's stream (the transport's, one per bucket). */
  wire: (bucket: string) => ObjectReadWire;
  /** Bytes in flight to this connection for these reads (the only update reads in stored mode). */
  window: ByteWindow;
  /** How long a read interrupted by the connection is tried again. */
  retryMs: number;
  /** Whether the connection was interrupted since `t` (epoch ms): a read that failed meanwhile is tried again. */
  interruptedSince?: (t: number) => boolean;
}

export class StoredObjects {
  private readonly o: StoredObjectsOptions;

  constructor(o: StoredObjectsOptions) {
    this.o = o;
  }

  /**
   * Reads an object once, in order, handing each chunk to `take` (which returns false to stop:
   * then undefined is returned). Checks the byte count against the metadata and, when `sha256`
   * is given, the SHA-256 of the whole; returns where the chunks are. ObjectReadError otherwise.
   */
  async readOnce(bucket: string, info: ObjectInfo, sha256hex: string | undefined, take: (chunk: Uint8Array) => boolean): Promise<ChunkIndex | undefined> {
    const chunks = info.chunks;
    // Also bounds the index (20 bytes a chunk).
    const most = mostChunks(info.size);
    if (!Number.isSafeInteger(chunks) || chunks < 0 || chunks > most) {
      throw new ObjectReadError('CONSORT_R_BAD_ENCODING', `stored in ${chunks} chunks, more than the ${most} its ${info.size} bytes may take`);
    }
    const index: ChunkIndex = {
      bucket,
      subject: objectChunkSubject(bucket, info.nuid),
      size: info.size,
      seqs: new Float64Array(chunks),
      ends: new Float64Array(chunks),
      crcs: new Uint32Array(chunks),
    };
    const hash = sha256hex !== undefined ? sha256() : undefined;
    let got = 0;
    let size = 0;
    let from = 0;
    let stopped = false;
    const perChunk = Math.max(1, info.size / Math.max(1, chunks));
    await this.fetchAll(
      index,
      () => ({ seq: from, count: Math.min(chunks - got, Math.max(1, Math.floor(BATCH_BYTES / perChunk))), bytes: Math.min(BATCH_BYTES, info.size - size) }),
      () => got < chunks && !stopped,
      () => `chunk ${got + 1} of ${chunks}`,
      (m) => {
        if (got === chunks || stopped) return; // the metadata's count is what was checked
        if (size + m.data.length > info.size) throw new ObjectReadError('CONSORT_R_HASH_MISMATCH', `more than the ${info.size} bytes declared`);
        index.seqs[got] = m.seq;
        size += m.data.length;
        index.ends[got] = size;
        index.crcs[got] = crc32(m.data);
        hash?.update(m.data);
        got++;
        from = m.seq + 1;
        if (!take(m.data)) stopped = true;
      },
    );
    if (stopped) return undefined;
    if (size !== info.size) throw new ObjectReadError('CONSORT_R_HASH_MISMATCH', `object has ${size} bytes, its metadata says ${info.size}`);
    const digest = hash?.hex();
    if (digest !== undefined && digest !== sha256hex) {
      throw new ObjectReadError('CONSORT_R_HASH_MISMATCH', `object SHA-256 ${digest} differs from the envelope's ${sha256hex}`);
    }
    return index;
  }

  /**
   * A cursor over an indexed object from byte `position`: only the chunks the first read found,
   * each checked (sequence, length, CRC-32) before its bytes are used; StoredUpdateError when one
   * is not there any more. `before` is awaited before the first request.
   */
  cursor(index: ChunkIndex, position: number, opts: { before?: () => Promise<unknown>; fault?: (err: StoredUpdateError) => void } = {}): ByteCursor {
    return new ChunkCursor(this, index, position, opts);
  }

  /**
   * Direct gets until `more()` says done: each asks for `next()` messages from a sequence on the
   * object's subject, within the window (`bytes` of it); the messages go to `take` in order. A get
   * cut by a connection interruption is asked again (from wherever `next()` says) until retryMs;
   * one that brings nothing, or stalls, fails as `what()` missing.
   */
  async fetchAll(
    at: { bucket: string; subject: string },
    next: () => { seq: number; count: number; bytes: number },
    more: () => boolean,
    what: () => string,
    take: (m: { seq: number; data: Uint8Array }) => void,
  ): Promise<void> {
    const until = Date.now() + this.o.retryMs;
    while (more()) {
      const { seq, count, bytes } = next();
      const release = await this.o.window.acquire(bytes);
      const startedAt = Date.now();
      let received = 0;
      try {
        // Room for a message's headers beside its payload: the server stops a batch at max_bytes.
        await this.o.wire(at.bucket).directBatch(at.subject, seq, { batch: count, maxBytes: bytes + 64 * 1024 }, (data, at) => {
          received++;
          take({ seq: at, data });
        });
        if (received === 0) throw new ObjectReadError('CONSORT_R_OBJECT_MISSING', `${what()} is not in the store`);
      } catch (err) {
        if (err instanceof ObjectReadError || err instanceof StoredUpdateError) throw err;
        // Interrupted: carry on from what arrived (the messages taken are kept).
        if (received === 0 && (this.o.interruptedSince?.(startedAt) ?? false) && Date.now() < until) {
          await new Promise((r) => setTimeout(r, 250));
          continue;
        }
        if (received > 0 && (this.o.interruptedSince?.(startedAt) ?? false) && Date.now() < until) continue;
        throw new ObjectReadError('CONSORT_R_OBJECT_MISSING', `${what()}: ${(err as Error).message}`);
      } finally {
        release();
      }
    }
  }
}

/** A read of an indexed object from a byte on, a few chunks at a time, each checked against the index. */
class ChunkCursor implements ByteCursor {
  private readonly objects: StoredObjects;
  private readonly index: ChunkIndex;
  private readonly opts: { before?: () => Promise<unknown>; fault?: (err: StoredUpdateError) => void };
  /** The next chunk to fetch, the chunks fetched and not used up, where the first of them is used from. */
  private nextChunk: number;
  private readonly queue: Uint8Array[] = [];
  private offset: number;
  private started = false;
  private closed = false;

  constructor(objects: StoredObjects, index: ChunkIndex, position: number, opts: ChunkCursor['opts']) {
    this.objects = objects;
    this.index = index;
    this.opts = opts;
    if (!(position >= 0 && position <= index.size)) throw new RangeError(`a cursor at ${position} of an object of ${index.size} bytes`);
    // The chunk that holds `position`: the first whose end is beyond it.
    let lo = 0;
    let hi = index.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (index.ends[mid]! > position) hi = mid;
      else lo = mid + 1;
    }
    this.nextChunk = lo;
    this.offset = position - (lo > 0 ? index.ends[lo - 1]! : 0);
  }

  async read(into: Uint8Array): Promise<void> {
    await this.take(into.length, into);
  }

  async skip(bytes: number): Promise<void> {
    await this.take(bytes, undefined);
  }

  close(): void {
    this.closed = true;
    this.queue.length = 0;
  }

  private async take(bytes: number, into: Uint8Array | undefined): Promise<void> {
    let done = 0;
    while (done < bytes) {
      if (this.queue.length === 0) await this.fetch(bytes - done);
      const chunk = this.queue[0]!;
      const n = Math.min(chunk.length - this.offset, bytes - done);
      into?.set(chunk.subarray(this.offset, this.offset + n), done);
      done += n;
      this.offset += n;
      if (this.offset === chunk.length) {
        this.queue.shift();
        this.offset = 0;
      }
    }
    // The rest of a chunk waits for this update's next range, while every other update is read:
    // kept as a copy of its own, since a message's bytes are a view of the buffer nats.js grew
    // to assemble it (about twice the chunk).
    const rest = this.queue[0];
    if (rest && this.offset > 0 && rest.byteLength < rest.buffer.byteLength) {
      this.queue[0] = Uint8Array.prototype.slice.call(rest, this.offset);
      this.offset = 0;
    }
  }

  /** Fetches the chunks that hold the next `bytes` bytes (at least one, at most about BATCH_BYTES). */
  private async fetch(bytes: number): Promise<void> {
    if (!this.started) {
      this.started = true;
      await this.opts.before?.();
    }
    const { seqs, ends, crcs, bucket, subject } = this.index;
    const first = this.nextChunk;
    if (first >= seqs.length) throw this.fail(new StoredUpdateError('CONSORT_R_OBJECT_MISSING', 'read past the end of the object'));
    const start = first > 0 ? ends[first - 1]! : 0;
    const want = Math.min(Math.max(bytes + this.offset, 1), BATCH_BYTES);
    let last = first;
    while (last + 1 < seqs.length && ends[last]! - start < want) last++;
    await this.objects
      .fetchAll(
        { bucket, subject },
        () => ({ seq: seqs[this.nextChunk]!, count: last + 1 - this.nextChunk, bytes: ends[last]! - (this.nextChunk > 0 ? ends[this.nextChunk - 1]! : 0) }),
        () => this.nextChunk <= last && !this.closed,
        () => `chunk ${this.nextChunk + 1} of ${seqs.length}`,
        (m) => {
          if (this.closed || this.nextChunk > last) return;
          const j = this.nextChunk;
          const length = ends[j]! - (j > 0 ? ends[j - 1]! : 0);
          let why: string | undefined;
          if (m.seq !== seqs[j]) why = `chunk ${j + 1} (sequence ${seqs[j]}) is gone from the store (sequence ${m.seq} came instead)`;
          else if (m.data.length !== length || crc32(m.data) !== crcs[j]) why = `chunk ${j + 1} (sequence ${seqs[j]}) is not the one checked`;
          if (why) throw this.fail(new StoredUpdateError('CONSORT_R_HASH_MISMATCH', `${why}: the object changed since it was checked`));
          this.queue.push(m.data);
          this.nextChunk++;
        },
      )
      .catch((err: unknown) => {
        if (this.closed) throw new Error('the read was closed');
        if (err instanceof StoredUpdateError) throw err;
        if (err instanceof ObjectReadError) throw this.fail(new StoredUpdateError(err.code, err.message, { cause: err }));
        throw this.fail(new StoredUpdateError('CONSORT_R_OBJECT_MISSING', (err as Error).message, { cause: err }));
      });
    if (this.closed) throw new Error('the read was closed');
  }

  private fail(err: StoredUpdateError): StoredUpdateError {
    if (!this.closed) this.opts.fault?.(err);
    return err;
  }
}
