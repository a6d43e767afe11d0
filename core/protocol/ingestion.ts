// The coordinator's receiving side, as pure decisions: is this envelope, then this object, one
// to fold into the aggregate? No NATS here. The shell passes the subject's site and the raw
// bytes; the ingestor answers accept, duplicate (a redelivery of what it already took: answer
// it again, count nothing) or a rejection from the catalogue, which it counts. Nothing it
// refuses changes any state but the counters.
//
// Life of an update: checkEnvelope (schema, version, job, subject, site, signature, nonce,
// round) admits it as pending → the shell fetches the object → checkObject (size, SHA-256,
// codec, shapes, finiteness) → the shell folds the result in → commit, and from then on the
// same (round, site) is a duplicate, whatever is redelivered. A failure after admission
// releases the (round, site) for a corrected update with a new nonce; the nonce stays spent.
//
// Memory is bounded: per site, the nonces of the last maxStaleness + 2 rounds (anything older
// is refused as stale before its nonce matters), and at most maxAttemptsPerRound of them.
import { z } from 'zod';
import { maxAbs } from '../aggregation/exact-kernel.ts';
import type { ParameterLayout } from '../model/layout.ts';
import type { SiteFitResult } from '../strategies/strategy.ts';
import { type Codec, decodeUpdate, UpdateDecodeError } from './codecs.ts';
import { type ScannedUpdate, UpdateScanner } from './update-stream.ts';
import { sha256Hex } from './digest.ts';
import { EvaluationEnvelope, TaskFailureEnvelope, UpdateEnvelope } from './messages.ts';
import { REJECTION_CODES, type Rejection, type RejectionCode, RejectionLog } from './rejections.ts';
import { verifyEnvelope } from './signing.ts';
import { buckets, objectNames } from './subjects.ts';

export interface UpdateIngestorOptions {
  /** The job key ("<namespace>_<name>"). */
  job: string;
  /** The protocol version this coordinator speaks. */
  protocol: number;
  /** Site name → its NKey public key (the only sites accepted). */
  siteKeys: ReadonlyMap<string, string>;
  layout: ParameterLayout;
  /** The codec the job negotiated (spec.compression.codec). */
  codec: Codec;
  /** topk: when given, k must be exactly the one this fraction gives. */
  topkFraction?: number;
  /** Largest update object accepted, in bytes: the model's and codec's exact largest (update-size.ts's maxUpdateBytes). */
  maxUpdateBytes: number;
  /** sync: an update for a closed round is refused; buffered: taken with its staleness up to maxStaleness. */
  mode: 'sync' | 'buffered';
  maxStaleness: number;
  /** SCAFFOLD: true, every update must carry a control delta; false, none may; absent, not checked here. */
  control?: boolean;
  /** Largest |value| accepted in a delta or control delta (default 2^20): beyond, the exact aggregate's range is at risk. */
  maxAbsValue?: number;
  /** Largest envelope accepted, in bytes (default 64 KiB). */
  maxEnvelopeBytes?: number;
  /** Envelopes a site may get admitted per round (default 64); bounds the nonce memory. */
  maxAttemptsPerRound?: number;
}

export type EnvelopeCheck<E> =
  | { ok: true; duplicate?: false; envelope: E }
  /** A redelivery of an envelope already taken (or being taken): acknowledge it again, nothing else. */
  | { ok: true; duplicate: true; envelope: E }
  | { ok: false; rejection: Rejection; site: string };

export type IngestedUpdate = SiteFitResult & { round: number; staleness: number };

export type ObjectCheck = { ok: true; result: IngestedUpdate } | { ok: false; rejection: Rejection; site: string };

/** An update checked as it streamed: everything but its values, which stay in its object (`scanned` says where). */
export type ScannedIngestedUpdate = Omit<IngestedUpdate, 'delta' | 'controlDelta'> & { scanned: ScannedUpdate };

export type ScannedCheck = { ok: true; result: ScannedIngestedUpdate } | { ok: false; rejection: Rejection; site: string };

const Pairs = z.array(z.tuple([z.number().int().min(0), z.array(z.string())]));
/** What a checkpoint carries: replay protection and the (round, site) pairs already counted. */
export const IngestorSnapshot = z
  .object({
    format: z.literal('consort.ingestor/v1'),
    round: z.number().int().min(0).nullable(),
    closed: z.boolean(),
    sampled: Pairs,
    evaluators: Pairs,
    /** [site, round, nonces]. */
    nonces: z.array(z.tuple([z.string(), z.number().int().min(0), z.array(z.string())])),
    accepted: z.array(z.object({ round: z.number().int().min(0), site: z.string(), nonce: z.string(), signature: z.string() }).strict()),
    evaluations: z.array(z.object({ round: z.number().int().min(0), site: z.string(), taskId: z.string(), nonce: z.string(), signature: z.string() }).strict()),
    counts: z.record(z.string(), z.number().int().min(0)),
    duplicates: z.number().int().min(0),
  })
  .strict();
export type IngestorSnapshot = z.infer<typeof IngestorSnapshot>;

interface Taken {
  nonce: string;
  signature: string;
}

type Failure = { ok: false; rejection: Rejection; site: string };

const decoder = new TextDecoder('utf-8', { fatal: true });
/** The exact aggregate's bound on weight * max|x| for one update (ExactWeightedSum). */
const MAX_UPDATE_WEIGHT = 2 ** 43;
/** The largest |value| an update may hold (UpdateIngestorOptions.maxAbsValue's default). */
export const MAX_ABS_UPDATE_VALUE = 2 ** 20;

/**
 * What the ingestor's value checks refuse in a decoded update held in memory (a run in one
 * process, which has no wire): a NaN or infinite value, a |value| beyond ±2^20, samples x
 * max|value| reaching 2^43; the same codes, so that both runs refuse the same updates.
 */
export function updateValueProblem(u: {
  delta: Float32Array;
  controlDelta?: Float32Array;
  samples: number;
}): { code: RejectionCode; reason: string } | undefined {
  for (const [what, values, weight] of [
    ['delta', u.delta, u.samples],
    ['control delta', u.controlDelta, 1],
  ] as const) {
    if (!values) continue;
    const m = maxAbs(values);
    if (m <= MAX_ABS_UPDATE_VALUE && weight * m < MAX_UPDATE_WEIGHT) continue;
    const i = values.findIndex((x) => !(Math.abs(x) <= MAX_ABS_UPDATE_VALUE));
    if (i >= 0 && !Number.isFinite(values[i]!)) return { code: 'CONSORT_R_NON_FINITE', reason: `${what}[${i}] is ${values[i]}` };
    if (i >= 0) return { code: 'CONSORT_R_OUT_OF_RANGE', reason: `${what}[${i}] = ${values[i]} exceeds ±${MAX_ABS_UPDATE_VALUE}` };
    return { code: 'CONSORT_R_OUT_OF_RANGE', reason: `${what}: samples x max|value| = ${weight} x ${m} reaches 2^43, beyond the exact aggregate's range` };
  }
  return undefined;
}

/** What judgeValues needs of an update's values: the largest magnitudes, and where one beyond a limit lies. */
interface ValueSummary {
  hasControl: boolean;
  maxAbs: number;
  controlMaxAbs: number;
  beyond: (what: 'delta' | 'control', limit: number) => { index: number; value: number };
}

export class UpdateIngestor {
  private readonly o: UpdateIngestorOptions;
  private readonly maxAbsValue: number;
  private readonly maxEnvelopeBytes: number;
  private readonly maxAttempts: number;
  /** Logs each (site, code) once: `if (ingestor.rejectedSites.shouldLog(site, code)) log(...)`. */
  readonly rejectedSites = new RejectionLog();

  private current: number | undefined;
  private closed = false;
  private readonly sampled = new Map<number, Set<string>>();
  private readonly evaluators = new Map<number, Set<string>>();
  /** site → round → nonces admitted. */
  private readonly nonces = new Map<string, Map<number, Set<string>>>();
  /** round → site → the update committed. */
  private readonly accepted = new Map<number, Map<string, Taken>>();
  /** round → site → the update admitted and not yet committed or released. */
  private readonly pending = new Map<number, Map<string, Taken>>();
  /** round → `${site}/${taskId}` → the evaluation taken. */
  private readonly evaluations = new Map<number, Map<string, Taken>>();
  private readonly tally = new Map<RejectionCode, number>();
  private duplicateCount = 0;

  constructor(options: UpdateIngestorOptions) {
    if (!Number.isInteger(options.maxStaleness) || options.maxStaleness < 0) throw new RangeError(`UpdateIngestor: bad maxStaleness ${options.maxStaleness}`);
    this.o = { ...options, siteKeys: new Map(options.siteKeys) };
    this.maxAbsValue = options.maxAbsValue ?? MAX_ABS_UPDATE_VALUE;
    this.maxEnvelopeBytes = options.maxEnvelopeBytes ?? 64 * 1024;
    this.maxAttempts = options.maxAttemptsPerRound ?? 64;
  }

  /** The round updates are being collected for (undefined before the first). */
  get round(): number | undefined {
    return this.current;
  }

  /** Adds or replaces a site's public key (a site that joins the job later). */
  setSiteKey(site: string, publicKey: string): void {
    (this.o.siteKeys as Map<string, string>).set(site, publicKey);
  }

  /** Opens round `round` for the sampled sites; forgets what is older than the staleness window. Rounds never go back. */
  beginRound(round: number, sampledSites: Iterable<string>): void {
    if (!Number.isSafeInteger(round) || round < 0) throw new RangeError(`UpdateIngestor.beginRound: bad round ${round}`);
    if (this.current !== undefined && round < this.current) throw new RangeError(`UpdateIngestor.beginRound: round ${round} is before round ${this.current}`);
    this.current = round;
    this.closed = false;
    this.sampled.set(round, new Set(sampledSites));
    this.prune();
  }

  /**
   * Closes the current round: sync, its late updates are then refused as stale; buffered, they
   * are taken with the staleness of the round they will be folded into (current + 1 − round).
   */
  closeRound(round: number): void {
    if (round === this.current) this.closed = true;
  }

  /** Optional: the sites asked to evaluate round `round`; an evaluation from another is refused. Without it, any site of the job may. */
  beginEvaluation(round: number, sites: Iterable<string>): void {
    this.evaluators.set(round, new Set(sites));
  }

  /** First check of an update: the envelope alone, before its object is fetched. */
  checkEnvelope(subjectSite: string, raw: Uint8Array): EnvelopeCheck<UpdateEnvelope> {
    const parsed = this.admit(subjectSite, raw, UpdateEnvelope);
    if (!parsed.ok) return parsed;
    const env = parsed.envelope;
    const site = env.site;
    if (env.codec !== this.o.codec) return this.fail(site, 'CONSORT_R_WRONG_CODEC', `encoded with ${env.codec}, the job uses ${this.o.codec}`);
    const bucket = buckets(this.o.job).updates(site);
    const name = objectNames.update(env.round, env.nonce);
    if (env.object.bucket !== bucket || env.object.name !== name) {
      return this.fail(site, 'CONSORT_R_WRONG_OBJECT', `object ${clip(env.object.bucket)}/${clip(env.object.name)}, expected ${bucket}/${name}`);
    }
    if (env.object.size > this.o.maxUpdateBytes) {
      return this.fail(
        site,
        'CONSORT_R_OVERSIZED',
        `the envelope declares ${env.object.size} bytes; an update of this model with codec ${this.o.codec} has at most ${this.o.maxUpdateBytes}`,
      );
    }
    const taken = this.accepted.get(env.round)?.get(site) ?? this.pending.get(env.round)?.get(site);
    if (taken) {
      if (taken.nonce === env.nonce && taken.signature === env.signature) {
        this.duplicateCount++;
        return { ok: true, duplicate: true, envelope: env };
      }
      return this.fail(site, 'CONSORT_R_DUPLICATE', `round ${env.round} already has an update from this site (nonce ${taken.nonce})`);
    }
    const replay = this.replayed(site, env.nonce);
    if (replay) return replay;
    const timing = this.timing(site, env.round);
    if (!timing.ok) return timing;
    const attempts = this.attempts(site, env.round);
    if (attempts) return attempts;
    this.remember(site, env.round, env.nonce);
    mapOf(this.pending, env.round).set(site, { nonce: env.nonce, signature: env.signature! });
    return { ok: true, envelope: env };
  }

  /** Second check: the object an admitted envelope names, as fetched. Never throws on bad bytes. */
  checkObject(envelope: UpdateEnvelope, bytes: Uint8Array, opts: { sha256?: 'verified' } = {}): ObjectCheck {
    const site = envelope.site;
    this.requirePending(envelope, 'checkObject');
    const fail = (code: RejectionCode, reason: string): Failure => {
      this.release(envelope);
      return this.fail(site, code, reason);
    };
    const max = this.o.maxUpdateBytes;
    if (bytes.length > max) return fail('CONSORT_R_OVERSIZED', `object of ${bytes.length} bytes exceeds the limit of ${max}`);
    if (bytes.length !== envelope.object.size)
      return fail('CONSORT_R_HASH_MISMATCH', `object has ${bytes.length} bytes, the envelope says ${envelope.object.size}`);
    // The shell may vouch for the hash: an Object Store read checks the chunks against the
    // object's digest, which the shell compared with the envelope's before reading.
    if (opts.sha256 !== 'verified') {
      const digest = sha256Hex(bytes);
      if (digest !== envelope.object.sha256)
        return fail('CONSORT_R_HASH_MISMATCH', `object SHA-256 ${digest} differs from the envelope's ${envelope.object.sha256}`);
    }
    let update: ReturnType<typeof decodeUpdate>;
    try {
      update = decodeUpdate(bytes, this.o.layout, this.o.codec, {
        maxBytes: max,
        ...(this.o.topkFraction !== undefined ? { topkFraction: this.o.topkFraction } : {}),
      });
    } catch (err) {
      const code = err instanceof UpdateDecodeError ? err.code : 'CONSORT_R_BAD_ENCODING';
      return fail(code, clip((err as Error).message, 300));
    }
    const staleness = this.judgeAndTime(envelope, {
      hasControl: update.control !== undefined,
      maxAbs: update.maxAbs,
      controlMaxAbs: update.controlMaxAbs ?? 0,
      beyond: (what, limit) => {
        const values = (what === 'delta' ? update.delta : update.control)!;
        const i = values.findIndex((v) => Math.abs(v) > limit);
        return { index: i, value: values[i]! };
      },
    });
    if (!staleness.ok) return staleness;
    return {
      ok: true,
      result: {
        site,
        samples: envelope.samples,
        delta: update.delta,
        ...(update.control ? { controlDelta: update.control } : {}),
        trainLoss: envelope.trainLoss,
        round: envelope.round,
        staleness: staleness.staleness,
      },
    };
  }

  /** An UpdateScanner for an admitted update's object, with this ingestor's layout, codec and limits. */
  scanner(envelope: UpdateEnvelope): UpdateScanner {
    return new UpdateScanner({
      layout: this.o.layout,
      codec: this.o.codec,
      limits: { maxBytes: this.o.maxUpdateBytes, ...(this.o.topkFraction !== undefined ? { topkFraction: this.o.topkFraction } : {}) },
      size: envelope.object.size,
      maxAbsValue: this.maxAbsValue,
    });
  }

  /**
   * checkObject for an object checked as it streamed (for a model too large to hold its updates):
   * every byte went through `scanner`, and the shell verified the object's size and SHA-256. The
   * same checks, codes and reasons; the result has no values, only where they lie.
   */
  checkScanned(envelope: UpdateEnvelope, scanner: UpdateScanner): ScannedCheck {
    const site = envelope.site;
    this.requirePending(envelope, 'checkScanned');
    let scanned: ScannedUpdate;
    try {
      scanned = scanner.finish();
    } catch (err) {
      this.release(envelope);
      const code = err instanceof UpdateDecodeError ? err.code : 'CONSORT_R_BAD_ENCODING';
      return this.fail(site, code, clip((err as Error).message, 300));
    }
    const staleness = this.judgeAndTime(envelope, {
      hasControl: scanned.controlMaxAbs !== undefined,
      maxAbs: scanned.maxAbs,
      controlMaxAbs: scanned.controlMaxAbs ?? 0,
      beyond: (what) => (what === 'delta' ? scanned.deltaOver : scanned.controlOver)!,
    });
    if (!staleness.ok) return staleness;
    return {
      ok: true,
      result: { site, samples: envelope.samples, trainLoss: envelope.trainLoss, round: envelope.round, staleness: staleness.staleness, scanned },
    };
  }

  /**
   * A counted update found unusable when its round was aggregated (its stored object was gone or
   * changed by then): counted as a rejection. The (round, site) stays taken: nothing more is
   * accepted for it.
   */
  exclude(envelope: UpdateEnvelope, code: RejectionCode, reason: string): Rejection {
    return this.fail(envelope.site, code, reason).rejection;
  }

  /** judgeValues, then the round's timing: the round may have moved on while the object was fetched. */
  private judgeAndTime(envelope: UpdateEnvelope, u: ValueSummary): { ok: true; staleness: number } | Failure {
    const refused = this.judgeValues(envelope, u);
    if (refused) return refused;
    const staleness = this.timing(envelope.site, envelope.round);
    if (!staleness.ok) this.release(envelope);
    return staleness;
  }

  /**
   * What checkObject judges of decoded values, in its order: the control delta as the strategy
   * wants it, no |value| beyond maxAbsValue (the first one named), samples x max|value| below
   * 2^43. Releases and refuses, or undefined.
   */
  private judgeValues(envelope: UpdateEnvelope, u: ValueSummary): Failure | undefined {
    const fail = (code: RejectionCode, reason: string): Failure => {
      this.release(envelope);
      return this.fail(envelope.site, code, reason);
    };
    if (this.o.control === true && !u.hasControl) return fail('CONSORT_R_WRONG_SHAPE', 'SCAFFOLD update without a control delta');
    if (this.o.control === false && u.hasControl) return fail('CONSORT_R_WRONG_SHAPE', 'control delta sent, but the strategy uses none');
    for (const [what, key, m, weight] of [
      ['delta', 'delta', u.maxAbs, envelope.samples],
      ['control delta', 'control', u.controlMaxAbs, 1],
    ] as const) {
      if (key === 'control' && !u.hasControl) continue;
      if (m > this.maxAbsValue) {
        const { index, value } = u.beyond(key, this.maxAbsValue);
        return fail('CONSORT_R_OUT_OF_RANGE', `${what}[${index}] = ${value} exceeds ±${this.maxAbsValue}`);
      }
      // What one update may weigh in the exact aggregate (exact-sum.ts): refused here, with a
      // reason, rather than by the aggregate.
      if (!(weight * m < MAX_UPDATE_WEIGHT)) {
        return fail('CONSORT_R_OUT_OF_RANGE', `${what}: samples x max|value| = ${weight} x ${m} reaches 2^43, beyond the exact aggregate's range`);
      }
    }
    return undefined;
  }

  /** Marks the update counted (call once the aggregate took it): from now on a redelivery is a duplicate. Idempotent. */
  commit(envelope: UpdateEnvelope): void {
    const done = this.accepted.get(envelope.round)?.get(envelope.site);
    if (done && done.nonce === envelope.nonce && done.signature === envelope.signature) return;
    this.requirePending(envelope, 'commit');
    this.pending.get(envelope.round)!.delete(envelope.site);
    mapOf(this.accepted, envelope.round).set(envelope.site, { nonce: envelope.nonce, signature: envelope.signature! });
  }

  /** Forgets an admitted, uncommitted update (its nonce stays spent), so that the site may send another. */
  release(envelope: UpdateEnvelope): void {
    const p = this.pending.get(envelope.round)?.get(envelope.site);
    if (p && p.nonce === envelope.nonce) this.pending.get(envelope.round)!.delete(envelope.site);
  }

  /** A rejection the shell found itself (e.g. CONSORT_R_OBJECT_MISSING): counts it and releases the update. */
  reject(envelope: UpdateEnvelope, code: RejectionCode, reason: string): Rejection {
    this.release(envelope);
    return this.fail(envelope.site, code, reason).rejection;
  }

  /** An evaluation envelope. Taken at once (there is no object); a redelivery is a duplicate. */
  checkEvaluation(subjectSite: string, raw: Uint8Array): EnvelopeCheck<EvaluationEnvelope> {
    const parsed = this.admit(subjectSite, raw, EvaluationEnvelope);
    if (!parsed.ok) return parsed;
    const env = parsed.envelope;
    const site = env.site;
    const key = `${site}/${env.taskId}`;
    const taken = this.evaluations.get(env.round)?.get(key);
    if (taken) {
      if (taken.nonce === env.nonce && taken.signature === env.signature) {
        this.duplicateCount++;
        return { ok: true, duplicate: true, envelope: env };
      }
      return this.fail(site, 'CONSORT_R_DUPLICATE', `task ${env.taskId} of round ${env.round} already has an evaluation from this site`);
    }
    const replay = this.replayed(site, env.nonce);
    if (replay) return replay;
    const current = this.current ?? 0;
    if (env.round > current) return this.fail(site, 'CONSORT_R_FUTURE_ROUND', `evaluation of round ${env.round}, the job is at round ${current}`);
    if (env.round < current) return this.fail(site, 'CONSORT_R_STALE_ROUND', `evaluation of round ${env.round}, the job is at round ${current}`);
    const asked = this.evaluators.get(env.round);
    if (asked && !asked.has(site)) return this.fail(site, 'CONSORT_R_NOT_SAMPLED', `site was not asked to evaluate round ${env.round}`);
    const attempts = this.attempts(site, env.round);
    if (attempts) return attempts;
    this.remember(site, env.round, env.nonce);
    mapOf(this.evaluations, env.round).set(key, { nonce: env.nonce, signature: env.signature! });
    return { ok: true, envelope: env };
  }

  /**
   * A site's report that it could not carry out a task of the open round: signed, fresh (its
   * nonce never seen), of the current round. Whether the round still waits for that site is the
   * transport's to judge.
   */
  checkFailure(subjectSite: string, raw: Uint8Array): EnvelopeCheck<TaskFailureEnvelope> {
    const parsed = this.admit(subjectSite, raw, TaskFailureEnvelope);
    if (!parsed.ok) return parsed;
    const env = parsed.envelope;
    const replay = this.replayed(env.site, env.nonce);
    if (replay) return replay;
    const current = this.current ?? 0;
    if (env.round > current) return this.fail(env.site, 'CONSORT_R_FUTURE_ROUND', `failure of round ${env.round}, the job is at round ${current}`);
    if (env.round < current) return this.fail(env.site, 'CONSORT_R_STALE_ROUND', `failure of round ${env.round}, the job is at round ${current}`);
    const attempts = this.attempts(env.site, env.round);
    if (attempts) return attempts;
    this.remember(env.site, env.round, env.nonce);
    return { ok: true, envelope: env };
  }

  /** Rejections so far, per code (every code present, zeros included). */
  counts(): Record<RejectionCode, number> {
    const out = {} as Record<RejectionCode, number>;
    for (const code of REJECTION_CODES) out[code] = this.tally.get(code) ?? 0;
    return out;
  }

  /** Updates counted (committed) for `round`. */
  acceptedIn(round: number): number {
    return this.accepted.get(round)?.size ?? 0;
  }

  /** Redeliveries answered as duplicates so far. */
  duplicates(): number {
    return this.duplicateCount;
  }

  /** Whether an update of `site` for `round` is counted (committed). */
  counted(round: number, site: string): boolean {
    return this.accepted.get(round)?.has(site) ?? false;
  }

  /**
   * Plain JSON, sorted, for the coordinator's checkpoint. Pending (uncommitted) updates are not
   * carried, nor the committed ones named in `uncounted` (late updates acknowledged but not yet
   * folded into a round: after a restart, the same envelope is taken again as new).
   */
  snapshot(uncounted: ReadonlyArray<{ round: number; site: string; nonce: string }> = []): IngestorSnapshot {
    const left = (round: number, site: string, nonce: string) => uncounted.some((u) => u.round === round && u.site === site && u.nonce === nonce);
    const byRound = (m: Map<number, Set<string>>) => [...m.entries()].sort(([a], [b]) => a - b).map(([r, s]) => [r, [...s].sort()] as [number, string[]]);
    const nonces: Array<[string, number, string[]]> = [];
    for (const site of [...this.nonces.keys()].sort()) {
      for (const [round, set] of [...this.nonces.get(site)!.entries()].sort(([a], [b]) => a - b)) {
        const kept = [...set].filter((n) => !left(round, site, n)).sort();
        if (kept.length > 0) nonces.push([site, round, kept]);
      }
    }
    const accepted: IngestorSnapshot['accepted'] = [];
    for (const [round, m] of [...this.accepted.entries()].sort(([a], [b]) => a - b)) {
      for (const site of [...m.keys()].sort()) if (!left(round, site, m.get(site)!.nonce)) accepted.push({ round, site, ...m.get(site)! });
    }
    const evaluations: IngestorSnapshot['evaluations'] = [];
    for (const [round, m] of [...this.evaluations.entries()].sort(([a], [b]) => a - b)) {
      for (const key of [...m.keys()].sort()) {
        const slash = key.indexOf('/');
        evaluations.push({ round, site: key.slice(0, slash), taskId: key.slice(slash + 1), ...m.get(key)! });
      }
    }
    const counts: Record<string, number> = {};
    for (const code of REJECTION_CODES) if (this.tally.get(code)) counts[code] = this.tally.get(code)!;
    return {
      format: 'consort.ingestor/v1',
      round: this.current ?? null,
      closed: this.closed,
      sampled: byRound(this.sampled),
      evaluators: byRound(this.evaluators),
      nonces,
      accepted,
      evaluations,
      counts,
      duplicates: this.duplicateCount,
    };
  }

  /** Replaces the state with a snapshot (from a checkpoint); throws RangeError when it is not one. */
  restore(snapshot: unknown): void {
    const parsed = IngestorSnapshot.safeParse(snapshot);
    if (!parsed.success) throw new RangeError(`UpdateIngestor.restore: not an ingestor snapshot (${describeIssue(parsed.error.issues[0])})`);
    const s = parsed.data;
    for (const m of [this.sampled, this.evaluators, this.nonces, this.accepted, this.pending, this.evaluations, this.tally]) m.clear();
    this.current = s.round ?? undefined;
    this.closed = s.closed;
    for (const [round, sites] of s.sampled) this.sampled.set(round, new Set(sites));
    for (const [round, sites] of s.evaluators) this.evaluators.set(round, new Set(sites));
    for (const [site, round, nonces] of s.nonces) for (const nonce of nonces) this.remember(site, round, nonce);
    for (const { round, site, nonce, signature } of s.accepted) mapOf(this.accepted, round).set(site, { nonce, signature });
    for (const { round, site, taskId, nonce, signature } of s.evaluations) mapOf(this.evaluations, round).set(`${site}/${taskId}`, { nonce, signature });
    for (const [code, n] of Object.entries(s.counts)) if ((REJECTION_CODES as string[]).includes(code)) this.tally.set(code as RejectionCode, n);
    this.duplicateCount = s.duplicates;
  }

  /** Size, UTF-8 JSON, version, schema, job, subject, site, signature: what every envelope must pass. */
  private admit<S extends typeof UpdateEnvelope | typeof EvaluationEnvelope | typeof TaskFailureEnvelope>(
    subjectSite: string,
    raw: Uint8Array,
    schema: S,
  ): { ok: true; envelope: z.infer<S> } | Failure {
    const site = subjectSite;
    if (raw.length > this.maxEnvelopeBytes) return this.fail(site, 'CONSORT_R_OVERSIZED', `envelope of ${raw.length} bytes exceeds ${this.maxEnvelopeBytes}`);
    let json: unknown;
    try {
      json = JSON.parse(decoder.decode(raw));
    } catch (err) {
      return this.fail(site, 'CONSORT_R_MALFORMED', `not UTF-8 JSON (${clip((err as Error).message)})`);
    }
    const version = typeof json === 'object' && json !== null ? (json as { protocol?: unknown }).protocol : undefined;
    if (typeof version === 'number' && version !== this.o.protocol) {
      return this.fail(site, 'CONSORT_R_UNKNOWN_PROTOCOL', `protocol v${clip(String(version))}, this coordinator speaks v${this.o.protocol}`);
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) return this.fail(site, 'CONSORT_R_MALFORMED', describeIssue(parsed.error.issues[0]));
    const env = parsed.data as z.infer<S>;
    if (env.job !== this.o.job) return this.fail(site, 'CONSORT_R_WRONG_JOB', `job ${env.job}, this coordinator runs ${this.o.job}`);
    if (env.site !== subjectSite)
      return this.fail(site, 'CONSORT_R_SUBJECT_MISMATCH', `envelope says site ${env.site}, published on the subject of ${clip(subjectSite)}`);
    const key = this.o.siteKeys.get(env.site);
    if (key === undefined) return this.fail(site, 'CONSORT_R_UNKNOWN_SITE', `site ${env.site} is not part of job ${this.o.job}`);
    if (env.signature === undefined) return this.fail(site, 'CONSORT_R_MISSING_SIGNATURE', 'envelope is not signed');
    if (!verifyEnvelope(env, key)) return this.fail(site, 'CONSORT_R_BAD_SIGNATURE', "signature does not verify with the site's key");
    return { ok: true, envelope: env };
  }

  /** Round checks of an update: {staleness} when it may be taken. */
  private timing(site: string, round: number): { ok: true; staleness: number } | Failure {
    const current = this.current;
    if (current === undefined) return this.fail(site, 'CONSORT_R_NOT_READY', `round ${round}: no round is open yet`);
    if (round > current) return this.fail(site, 'CONSORT_R_FUTURE_ROUND', `round ${round} has not begun (the job is at round ${current})`);
    const open = round === current && !this.closed;
    if (!open && this.o.mode === 'sync') return this.fail(site, 'CONSORT_R_STALE_ROUND', `round ${round} is closed (the job is at round ${current})`);
    const staleness = open ? 0 : (this.closed ? current + 1 : current) - round;
    if (staleness > this.o.maxStaleness) {
      return this.fail(site, 'CONSORT_R_STALE_ROUND', `round ${round} is ${staleness} rounds late, beyond maxStaleness ${this.o.maxStaleness}`);
    }
    if (!this.sampled.get(round)?.has(site)) return this.fail(site, 'CONSORT_R_NOT_SAMPLED', `site was not sampled in round ${round}`);
    return { ok: true, staleness };
  }

  private replayed(site: string, nonce: string): Failure | undefined {
    for (const [round, set] of this.nonces.get(site) ?? []) {
      if (set.has(nonce)) return this.fail(site, 'CONSORT_R_REPLAYED_NONCE', `nonce ${nonce} was already used in round ${round}`);
    }
    return undefined;
  }

  private attempts(site: string, round: number): Failure | undefined {
    const used = this.nonces.get(site)?.get(round)?.size ?? 0;
    if (used >= this.maxAttempts) return this.fail(site, 'CONSORT_R_TOO_MANY_ATTEMPTS', `${used} envelopes for round ${round} already`);
    return undefined;
  }

  private remember(site: string, round: number, nonce: string): void {
    let rounds = this.nonces.get(site);
    if (!rounds) this.nonces.set(site, (rounds = new Map()));
    let set = rounds.get(round);
    if (!set) rounds.set(round, (set = new Set()));
    set.add(nonce);
  }

  private requirePending(envelope: UpdateEnvelope, what: string): void {
    const p = this.pending.get(envelope.round)?.get(envelope.site);
    if (!p || p.nonce !== envelope.nonce || p.signature !== envelope.signature) {
      throw new Error(
        `UpdateIngestor.${what}: the update of site ${envelope.site} for round ${envelope.round} was not admitted by checkEnvelope (or was released)`,
      );
    }
  }

  private fail(site: string, code: RejectionCode, reason: string): Failure {
    this.tally.set(code, (this.tally.get(code) ?? 0) + 1);
    return { ok: false, rejection: { code, reason }, site };
  }

  /** Keeps the last maxStaleness + 2 rounds: anything older is refused as stale before its nonce is looked at. */
  private prune(): void {
    const oldest = (this.current ?? 0) - this.o.maxStaleness - 1;
    for (const m of [this.sampled, this.evaluators, this.accepted, this.pending, this.evaluations]) {
      for (const round of [...m.keys()]) if (round < oldest) m.delete(round);
    }
    for (const [site, rounds] of this.nonces) {
      for (const round of [...rounds.keys()]) if (round < oldest) rounds.delete(round);
      if (rounds.size === 0) this.nonces.delete(site);
    }
  }
}

function mapOf<V>(m: Map<number, Map<string, V>>, round: number): Map<string, V> {
  let inner = m.get(round);
  if (!inner) m.set(round, (inner = new Map()));
  return inner;
}

function describeIssue(issue: z.core.$ZodIssue | undefined): string {
  if (!issue) return 'does not fit the schema';
  const path = issue.path.length > 0 ? issue.path.join('.') : '(envelope)';
  return clip(`${path}: ${issue.message}`, 300);
}

/** Attacker-chosen text in a reason is cut short. */
function clip(text: string, max = 120): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}
