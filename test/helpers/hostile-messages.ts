// Malformed and hostile messages for one site's hello, update and evaluation subjects, each with
// the rejection code(s) the coordinator must answer: garbage, truncated and bit-flipped JSON,
// wrong types, missing and unknown fields, NaN, unknown protocols, other jobs and sites, forged,
// foreign and missing signatures, other codecs and objects, huge declared sizes, wrong rounds,
// oversized envelopes; and, for the open round, update objects put into the site's own bucket
// that are truncated, non-finite, out of range, of other shapes, with huge declared offsets, hash
// and size mismatches, missing, empty, of another codec, or metadata whose chunks were never
// written. None of them is a valid update: every one must be refused. Seeded, so a failure
// replays.
import { Objm } from '@nats-io/obj';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import { type ParameterLayout, layoutSize } from '../../core/model/layout.ts';
import { encodeUpdate } from '../../core/protocol/codecs.ts';
import { sha256Hex } from '../../core/protocol/digest.ts';
import type { EvaluationEnvelope, Hello, UpdateEnvelope } from '../../core/protocol/messages.ts';
import type { RejectionCode } from '../../core/protocol/rejections.ts';
import { signEnvelope, siteKeyPair } from '../../core/protocol/signing.ts';
import { buckets, objectNames } from '../../core/protocol/subjects.ts';
import { Rng } from '../../core/rng.ts';

export type Channel = 'hello' | 'update' | 'evaluation';

export interface Probe {
  channel: Channel;
  body: Uint8Array;
  /**
   * The codes the coordinator may answer with; 'any' for mutations whose effect cannot be
   * foreseen (any refusal will do); 'undeliverable' for what NATS itself will not carry.
   */
  expect: readonly RejectionCode[] | 'any' | 'undeliverable';
  what: string;
}

/** An object the probes name, to put into the site's updates bucket first: bytes under its name, or metadata alone (its chunks never written). */
export type Planted = { name: string; bytes: Uint8Array } | { name: string; metaOnly: { size: number; sha256: string } };

export interface HostileContext {
  job: string;
  site: string;
  /** The site's own seed: a hostile site signs what it likes. */
  seed: string;
  /** Another site of the job, and its seed. */
  other: { site: string; seed: string };
  layout: ParameterLayout;
  /** The round open for updates (the site has not answered it). */
  open: number;
  /** Rounds for which the site's update was counted. */
  counted: number[];
  /** The site's genuine hello, as seen on the wire. */
  hello: Hello;
  /** Seeds the generator (default: a fixed one). */
  rngSeed?: number;
}

const encoder = new TextEncoder();
const text = (v: unknown) => encoder.encode(typeof v === 'string' ? v : JSON.stringify(v));

export function hostileMessages(c: HostileContext, counts: { envelopes: number }): { probes: Probe[]; planted: Planted[] } {
  const rng = Rng.from(c.rngSeed ?? 20_240_601, 'hostile-messages');
  const probes: Probe[] = [];
  const planted: Planted[] = [];
  const bucket = buckets(c.job).updates(c.site);
  const stranger = siteKeyPair().seed;
  const nonce = () => Buffer.from(Array.from({ length: 16 }, () => rng.int(256))).toString('base64url');
  const pick = <T>(items: readonly T[]): T => items[rng.int(items.length)]!;
  const add = (channel: Channel, body: Uint8Array | string, expect: Probe['expect'], what: string) =>
    probes.push({ channel, body: typeof body === 'string' ? encoder.encode(body) : body, expect, what });
  const sign = <T extends object>(e: T) => signEnvelope(e, c.seed);

  // A size an honest update of this model could declare (its float32 bytes at most): an envelope
  // that is wrong only in its round, say, must be refused for that, not for a size past the
  // model's exact largest (core/protocol/update-size.ts), which is checked first.
  const plausibleBytes = 4 * c.layout.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0);
  const update = (round: number, patch: Partial<UpdateEnvelope> = {}): Omit<UpdateEnvelope, 'signature'> => {
    const n = patch.nonce ?? nonce();
    return {
      type: 'update',
      protocol: 1,
      job: c.job,
      site: c.site,
      round,
      taskId: nonce(),
      nonce: n,
      samples: 1 + rng.int(1000),
      trainLoss: rng.uniform(),
      steps: rng.int(100),
      codec: 'none',
      object: { bucket, name: objectNames.update(round, n), sha256: sha256Hex(text(n)), size: 100 + rng.int(plausibleBytes - 100) },
      ...patch,
    };
  };
  const evaluation = (round: number, patch: Partial<EvaluationEnvelope> = {}): Omit<EvaluationEnvelope, 'signature'> => ({
    type: 'evaluation',
    protocol: 1,
    job: c.job,
    site: c.site,
    round,
    taskId: nonce(),
    nonce: nonce(),
    samples: rng.int(1000),
    loss: rng.uniform(),
    accuracy: rng.uniform(),
    ...patch,
  });
  const { signature: _genuine, ...hello } = c.hello;
  const freshHello = (patch: Partial<Hello> = {}) => ({ ...hello, nonce: nonce(), sentAt: Date.now(), ...patch });
  /** A future round: whatever a mutation does to it, nothing can be admitted. */
  const future = () => c.open + 1 + rng.int(100);

  // Each kind gets a share of the envelope budget (per channel: update 60 %, evaluation 25 %, hello 15 %).
  const n = (share: number) => Math.max(1, Math.round(counts.envelopes * share));
  const wrongValues: Record<'number' | 'string' | 'object', unknown[]> = {
    number: ['3', null, [], {}, true, 'NaN', '1e3', [1], { n: 1 }],
    string: [7, null, [], {}, false, ['a'], { s: 's' }, 1.5],
    object: ['object', 0, [[]], null, true, [{ bucket }]],
  };
  const updateFields: Record<string, keyof typeof wrongValues> = {
    type: 'string',
    job: 'string',
    site: 'string',
    round: 'number',
    taskId: 'string',
    nonce: 'string',
    samples: 'number',
    trainLoss: 'number',
    steps: 'number',
    codec: 'string',
    object: 'object',
  };
  const evaluationFields: Record<string, keyof typeof wrongValues> = {
    type: 'string',
    job: 'string',
    site: 'string',
    round: 'number',
    taskId: 'string',
    nonce: 'string',
    samples: 'number',
    loss: 'number',
    accuracy: 'number',
  };
  const helloFields: Record<string, keyof typeof wrongValues> = {
    type: 'string',
    job: 'string',
    site: 'string',
    nonce: 'string',
    sentAt: 'number',
    layout: 'object',
    sampleShape: 'object',
  };

  /** Garbage, truncation, bit flips, wrong types, missing and unknown fields: the same for every channel. */
  const malformed = (channel: Channel, base: () => object, fields: Record<string, keyof typeof wrongValues>, numeric: string, share: number) => {
    for (let i = 0; i < n(share * 0.2); i++) {
      const bytes = new Uint8Array(rng.int(2048));
      for (let j = 0; j < bytes.length; j++) bytes[j] = rng.int(256);
      add(channel, bytes, ['CONSORT_R_MALFORMED'], 'random bytes');
    }
    for (let i = 0; i < n(share * 0.15); i++) {
      const whole = text(base());
      add(channel, whole.slice(0, rng.int(whole.length)), ['CONSORT_R_MALFORMED'], 'truncated JSON');
    }
    for (let i = 0; i < n(share * 0.25); i++) {
      const bytes = text(base());
      for (let k = 1 + rng.int(3); k > 0; k--) bytes[rng.int(bytes.length)]! ^= 1 + rng.int(255);
      add(channel, bytes, 'any', 'bit flips in a signed envelope');
    }
    const names = Object.keys(fields);
    for (let i = 0; i < n(share * 0.2); i++) {
      const field = pick(names);
      add(channel, text({ ...base(), [field]: pick(wrongValues[fields[field]!]) }), ['CONSORT_R_MALFORMED'], `wrong type for ${field}`);
    }
    for (let i = 0; i < n(share * 0.1); i++) {
      const e = base() as Record<string, unknown>;
      if (rng.uniform() < 0.5) {
        delete e[pick(names)];
        add(channel, text(e), ['CONSORT_R_MALFORMED'], 'a field missing');
      } else {
        // Spliced into the text: `__proto__` set on an object would not be a key of it.
        const key = pick(['extra', '__proto__', 'constructor', 'signatures', 'Round']);
        add(
          channel,
          JSON.stringify(e).replace(/^\{/, `{"${key}":${JSON.stringify(pick([1, 'x', { polluted: true }, null]))},`),
          ['CONSORT_R_MALFORMED'],
          `an unknown field ${key}`,
        );
      }
    }
    for (let i = 0; i < n(share * 0.05); i++) {
      const body = pick([
        () => JSON.stringify(base()).replace(new RegExp(`"${numeric}":\\d+`), `"${numeric}":${pick(['NaN', 'Infinity', '-Infinity', 'undefined'])}`),
        () => `${'['.repeat(20_000)}${']'.repeat(20_000)}`,
        () => JSON.stringify([base()]),
        () => pick(['null', 'true', '0', '""', '[]', '{}', '"update"']),
        () => JSON.stringify({ ...base(), type: pick(['update', 'evaluation', 'hello', 'ack', 'round'].filter((t) => t !== channel)) }),
      ])();
      add(channel, body, ['CONSORT_R_MALFORMED'], 'not a message of this subject');
    }
    for (let i = 0; i < n(share * 0.05); i++) {
      add(channel, text(sign({ ...base(), protocol: pick([0, 2, 3, 99, 1000, 1.5, -1, 2 ** 40]) })), ['CONSORT_R_UNKNOWN_PROTOCOL'], 'another protocol');
    }
  };

  // ---- updates ----
  const U = 0.6;
  malformed('update', () => sign(update(future())), updateFields, 'round', U * 0.45);
  const signatures: Array<[string, (e: object) => object, RejectionCode]> = [
    ['a stranger', (e) => signEnvelope(e, stranger), 'CONSORT_R_BAD_SIGNATURE'],
    [`site ${c.other.site}`, (e) => signEnvelope(e, c.other.seed), 'CONSORT_R_BAD_SIGNATURE'],
    ['nobody (random bytes)', (e) => ({ ...e, signature: nonce().repeat(4).slice(0, 86) }), 'CONSORT_R_BAD_SIGNATURE'],
    ['nobody (short)', (e) => ({ ...e, signature: nonce() }), 'CONSORT_R_BAD_SIGNATURE'],
    ['nobody (not base64)', (e) => ({ ...e, signature: `${'@'.repeat(10)}==` }), 'CONSORT_R_MALFORMED'],
    ['nobody (unsigned)', (e) => e, 'CONSORT_R_MISSING_SIGNATURE'],
  ];
  for (let i = 0; i < n(U * 0.15); i++) {
    const [who, how, code] = pick(signatures);
    add('update', text(how(update(c.open))), [code], `signed by ${who}`);
  }
  const signedKinds: Array<[string, () => object, RejectionCode[]]> = [
    ['another job', () => update(c.open, { job: pick(['default_other', 'lab_hospitals', 'default_hospitals-2']) }), ['CONSORT_R_WRONG_JOB']],
    ['another site', () => update(c.open, { site: pick([c.other.site, 'mallory', 'st-mary-2']) }), ['CONSORT_R_SUBJECT_MISMATCH']],
    ['another codec', () => update(c.open, { codec: pick(['fp16', 'int8', 'topk'] as const) }), ['CONSORT_R_WRONG_CODEC']],
    [
      'another object',
      () => {
        const e = update(c.open);
        const object = pick([
          { ...e.object, bucket: buckets(c.job).updates(c.other.site) },
          { ...e.object, bucket: buckets(c.job).models, name: objectNames.global(c.open - 1) },
          { ...e.object, name: objectNames.update(c.open - 1, e.nonce) },
          { ...e.object, name: objectNames.update(c.open, nonce()) },
          { ...e.object, name: `${e.object.name}/../../up` },
        ]);
        return { ...e, object };
      },
      ['CONSORT_R_WRONG_OBJECT'],
    ],
    [
      'a huge declared size',
      () => {
        const e = update(c.open);
        return { ...e, object: { ...e.object, size: pick([2 ** 27, 2 ** 31, 2 ** 40, 2 ** 50, 10 ** 12 + rng.int(1000)]) } };
      },
      ['CONSORT_R_OVERSIZED'],
    ],
    ['a round not begun', () => update(c.open + 1 + rng.int(999_000)), ['CONSORT_R_FUTURE_ROUND']],
    ['a round already counted', () => update(pick(c.counted)), ['CONSORT_R_DUPLICATE']],
    ['round 0', () => update(0), ['CONSORT_R_STALE_ROUND']],
  ];
  for (let i = 0; i < n(U * 0.38); i++) {
    const [what, make, codes] = pick(signedKinds);
    add('update', text(sign(make())), codes, `signed by the site, ${what}`);
  }
  for (let i = 0; i < n(U * 0.02); i++) {
    add('update', text(sign({ ...update(c.open), round: 1_000_001 + rng.int(1e9) })), ['CONSORT_R_MALFORMED'], 'a round beyond any job');
    const big = sign(update(c.open));
    add('update', text({ ...big, padding: 'x'.repeat(65 * 1024 + rng.int(200_000)) }), ['CONSORT_R_OVERSIZED'], 'an envelope over 64 KiB');
  }
  for (let i = 0; i < 3; i++)
    add('update', text({ ...sign(update(c.open)), padding: 'x'.repeat(1_200_000) }), 'undeliverable', "an envelope over the server's max_payload");

  // ---- evaluations ----
  const E = 0.25;
  malformed('evaluation', () => sign(evaluation(future())), evaluationFields, 'round', E * 0.6);
  const evaluationKinds: Array<[string, () => object, RejectionCode[]]> = [
    ['signed by a stranger', () => signEnvelope(evaluation(c.open), stranger), ['CONSORT_R_BAD_SIGNATURE']],
    ['unsigned', () => evaluation(c.open), ['CONSORT_R_MISSING_SIGNATURE']],
    // The open round is still collecting updates: nobody has been asked to score it.
    ['for the round still training', () => sign(evaluation(c.open)), ['CONSORT_R_NOT_SAMPLED']],
    ['for a round not begun', () => sign(evaluation(c.open + 1 + rng.int(1000))), ['CONSORT_R_FUTURE_ROUND']],
    ['for a closed round', () => sign(evaluation(rng.int(c.open))), ['CONSORT_R_STALE_ROUND']],
    ['another job', () => sign(evaluation(c.open, { job: 'default_other' })), ['CONSORT_R_WRONG_JOB']],
    ['another site', () => sign(evaluation(c.open, { site: c.other.site })), ['CONSORT_R_SUBJECT_MISMATCH']],
    ['accuracy 1.5', () => sign(evaluation(c.open, { accuracy: 1.5 })), ['CONSORT_R_MALFORMED']],
  ];
  for (let i = 0; i < n(E * 0.4); i++) {
    const [what, make, codes] = pick(evaluationKinds);
    add('evaluation', text(make()), codes, `an evaluation ${what}`);
  }

  // ---- hellos ----
  const H = 0.15;
  malformed('hello', () => sign(freshHello()), helloFields, 'sentAt', H * 0.6);
  const otherLayout = c.layout.map((t, i) => (i === 0 ? { ...t, shape: t.shape.map((d) => d + 1) } : t));
  const helloKinds: Array<[string, () => object, RejectionCode[]]> = [
    ['signed by a stranger', () => signEnvelope(freshHello(), stranger), ['CONSORT_R_BAD_SIGNATURE']],
    [`signed by site ${c.other.site}`, () => signEnvelope(freshHello(), c.other.seed), ['CONSORT_R_BAD_SIGNATURE']],
    ['unsigned', () => freshHello(), ['CONSORT_R_MALFORMED']],
    ['for another site', () => sign(freshHello({ site: c.other.site })), ['CONSORT_R_SUBJECT_MISMATCH']],
    ['for another job', () => sign(freshHello({ job: 'default_other' })), ['CONSORT_R_WRONG_JOB']],
    ['of another model', () => sign(freshHello({ layout: otherLayout })), ['CONSORT_R_WRONG_SHAPE']],
  ];
  for (let i = 0; i < n(H * 0.4); i++) {
    const [what, make, codes] = pick(helloKinds);
    add('hello', text(make()), codes, `a hello ${what}`);
  }

  // ---- update objects for the open round: admitted envelopes whose objects are bad ----
  const size = layoutSize(c.layout);
  const valid = (scale = 0.01) =>
    encodeUpdate(
      Float32Array.from({ length: size }, () => scale * (rng.uniform() - 0.5)),
      c.layout,
      { codec: 'none', topkFraction: 0.01 },
    ).bytes;
  const headerEnd = (b: Uint8Array) => 8 + Number(new DataView(b.buffer, b.byteOffset).getBigUint64(0, true));
  const poison = (value: number) => {
    const b = valid();
    new DataView(b.buffer).setFloat32(headerEnd(b) + 4 * rng.int(size), value, true);
    return b;
  };
  const withHeader = (edit: (h: Record<string, { data_offsets?: number[]; shape?: number[] }>) => void) => {
    const b = valid();
    const end = headerEnd(b);
    const header = JSON.parse(new TextDecoder().decode(b.subarray(8, end))) as Record<string, { data_offsets?: number[]; shape?: number[] }>;
    edit(header);
    const h = encoder.encode(JSON.stringify(header));
    const out = new Uint8Array(8 + h.length + (b.length - end));
    new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
    out.set(h, 8);
    out.set(b.subarray(end), 8 + h.length);
    return out;
  };
  const firstTensor = (h: Record<string, unknown>) => Object.keys(h).find((k) => k !== '__metadata__')!;
  const objects: Array<[string, () => { bytes: Uint8Array | null; declare?: { size?: number; sha256?: string }; metaOnly?: boolean }, RejectionCode[]]> = [
    ['truncated', () => ({ bytes: valid().slice(0, 8 + rng.int(4 * size)) }), ['CONSORT_R_BAD_ENCODING', 'CONSORT_R_WRONG_SHAPE']],
    ['with a NaN', () => ({ bytes: poison(Number.NaN) }), ['CONSORT_R_NON_FINITE']],
    ['with an Infinity', () => ({ bytes: poison(-Infinity) }), ['CONSORT_R_NON_FINITE']],
    ['with 1e30', () => ({ bytes: poison(1e30) }), ['CONSORT_R_OUT_OF_RANGE']],
    [
      'of another model',
      () => ({ bytes: encodeUpdate(new Float32Array(layoutSize(otherLayout)), otherLayout, { codec: 'none', topkFraction: 0.01 }).bytes }),
      ['CONSORT_R_WRONG_SHAPE'],
    ],
    [
      'declaring huge offsets',
      () => ({ bytes: withHeader((h) => void (h[firstTensor(h)]!.data_offsets = [0, 2 ** 40 + rng.int(1000)])) }),
      ['CONSORT_R_BAD_ENCODING', 'CONSORT_R_OVERSIZED'],
    ],
    [
      'declaring a huge shape',
      () => ({ bytes: withHeader((h) => void (h[firstTensor(h)]!.shape = [2 ** 30, 2 ** 30])) }),
      ['CONSORT_R_BAD_ENCODING', 'CONSORT_R_WRONG_SHAPE'],
    ],
    ['whose SHA-256 differs', () => ({ bytes: valid(), declare: { sha256: sha256Hex(valid()) } }), ['CONSORT_R_HASH_MISMATCH']],
    ['larger than declared', () => ({ bytes: valid(), declare: { size: 100 } }), ['CONSORT_R_HASH_MISMATCH']],
    ['smaller than declared', () => ({ bytes: valid().slice(0, 100), declare: { size: 4 * size + 1000 } }), ['CONSORT_R_HASH_MISMATCH']],
    ['not there', () => ({ bytes: null, declare: { size: 4 * size, sha256: sha256Hex(valid()) } }), ['CONSORT_R_OBJECT_MISSING']],
    ['empty', () => ({ bytes: new Uint8Array(0) }), ['CONSORT_R_BAD_ENCODING']],
    [
      'of another codec',
      () => ({
        bytes: encodeUpdate(
          Float32Array.from({ length: size }, () => 0.01),
          c.layout,
          { codec: 'int8', topkFraction: 0.01 },
        ).bytes,
      }),
      ['CONSORT_R_BAD_ENCODING', 'CONSORT_R_WRONG_SHAPE'],
    ],
    ['of random bytes', () => ({ bytes: Uint8Array.from({ length: 64 + rng.int(5000) }, () => rng.int(256)) }), ['CONSORT_R_BAD_ENCODING']],
  ];
  const planObject = (what: string, o: ReturnType<(typeof objects)[number][1]>, codes: RejectionCode[]) => {
    const e = update(c.open);
    const bytes = o.bytes;
    const object = {
      ...e.object,
      size: o.declare?.size ?? bytes?.length ?? 0,
      sha256: o.declare?.sha256 ?? sha256Hex(bytes ?? new Uint8Array(0)),
    };
    if (bytes) planted.push({ name: e.object.name, bytes });
    add('update', text(sign({ ...e, object })), codes, `an update object ${what}`);
  };
  for (const [what, make, codes] of objects) for (let k = 0; k < 3; k++) planObject(what, make(), codes);
  // Metadata naming chunks that were never written: a read that would wait for ever.
  const ghost = update(c.open);
  const looksValid = valid();
  planted.push({ name: ghost.object.name, metaOnly: { size: looksValid.length, sha256: sha256Hex(looksValid) } });
  add(
    'update',
    text(sign({ ...ghost, object: { ...ghost.object, size: looksValid.length, sha256: sha256Hex(looksValid) } })),
    ['CONSORT_R_OBJECT_MISSING'],
    'an update object whose chunks were never written',
  );

  return { probes: rng.shuffle(probes) as Probe[], planted };
}

/** Puts the planted objects into `bucket` over `nc` (the site's own connection): bytes as objects, metadata alone as a site can publish it. */
export async function plant(nc: NatsConnection, bucket: string, planted: readonly Planted[]): Promise<void> {
  const store = await new Objm(nc).open(bucket);
  const padded = (b64: string) => `${b64}${'='.repeat((4 - (b64.length % 4)) % 4)}`;
  for (const p of planted) {
    if ('bytes' in p) {
      await store.putBlob({ name: p.name }, p.bytes);
      continue;
    }
    // The Object Store's metadata record, naming chunks under a nuid nothing was ever written to.
    const meta = {
      name: p.name,
      bucket,
      nuid: 'NEVERWRITTENCHUNKS0000',
      size: p.metaOnly.size,
      chunks: 1,
      digest: `SHA-256=${padded(Buffer.from(p.metaOnly.sha256, 'hex').toString('base64url'))}`,
      mtime: new Date().toISOString(),
      deleted: false,
    };
    const h = headers();
    h.set('Nats-Rollup', 'sub');
    // A request, so that the stream's acknowledgement says it is stored.
    await nc.request(`$O.${bucket}.M.${padded(Buffer.from(p.name).toString('base64url'))}`, JSON.stringify(meta), { timeout: 10_000, headers: h });
  }
}
