import { describe, expect, it } from 'vitest';
import { RoundAccumulator } from '../../core/aggregation/round-accumulator.ts';
import type { ParameterLayout } from '../../core/model/layout.ts';
import { type Codec, encodeUpdate } from '../../core/protocol/codecs.ts';
import { sha256Hex } from '../../core/protocol/digest.ts';
import { UpdateIngestor, type UpdateIngestorOptions, updateValueProblem } from '../../core/protocol/ingestion.ts';
import type { EvaluationEnvelope, UpdateEnvelope } from '../../core/protocol/messages.ts';
import { HELLO_ONLY_REJECTIONS, REJECTION_CODES, REJECTIONS, type RejectionCode } from '../../core/protocol/rejections.ts';
import { newNonce, signEnvelope, siteKeyPair } from '../../core/protocol/signing.ts';
import { buckets, objectNames, PROTOCOL_VERSION } from '../../core/protocol/subjects.ts';
import { encodeTensors } from '../../core/tensor/safetensors.ts';

const JOB = 'default_demo';
const LAYOUT: ParameterLayout = [
  { name: 'dense/kernel', shape: [4, 3] },
  { name: 'dense/bias', shape: [3] },
];
const N = 15;
const KEYS: Record<string, { seed: string; publicKey: string }> = {
  'st-mary': siteKeyPair(),
  'st-john': siteKeyPair(),
  'st-luke': siteKeyPair(),
};
const OUTSIDER = siteKeyPair();
const seedOf = (site: string) => KEYS[site]?.seed ?? OUTSIDER.seed;
const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));

function ingestor(over: Partial<UpdateIngestorOptions> = {}): UpdateIngestor {
  const ing = new UpdateIngestor({
    job: JOB,
    protocol: PROTOCOL_VERSION,
    siteKeys: new Map(Object.entries(KEYS).map(([site, k]) => [site, k.publicKey])),
    layout: LAYOUT,
    codec: 'none',
    maxUpdateBytes: 4096,
    mode: 'sync',
    maxStaleness: 2,
    ...over,
  });
  return ing;
}

/** Round 3 open, st-mary and st-john asked, st-luke not. */
function atRound3(over: Partial<UpdateIngestorOptions> = {}): UpdateIngestor {
  const ing = ingestor(over);
  for (let r = 1; r <= 3; r++) ing.beginRound(r, ['st-mary', 'st-john']);
  return ing;
}

interface Crafted {
  env: UpdateEnvelope;
  raw: Uint8Array;
  bytes: Uint8Array;
}

interface CraftOptions {
  delta?: Float32Array;
  codec?: Codec;
  nonce?: string;
  bytes?: Uint8Array;
  samples?: number;
  seed?: string;
  sign?: boolean;
  edit?: (e: Record<string, unknown>) => void;
}

function update(site: string, round: number, o: CraftOptions = {}): Crafted {
  const codec = o.codec ?? 'none';
  const delta = o.delta ?? Float32Array.from({ length: N }, (_, i) => (i - 7) / 100);
  const bytes = o.bytes ?? encodeUpdate(delta, LAYOUT, { codec, topkFraction: 0.1 }).bytes;
  const nonce = o.nonce ?? newNonce();
  const env: Record<string, unknown> = {
    type: 'update',
    protocol: PROTOCOL_VERSION,
    job: JOB,
    site,
    round,
    taskId: newNonce(),
    nonce,
    samples: o.samples ?? 10,
    trainLoss: 0.5,
    steps: 3,
    codec,
    object: { bucket: buckets(JOB).updates(site), name: objectNames.update(round, nonce), sha256: sha256Hex(bytes), size: bytes.length },
  };
  o.edit?.(env);
  const signed = o.sign === false ? env : signEnvelope(env, o.seed ?? seedOf(site));
  return { env: signed as UpdateEnvelope, raw: json(signed), bytes };
}

function evaluation(site: string, round: number, edit?: (e: Record<string, unknown>) => void, taskId = newNonce()): Uint8Array {
  const env: Record<string, unknown> = {
    type: 'evaluation',
    protocol: PROTOCOL_VERSION,
    job: JOB,
    site,
    round,
    taskId,
    nonce: newNonce(),
    samples: 40,
    loss: 0.3,
    accuracy: 0.9,
  } satisfies Omit<EvaluationEnvelope, 'signature'>;
  edit?.(env);
  return json(signEnvelope(env, seedOf(site)));
}

type Outcome = RejectionCode | 'accepted' | 'duplicate';

/** What the coordinator's shell does with one message: envelope, then object, then (optionally) commit. */
function ingest(ing: UpdateIngestor, subjectSite: string, m: Crafted, commit = true): Outcome {
  const e = ing.checkEnvelope(subjectSite, m.raw);
  if (!e.ok) return e.rejection.code;
  if (e.duplicate) return 'duplicate';
  const o = ing.checkObject(e.envelope, m.bytes);
  if (!o.ok) return o.rejection.code;
  if (commit) ing.commit(e.envelope);
  return 'accepted';
}

describe('UpdateIngestor: every rejection code is reached by a crafted message', () => {
  const withBytes = (bytes: Uint8Array) => update('st-mary', 3, { bytes });
  const scenarios: Array<[RejectionCode, string, () => Outcome]> = [
    ['CONSORT_R_MALFORMED', 'not JSON', () => ingest(atRound3(), 'st-mary', { ...update('st-mary', 3), raw: json('x').subarray(1) })],
    ['CONSORT_R_MALFORMED', 'not UTF-8', () => ingest(atRound3(), 'st-mary', { ...update('st-mary', 3), raw: Uint8Array.from([0x7b, 0xff, 0x7d]) })],
    ['CONSORT_R_MALFORMED', 'a field of the wrong type', () => ingest(atRound3(), 'st-mary', update('st-mary', 3, { edit: (e) => void (e.samples = '10') }))],
    ['CONSORT_R_MALFORMED', 'a missing field', () => ingest(atRound3(), 'st-mary', update('st-mary', 3, { edit: (e) => delete e.trainLoss }))],
    ['CONSORT_R_MALFORMED', 'an unknown field', () => ingest(atRound3(), 'st-mary', update('st-mary', 3, { edit: (e) => void (e.extra = 1) }))],
    ['CONSORT_R_UNKNOWN_PROTOCOL', 'protocol 2', () => ingest(atRound3(), 'st-mary', update('st-mary', 3, { edit: (e) => void (e.protocol = 2) }))],
    ['CONSORT_R_WRONG_JOB', 'another job', () => ingest(atRound3(), 'st-mary', update('st-mary', 3, { edit: (e) => void (e.job = 'default_other') }))],
    ['CONSORT_R_UNKNOWN_SITE', 'a site outside the job', () => ingest(atRound3(), 'mallory', update('mallory', 3))],
    ['CONSORT_R_SUBJECT_MISMATCH', "st-john speaking on st-mary's subject", () => ingest(atRound3(), 'st-mary', update('st-john', 3))],
    ['CONSORT_R_MISSING_SIGNATURE', 'unsigned', () => ingest(atRound3(), 'st-mary', update('st-mary', 3, { sign: false }))],
    ['CONSORT_R_BAD_SIGNATURE', "signed with st-john's key", () => ingest(atRound3(), 'st-mary', update('st-mary', 3, { seed: KEYS['st-john']!.seed }))],
    [
      'CONSORT_R_BAD_SIGNATURE',
      'tampered after signing',
      () => {
        const m = update('st-mary', 3);
        return ingest(atRound3(), 'st-mary', { ...m, raw: json({ ...m.env, samples: 1000 }) });
      },
    ],
    [
      'CONSORT_R_REPLAYED_NONCE',
      'a nonce reused after its update was refused',
      () => {
        const ing = atRound3();
        const first = update('st-mary', 3, { bytes: new Uint8Array(16) });
        expect(ingest(ing, 'st-mary', first)).toBe('CONSORT_R_BAD_ENCODING');
        return ingest(ing, 'st-mary', update('st-mary', 3, { nonce: first.env.nonce }));
      },
    ],
    ['CONSORT_R_STALE_ROUND', 'sync: the previous round', () => ingest(atRound3(), 'st-mary', update('st-mary', 2))],
    ['CONSORT_R_STALE_ROUND', 'buffered: beyond maxStaleness', () => ingest(atRound3({ mode: 'buffered', maxStaleness: 1 }), 'st-mary', update('st-mary', 1))],
    [
      'CONSORT_R_STALE_ROUND',
      'sync: the current round, once closed',
      () => {
        const ing = atRound3();
        ing.closeRound(3);
        return ingest(ing, 'st-mary', update('st-mary', 3));
      },
    ],
    ['CONSORT_R_FUTURE_ROUND', 'the next round', () => ingest(atRound3(), 'st-mary', update('st-mary', 4))],
    ['CONSORT_R_NOT_READY', 'before any round', () => ingest(ingestor(), 'st-mary', update('st-mary', 0))],
    ['CONSORT_R_NOT_SAMPLED', 'st-luke was not asked', () => ingest(atRound3(), 'st-luke', update('st-luke', 3))],
    [
      'CONSORT_R_DUPLICATE',
      'a second update (another nonce) for a counted (round, site)',
      () => {
        const ing = atRound3();
        expect(ingest(ing, 'st-mary', update('st-mary', 3))).toBe('accepted');
        return ingest(ing, 'st-mary', update('st-mary', 3));
      },
    ],
    [
      'CONSORT_R_DUPLICATE',
      'a second update while the first is being fetched',
      () => {
        const ing = atRound3();
        expect(ing.checkEnvelope('st-mary', update('st-mary', 3).raw).ok).toBe(true);
        return ingest(ing, 'st-mary', update('st-mary', 3));
      },
    ],
    [
      'CONSORT_R_TOO_MANY_ATTEMPTS',
      'more envelopes than maxAttemptsPerRound',
      () => {
        const ing = atRound3({ maxAttemptsPerRound: 3 });
        for (let i = 0; i < 3; i++) expect(ingest(ing, 'st-mary', withBytes(new Uint8Array(9)))).toBe('CONSORT_R_BAD_ENCODING');
        return ingest(ing, 'st-mary', update('st-mary', 3));
      },
    ],
    ['CONSORT_R_WRONG_CODEC', 'fp16 in a none job', () => ingest(atRound3(), 'st-mary', update('st-mary', 3, { codec: 'fp16' }))],
    [
      'CONSORT_R_WRONG_OBJECT',
      "an object in st-john's bucket",
      () =>
        ingest(atRound3(), 'st-mary', update('st-mary', 3, { edit: (e) => void ((e.object as { bucket: string }).bucket = buckets(JOB).updates('st-john')) })),
    ],
    [
      'CONSORT_R_WRONG_OBJECT',
      'an object under another name',
      () => ingest(atRound3(), 'st-mary', update('st-mary', 3, { edit: (e) => void ((e.object as { name: string }).name = objectNames.global(3)) })),
    ],
    [
      'CONSORT_R_OBJECT_MISSING',
      'the shell cannot fetch the object',
      () => {
        const ing = atRound3();
        const e = ing.checkEnvelope('st-mary', update('st-mary', 3).raw);
        if (!e.ok) throw new Error('admitted expected');
        return ing.reject(e.envelope, 'CONSORT_R_OBJECT_MISSING', 'no such object').code;
      },
    ],
    ['CONSORT_R_OVERSIZED', 'an envelope over maxEnvelopeBytes', () => ingest(atRound3({ maxEnvelopeBytes: 200 }), 'st-mary', update('st-mary', 3))],
    [
      'CONSORT_R_OVERSIZED',
      'an object declared larger than maxUpdateBytes',
      () => ingest(atRound3(), 'st-mary', update('st-mary', 3, { edit: (e) => void ((e.object as { size: number }).size = 2 ** 50) })),
    ],
    [
      'CONSORT_R_OVERSIZED',
      'an object larger than maxUpdateBytes',
      () => ingest(atRound3({ maxUpdateBytes: 10_000 }), 'st-mary', withBytes(new Uint8Array(10_001))),
    ],
    [
      'CONSORT_R_OVERSIZED',
      'an object larger than maxUpdateBytes, though the envelope says less',
      () => {
        const m = update('st-mary', 3);
        return ingest(atRound3(), 'st-mary', { ...m, bytes: new Uint8Array(5000) });
      },
    ],
    [
      'CONSORT_R_HASH_MISMATCH',
      'other bytes than the envelope hashed',
      () => {
        const m = update('st-mary', 3);
        const other = m.bytes.slice();
        other[other.length - 1]! ^= 1;
        return ingest(atRound3(), 'st-mary', { ...m, bytes: other });
      },
    ],
    [
      'CONSORT_R_HASH_MISMATCH',
      'fewer bytes than the envelope says',
      () => {
        const m = update('st-mary', 3);
        return ingest(atRound3(), 'st-mary', { ...m, bytes: m.bytes.subarray(0, 20) });
      },
    ],
    ['CONSORT_R_BAD_ENCODING', 'not safetensors', () => ingest(atRound3(), 'st-mary', withBytes(new TextEncoder().encode('{"weights": [1, 2, 3]}')))],
    [
      'CONSORT_R_WRONG_SHAPE',
      'another model',
      () =>
        ingest(
          atRound3(),
          'st-mary',
          withBytes(encodeTensors([{ name: 'w', dtype: 'F32', shape: [N], data: new Float32Array(N) }], { format: 'consort.update/v1', codec: 'none' })),
        ),
    ],
    ['CONSORT_R_WRONG_SHAPE', 'SCAFFOLD job, no control delta', () => ingest(atRound3({ control: true }), 'st-mary', update('st-mary', 3))],
    [
      'CONSORT_R_NON_FINITE',
      'a NaN in the delta',
      () => {
        const bytes = encodeUpdate(new Float32Array(N), LAYOUT, { codec: 'none', topkFraction: 0.1 }).bytes;
        new DataView(bytes.buffer).setFloat32(bytes.length - 4, Number.NaN, true);
        return ingest(atRound3(), 'st-mary', withBytes(bytes));
      },
    ],
    ['CONSORT_R_OUT_OF_RANGE', 'a delta of 1e7', () => ingest(atRound3(), 'st-mary', update('st-mary', 3, { delta: new Float32Array(N).fill(1e7) }))],
  ];

  it.each(scenarios)('%s: %s', (code, _what, run) => {
    expect(run()).toBe(code);
  });

  it('the scenarios cover the whole catalogue, and every code has a description', () => {
    // A hello's own refusals are the coordinator's (test/integration/nats-hello-terms.test.ts).
    expect(new Set(scenarios.map(([code]) => code))).toEqual(new Set(REJECTION_CODES.filter((c) => !HELLO_ONLY_REJECTIONS.has(c))));
    for (const code of REJECTION_CODES) expect(REJECTIONS[code].length).toBeGreaterThan(10);
  });

  it('counts each rejection once, per code, and keeps a once-per-(site, code) log', () => {
    const ing = atRound3();
    ingest(ing, 'st-mary', update('st-mary', 4));
    ingest(ing, 'st-mary', update('st-mary', 4));
    ingest(ing, 'st-luke', update('st-luke', 3));
    const counts = ing.counts();
    expect(counts.CONSORT_R_FUTURE_ROUND).toBe(2);
    expect(counts.CONSORT_R_NOT_SAMPLED).toBe(1);
    expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(3);
    expect(Object.keys(counts).sort()).toEqual([...REJECTION_CODES].sort());
    expect(ing.rejectedSites.shouldLog('st-mary', 'CONSORT_R_FUTURE_ROUND')).toBe(true);
    expect(ing.rejectedSites.shouldLog('st-mary', 'CONSORT_R_FUTURE_ROUND')).toBe(false);
    expect(ing.rejectedSites.shouldLog('st-luke', 'CONSORT_R_FUTURE_ROUND')).toBe(true);
  });
});

describe('UpdateIngestor: accepting', () => {
  it('hands back the decoded update with its round and staleness', () => {
    const ing = atRound3({ codec: 'int8' });
    const delta = Float32Array.from({ length: N }, (_, i) => Math.sin(i));
    const m = update('st-john', 3, { codec: 'int8', delta, samples: 33 });
    const e = ing.checkEnvelope('st-john', m.raw);
    if (!e.ok || e.duplicate) throw new Error('expected admission');
    const o = ing.checkObject(e.envelope, m.bytes);
    if (!o.ok) throw new Error(o.rejection.reason);
    expect(o.result).toMatchObject({ site: 'st-john', samples: 33, trainLoss: 0.5, round: 3, staleness: 0 });
    for (let i = 0; i < N; i++) expect(Math.abs(o.result.delta[i]! - delta[i]!)).toBeLessThan(1 / 254 + 1e-6);
  });

  it('a redelivered update is a duplicate, counted once, and changes nothing', () => {
    const ing = atRound3();
    const acc = new RoundAccumulator(N);
    const m = update('st-mary', 3);
    const e = ing.checkEnvelope('st-mary', m.raw);
    if (!e.ok || e.duplicate) throw new Error('expected admission');
    // Redelivered while the object is being fetched: a duplicate too.
    expect(ingest(ing, 'st-mary', m)).toBe('duplicate');
    const o = ing.checkObject(e.envelope, m.bytes);
    if (!o.ok) throw new Error(o.rejection.reason);
    expect(acc.add(o.result)).toBe(true);
    ing.commit(e.envelope);
    ing.commit(e.envelope); // idempotent
    const before = Buffer.from(acc.finish(3).meanDelta.buffer);
    for (let i = 0; i < 5; i++) expect(ingest(ing, 'st-mary', m)).toBe('duplicate');
    // The same envelope with its keys in another order is the same envelope.
    const reordered = Object.fromEntries(Object.entries(m.env).reverse());
    expect(ingest(ing, 'st-mary', { ...m, raw: json(reordered) })).toBe('duplicate');
    expect(ing.duplicates()).toBe(7);
    expect(Object.values(ing.counts()).every((n) => n === 0)).toBe(true);
    expect(Buffer.from(acc.finish(3).meanDelta.buffer).equals(before)).toBe(true);
    expect(acc.sites).toBe(1);
  });

  it('after a refused object, the site may send a corrected update with a new nonce', () => {
    const ing = atRound3();
    expect(ingest(ing, 'st-mary', update('st-mary', 3, { bytes: new Uint8Array(12) }))).toBe('CONSORT_R_BAD_ENCODING');
    expect(ingest(ing, 'st-mary', update('st-mary', 3))).toBe('accepted');
  });

  it('buffered: a late update carries its staleness, up to maxStaleness', () => {
    const ing = ingestor({ mode: 'buffered', maxStaleness: 2 });
    ing.beginRound(1, ['st-mary', 'st-john']);
    ing.beginRound(2, ['st-john']);
    ing.beginRound(3, ['st-john', 'st-luke']);
    const staleness = (m: Crafted) => {
      const e = ing.checkEnvelope(m.env.site, m.raw);
      if (!e.ok) return e.rejection.code;
      if (e.duplicate) return 'duplicate';
      const o = ing.checkObject(e.envelope, m.bytes);
      if (!o.ok) return o.rejection.code;
      ing.commit(e.envelope);
      return o.result.staleness;
    };
    expect(staleness(update('st-mary', 1))).toBe(2);
    expect(staleness(update('st-john', 3))).toBe(0);
    expect(staleness(update('st-john', 2))).toBe(1);
    expect(staleness(update('st-mary', 2))).toBe('CONSORT_R_NOT_SAMPLED'); // not asked in round 2
    ing.closeRound(3); // what arrives now is folded into round 4
    expect(staleness(update('st-luke', 3))).toBe(1);
    expect(staleness(update('st-john', 1))).toBe('CONSORT_R_STALE_ROUND'); // 4 - 1 = 3 > 2
    ing.beginRound(4, ['st-mary']);
    expect(staleness(update('st-mary', 4))).toBe(0);
    expect(staleness(update('st-mary', 1))).toBe('CONSORT_R_DUPLICATE'); // already counted
    expect(staleness(update('st-john', 2))).toBe('CONSORT_R_DUPLICATE');
  });

  it('sync mode refuses what a buffered one takes', () => {
    for (const mode of ['sync', 'buffered'] as const) {
      const ing = ingestor({ mode, maxStaleness: 4 });
      ing.beginRound(5, ['st-mary']);
      ing.beginRound(6, ['st-mary']);
      expect(ingest(ing, 'st-mary', update('st-mary', 5))).toBe(mode === 'sync' ? 'CONSORT_R_STALE_ROUND' : 'accepted');
    }
  });

  it('rounds never go back', () => {
    const ing = atRound3();
    expect(() => ing.beginRound(2, [])).toThrow(RangeError);
    expect(() => ing.beginRound(3, ['st-mary'])).not.toThrow();
  });

  it('checkObject and commit refuse envelopes that checkEnvelope did not admit (a bug in the shell)', () => {
    const ing = atRound3();
    const m = update('st-mary', 3);
    expect(() => ing.checkObject(m.env, m.bytes)).toThrow(/not admitted/);
    expect(() => ing.commit(m.env)).toThrow(/not admitted/);
  });

  it('SCAFFOLD: the control delta comes back as controlDelta', () => {
    const ing = atRound3({ control: true });
    const delta = new Float32Array(N).fill(0.1);
    const bytes = encodeUpdate(delta, LAYOUT, { codec: 'none', topkFraction: 0.1 }, { control: new Float32Array(N).fill(-0.2) }).bytes;
    const m = update('st-mary', 3, { bytes });
    const e = ing.checkEnvelope('st-mary', m.raw);
    if (!e.ok || e.duplicate) throw new Error('expected admission');
    const o = ing.checkObject(e.envelope, m.bytes);
    if (!o.ok) throw new Error(o.rejection.reason);
    expect([...o.result.controlDelta!]).toEqual(new Array(N).fill(Math.fround(-0.2)));
    expect(ingest(atRound3({ control: false }), 'st-mary', update('st-mary', 3, { bytes }))).toBe('CONSORT_R_WRONG_SHAPE');
  });
});

describe('UpdateIngestor: evaluations', () => {
  it('takes an evaluation of the current round once; a redelivery is a duplicate', () => {
    const ing = atRound3();
    const raw = evaluation('st-luke', 3);
    const first = ing.checkEvaluation('st-luke', raw);
    expect(first.ok && !first.duplicate).toBe(true);
    const again = ing.checkEvaluation('st-luke', raw);
    expect(again.ok && again.duplicate).toBe(true);
    // A second task for the same round (the final evaluation) is its own evaluation.
    expect(ing.checkEvaluation('st-luke', evaluation('st-luke', 3)).ok).toBe(true);
  });

  it('refuses another evaluation for the same task, other rounds, strangers and forgeries', () => {
    const ing = atRound3();
    const taskId = newNonce();
    expect(ing.checkEvaluation('st-mary', evaluation('st-mary', 3, undefined, taskId)).ok).toBe(true);
    const code = (site: string, raw: Uint8Array) => {
      const r = ing.checkEvaluation(site, raw);
      return r.ok ? 'ok' : r.rejection.code;
    };
    expect(code('st-mary', evaluation('st-mary', 3, undefined, taskId))).toBe('CONSORT_R_DUPLICATE');
    expect(code('st-mary', evaluation('st-mary', 4))).toBe('CONSORT_R_FUTURE_ROUND');
    expect(code('st-mary', evaluation('st-mary', 2))).toBe('CONSORT_R_STALE_ROUND');
    expect(code('mallory', evaluation('mallory', 3))).toBe('CONSORT_R_UNKNOWN_SITE');
    expect(code('st-john', evaluation('st-mary', 3))).toBe('CONSORT_R_SUBJECT_MISMATCH');
    expect(
      code(
        'st-mary',
        evaluation('st-mary', 3, (e) => void (e.accuracy = 1.5)),
      ),
    ).toBe('CONSORT_R_MALFORMED');
    expect(code('st-mary', json({ ...JSON.parse(new TextDecoder().decode(evaluation('st-mary', 3))), loss: 0 }))).toBe('CONSORT_R_BAD_SIGNATURE');
    ing.beginEvaluation(3, ['st-john']);
    expect(code('st-mary', evaluation('st-mary', 3))).toBe('CONSORT_R_NOT_SAMPLED');
    expect(code('st-john', evaluation('st-john', 3))).toBe('ok');
  });
});

describe("UpdateIngestor: a site's report of a failed task", () => {
  const failure = (site: string, round: number, o: { seed?: string; nonce?: string; edit?: (e: Record<string, unknown>) => void } = {}) => {
    const env: Record<string, unknown> = {
      type: 'failure',
      protocol: PROTOCOL_VERSION,
      job: JOB,
      site,
      round,
      taskId: newNonce(),
      nonce: o.nonce ?? newNonce(),
      task: 'fit',
      reason: 'out of memory',
    };
    const signed = signEnvelope(env as never, o.seed ?? seedOf(site)) as Record<string, unknown>;
    o.edit?.(signed);
    return json(signed);
  };

  it('takes a signed report of the current round once, and refuses forgeries, replays and other rounds', () => {
    const ing = atRound3();
    const code = (site: string, raw: Uint8Array) => {
      const r = ing.checkFailure(site, raw);
      return r.ok ? 'ok' : r.rejection.code;
    };
    const raw = failure('st-mary', 3);
    expect(code('st-mary', raw)).toBe('ok');
    expect(code('st-mary', raw)).toBe('CONSORT_R_REPLAYED_NONCE');
    expect(code('st-mary', failure('st-mary', 3, { seed: KEYS['st-john']!.seed }))).toBe('CONSORT_R_BAD_SIGNATURE');
    expect(code('st-mary', failure('st-mary', 3, { edit: (e) => void (e.reason = 'forged') }))).toBe('CONSORT_R_BAD_SIGNATURE');
    expect(code('st-mary', failure('st-mary', 3, { edit: (e) => void delete e.signature }))).toBe('CONSORT_R_MISSING_SIGNATURE');
    expect(code('st-john', failure('st-mary', 3))).toBe('CONSORT_R_SUBJECT_MISMATCH');
    expect(code('st-mary', failure('st-mary', 2))).toBe('CONSORT_R_STALE_ROUND');
    expect(code('st-mary', failure('st-mary', 4))).toBe('CONSORT_R_FUTURE_ROUND');
    expect(code('st-mary', failure('st-mary', 3, { edit: (e) => void (e.task = 'train') }))).toBe('CONSORT_R_MALFORMED');
    expect(ing.counts().CONSORT_R_BAD_SIGNATURE).toBe(2);
  });
});

describe('UpdateIngestor: snapshot and restore', () => {
  it('carries replay protection and counted pairs through a checkpoint (as JSON)', () => {
    const ing = atRound3();
    const counted = update('st-mary', 3);
    expect(ingest(ing, 'st-mary', counted)).toBe('accepted');
    const refused = update('st-john', 3, { bytes: new Uint8Array(10) });
    expect(ingest(ing, 'st-john', refused)).toBe('CONSORT_R_BAD_ENCODING');
    const evalRaw = evaluation('st-luke', 3);
    expect(ing.checkEvaluation('st-luke', evalRaw).ok).toBe(true);

    const checkpoint = JSON.parse(JSON.stringify(ing.snapshot())) as unknown;
    const restored = ingestor();
    restored.restore(checkpoint);
    expect(restored.round).toBe(3);
    expect(restored.snapshot()).toEqual(ing.snapshot());
    expect(restored.counts().CONSORT_R_BAD_ENCODING).toBe(1);

    expect(ingest(restored, 'st-mary', counted)).toBe('duplicate');
    expect(ingest(restored, 'st-mary', update('st-mary', 3))).toBe('CONSORT_R_DUPLICATE');
    expect(ingest(restored, 'st-john', update('st-john', 3, { nonce: refused.env.nonce }))).toBe('CONSORT_R_REPLAYED_NONCE');
    const e = restored.checkEvaluation('st-luke', evalRaw);
    expect(e.ok && e.duplicate).toBe(true);
    // A fresh one still gets in.
    expect(ingest(restored, 'st-john', update('st-john', 3))).toBe('accepted');
  });

  it('leaves out the counted updates it is told are not folded yet: restored, the same envelope is taken again, once', () => {
    const ing = ingestor({ mode: 'buffered', maxStaleness: 2 });
    ing.beginRound(1, ['st-mary', 'st-john']);
    ing.closeRound(1);
    // Late, acknowledged, waiting for round 2 when the checkpoint of round 1 is written.
    const late = update('st-mary', 1);
    expect(ingest(ing, 'st-mary', late)).toBe('accepted');
    expect(ing.counted(1, 'st-mary')).toBe(true);
    const restored = ingestor({ mode: 'buffered', maxStaleness: 2 });
    restored.restore(JSON.parse(JSON.stringify(ing.snapshot([{ round: 1, site: 'st-mary', nonce: late.env.nonce }]))));
    expect(restored.counted(1, 'st-mary')).toBe(false);
    restored.beginRound(2, ['st-john']);
    expect(ingest(restored, 'st-mary', late)).toBe('accepted');
    expect(ingest(restored, 'st-mary', late)).toBe('duplicate');
    // Left out of nothing else: what the snapshot says of other updates is the full one's.
    const full = ing.snapshot();
    expect(ing.snapshot([{ round: 1, site: 'st-john', nonce: late.env.nonce }])).toEqual(full);
  });

  it('a snapshot is deterministic and refuses to restore from garbage', () => {
    const ing = atRound3();
    ingest(ing, 'st-john', update('st-john', 3));
    ingest(ing, 'st-mary', update('st-mary', 3));
    expect(JSON.stringify(ing.snapshot())).toBe(JSON.stringify(ing.snapshot()));
    for (const bad of [null, {}, { ...ing.snapshot(), format: 'x' }, { ...ing.snapshot(), accepted: [{ round: -1 }] }, 'checkpoint']) {
      expect(() => ingestor().restore(bad)).toThrow(RangeError);
    }
  });

  it('remembers nonces of the last maxStaleness + 2 rounds only', () => {
    const ing = ingestor({ mode: 'buffered', maxStaleness: 2 });
    for (let r = 1; r <= 20; r++) {
      ing.beginRound(r, ['st-mary']);
      expect(ingest(ing, 'st-mary', update('st-mary', r))).toBe('accepted');
    }
    const s = ing.snapshot();
    expect(s.nonces.map(([, round]) => round)).toEqual([17, 18, 19, 20]);
    expect(s.accepted.map((a) => a.round)).toEqual([17, 18, 19, 20]);
    expect(s.sampled.map(([round]) => round)).toEqual([17, 18, 19, 20]);
    // What was forgotten is too old to be taken anyway.
    expect(ingest(ing, 'st-mary', update('st-mary', 16))).toBe('CONSORT_R_STALE_ROUND');
  });
});

describe('updateValueProblem (a run in one process checks values as the ingestor does)', () => {
  it('refuses NaN, values beyond ±2^20 and weights past the exact range, naming the first value', () => {
    const ok = new Float32Array([0.5, -3, 2 ** 20]);
    expect(updateValueProblem({ delta: ok, samples: 100 })).toBeUndefined();
    expect(updateValueProblem({ delta: new Float32Array([1, Number.NaN, 2]), samples: 1 })).toEqual({
      code: 'CONSORT_R_NON_FINITE',
      reason: 'delta[1] is NaN',
    });
    expect(updateValueProblem({ delta: new Float32Array([1, 2, -(2 ** 21)]), samples: 1 })).toEqual({
      code: 'CONSORT_R_OUT_OF_RANGE',
      reason: `delta[2] = ${-(2 ** 21)} exceeds ±${2 ** 20}`,
    });
    expect(updateValueProblem({ delta: ok, samples: 2 ** 23 })?.reason).toBe(
      `delta: samples x max|value| = ${2 ** 23} x ${2 ** 20} reaches 2^43, beyond the exact aggregate's range`,
    );
    expect(updateValueProblem({ delta: ok, controlDelta: new Float32Array([0, Number.POSITIVE_INFINITY, 0]), samples: 1 })?.reason).toBe(
      'control delta[1] is Infinity',
    );
  });
});
