// Throws tens of thousands of generated hostile envelopes and objects at the UpdateIngestor, as the
// coordinator's shell would feed them: each must be refused with a catalogue code (never a throw,
// never an acceptance), the counters must add up to what was sent, and an aggregate fed only what
// was accepted must not move a bit. Every generated message is hostile by construction; a failure
// names the seed, the codec, the message number and its kind, so it reproduces with
// CONSORT_FUZZ_SEED=<seed>.
import { describe, expect, it } from 'vitest';
import { RoundAccumulator } from '../../core/aggregation/round-accumulator.ts';
import type { ParameterLayout } from '../../core/model/layout.ts';
import { type Codec, encodeUpdate } from '../../core/protocol/codecs.ts';
import { sha256Hex } from '../../core/protocol/digest.ts';
import { UpdateIngestor } from '../../core/protocol/ingestion.ts';
import { HELLO_ONLY_REJECTIONS, REJECTION_CODES, type RejectionCode } from '../../core/protocol/rejections.ts';
import { signEnvelope, siteKeyPair } from '../../core/protocol/signing.ts';
import { buckets, objectNames, PROTOCOL_VERSION } from '../../core/protocol/subjects.ts';
import { Rng } from '../../core/rng.ts';
import { decodeTensors, encodeTensors, type NamedTensor } from '../../core/tensor/safetensors.ts';

const SEED = Number(process.env.CONSORT_FUZZ_SEED ?? 0x5eed_f022);
const JOB = 'default_fuzz';
const LAYOUT: ParameterLayout = [
  { name: 'dense/kernel', shape: [4, 3] },
  { name: 'dense/bias', shape: [3] },
];
const N = 15;
const FRACTION = 0.2;
const MAX_UPDATE = 4096;
/** A and E are special: A's update of round 3 is counted before the fuzz; E is never sampled. */
const SITES = ['site-a', 'site-b', 'site-c', 'site-d', 'site-e'];
const SENDERS = ['site-b', 'site-c', 'site-d'];
const KEYS = new Map(SITES.map((s) => [s, siteKeyPair()]));
const MALLORY = siteKeyPair();
const encoder = new TextEncoder();
const json = (v: unknown) => encoder.encode(JSON.stringify(v));

type Env = Record<string, unknown> & { object: Record<string, unknown> };

interface Message {
  kind: string;
  subject: string;
  raw: Uint8Array;
  /** What the object store returns for the envelope's object (null: nothing). */
  bytes: Uint8Array | null;
}

class Fuzzer {
  readonly rng: Rng;
  readonly codec: Codec;
  readonly honest: Uint8Array;
  /** Per sender, a nonce admitted once and then refused (its object was bad): spent. */
  readonly burned = new Map<string, { nonce: string; raw: Uint8Array }>();
  readonly history: Message[] = [];

  constructor(seed: number, codec: Codec) {
    this.rng = Rng.from(seed, 'fuzz', codec);
    this.codec = codec;
    const delta = Float32Array.from({ length: N }, () => this.rng.normal(0, 0.1));
    this.honest = encodeUpdate(delta, LAYOUT, { codec, topkFraction: FRACTION }).bytes;
  }

  /** Nonces and task ids from the seeded stream too, so that a seed replays the same bytes. */
  nonce(): string {
    return Array.from({ length: 22 }, () => 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'[this.rng.int(64)]).join('');
  }

  pick<T>(items: readonly T[]): T {
    return items[this.rng.int(items.length)]!;
  }

  chance(p: number): boolean {
    return this.rng.uniform() < p;
  }

  /** A well-formed envelope of round 3 for `site` whose object is `bytes` (not yet signed). */
  envelope(site: string, bytes: Uint8Array, round = 3): Env {
    const nonce = this.nonce();
    return {
      type: 'update',
      protocol: PROTOCOL_VERSION,
      job: JOB,
      site,
      round,
      taskId: this.nonce(),
      nonce,
      samples: 1 + this.rng.int(500),
      trainLoss: 0.5,
      steps: 10,
      codec: this.codec,
      object: { bucket: buckets(JOB).updates(site), name: objectNames.update(round, nonce), sha256: sha256Hex(bytes), size: bytes.length },
    };
  }

  sign(env: Env, site = env.site as string): Env {
    return signEnvelope(env, (KEYS.get(site) ?? MALLORY).seed) as Env;
  }

  next(): Message {
    const roll = this.rng.uniform();
    const m =
      roll < 0.1
        ? this.garbage()
        : roll < 0.25
          ? this.byteMutation()
          : roll < 0.6
            ? this.fieldMutation()
            : roll < 0.92
              ? this.objectMutation()
              : roll < 0.96
                ? this.missingObject()
                : this.replay();
    this.history.push(m);
    if (this.history.length > 200) this.history.shift();
    return m;
  }

  garbage(): Message {
    const texts = ['', '{}', '[]', 'null', '0', '"update"', '{"type":"update"}', '{"protocol":1}', '{"protocol":"1"}', '\u0000'];
    const raw = this.chance(0.5) ? encoder.encode(this.pick(texts)) : Uint8Array.from({ length: this.rng.int(400) }, () => this.rng.int(256));
    return { kind: 'garbage', subject: this.pick(SENDERS), raw, bytes: this.honest };
  }

  /** Random byte edits of a signed envelope that can never be taken (its nonce is spent, or its site not sampled). */
  byteMutation(): Message {
    const site = this.pick(SENDERS);
    const base = this.chance(0.7) ? this.burned.get(site)!.raw : encoder.encode(JSON.stringify(this.sign(this.envelope('site-e', this.honest))));
    const subject = base === this.burned.get(site)!.raw ? site : 'site-e';
    let bytes = [...base];
    for (let edits = 1 + this.rng.int(4); edits > 0; edits--) {
      const at = this.rng.int(bytes.length + 1);
      const op = this.rng.int(4);
      if (op === 0 && at < bytes.length) bytes[at] = this.rng.int(256);
      else if (op === 1) bytes.splice(at, 0, this.chance(0.5) ? this.rng.int(256) : this.pick([0x20, 0x09, 0x0a, 0x22, 0x2c, 0x7b, 0x7d, 0x30]));
      else if (op === 2) bytes.splice(at, 1);
      else bytes = bytes.slice(0, at);
    }
    return { kind: 'byte-mutation', subject, raw: Uint8Array.from(bytes), bytes: this.honest };
  }

  /** One hostile change to an otherwise valid envelope, signed with a key the mutation chooses. */
  fieldMutation(): Message {
    const site = this.pick(SENDERS);
    const env = this.envelope(site, this.honest);
    let subject = site;
    let signer: string | undefined = site;
    let kind = 'field';
    let text: ((s: string) => string) | undefined;
    const wrongTyped = (v: unknown): unknown => {
      const options: unknown[] = typeof v === 'number' ? ['7', true, null, [], {}] : typeof v === 'string' ? [7, false, null, [v], { v }] : ['x', 1, [], null];
      return this.pick(options);
    };
    switch (this.rng.int(17)) {
      case 0: {
        const key = this.pick(Object.keys(env));
        env[key] = wrongTyped(env[key]);
        kind = `wrong type of ${key}`;
        break;
      }
      case 1: {
        const key = this.pick(Object.keys(env));
        delete env[key];
        kind = `missing ${key}`;
        break;
      }
      case 2:
        env[this.pick(['extra', 'signatures', 'Round', '__proto__x', 'weights'])] = this.pick([1, 'x', null]);
        kind = 'extra field';
        break;
      case 3:
        env.protocol = this.pick([0, 2, 3, 1000, -1, 1.5, 1e9]);
        kind = 'protocol';
        break;
      case 4:
        env.job = this.pick(['default_other', 'other_fuzz', 'DEFAULT_FUZZ', '', 'default_fuzz.>', 'x'.repeat(300)]);
        kind = 'job';
        break;
      case 5: {
        // Never 1 or 2: those are within maxStaleness and would be taken (buffered mode).
        const round = this.pick([0, 0, 0, 4, 5, 17, 1_000_000, 1_000_001, -1, 2.5, 2 ** 53, 1e300]);
        env.round = round;
        if (this.chance(0.5) && Number.isSafeInteger(round) && round >= 0) env.object.name = objectNames.update(round, env.nonce as string);
        kind = 'round';
        break;
      }
      case 6:
        env.samples = this.pick([0, -5, 1.5, 2 ** 41, 2 ** 60, Number.MAX_VALUE]);
        kind = 'samples';
        break;
      case 7:
        text = (s) => s.replace('"trainLoss":0.5', this.pick(['"trainLoss":1e999', '"trainLoss":-1e999', '"trainLoss":NaN', '"trainLoss":null']));
        kind = 'trainLoss';
        break;
      case 8: {
        const burned = this.burned.get(site)!.nonce;
        const nonce = this.pick([burned, burned, 'short', 'has space in it!!', 'x'.repeat(65), '']);
        env.nonce = nonce;
        if (this.chance(0.8)) env.object.name = objectNames.update(3, nonce);
        kind = 'nonce';
        break;
      }
      case 9: {
        const who = this.rng.int(4);
        if (who === 0) {
          subject = this.pick(SENDERS.filter((s) => s !== site)); // speaks as another site
        } else if (who === 1) {
          subject = 'mallory';
          Object.assign(env, this.envelope('mallory', this.honest));
          signer = 'mallory';
        } else if (who === 2) {
          subject = 'site-e'; // a site of the job, not sampled
          Object.assign(env, this.envelope('site-e', this.honest));
          signer = 'site-e';
        } else {
          subject = 'site-a'; // already counted this round
          Object.assign(env, this.envelope('site-a', this.honest));
          signer = 'site-a';
        }
        kind = `site (${['impersonation', 'unknown', 'not sampled', 'second update'][who]})`;
        break;
      }
      case 10: {
        const how = this.rng.int(6);
        kind = `signature (${['other key', 'forged', 'missing', 'truncated', 'not base64', 'too long'][how]})`;
        if (how === 0) signer = this.pick(SITES.filter((s) => s !== site));
        else {
          signer = undefined;
          const real = (this.sign(env).signature as string) ?? '';
          const forged = Array.from({ length: 86 }, () => 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'[this.rng.int(64)]).join('');
          if (how === 1) env.signature = forged;
          else if (how === 3) env.signature = real.slice(0, 1 + this.rng.int(85));
          else if (how === 4) env.signature = `${real.slice(0, 40)}!${real.slice(41)}`;
          else if (how === 5) env.signature = forged.repeat(7);
        }
        break;
      }
      case 11:
        env.codec = this.pick(['none', 'fp16', 'int8', 'topk', 'zip', ''].filter((c) => c !== this.codec));
        kind = 'codec';
        break;
      case 12: {
        const how = this.rng.int(6);
        kind = `object ref (${how})`;
        if (how === 0) env.object.bucket = buckets(JOB).updates(this.pick(SITES.filter((s) => s !== site)));
        else if (how === 1) env.object.name = this.pick([objectNames.global(3), objectNames.update(2, env.nonce as string), objectNames.checkpoint, 'x']);
        else if (how === 2) env.object.size = this.pick([MAX_UPDATE + 1, 2 ** 40, 2 ** 50]);
        else if (how === 3) env.object.size = this.pick([2 ** 51, -1, 1.5]);
        else if (how === 4) env.object.sha256 = this.pick(['xyz', 'AB'.repeat(32), '']);
        else env.object.bucket = '../../etc';
        break;
      }
      case 13:
        env.taskId = 'x'.repeat(70_000);
        kind = 'huge envelope';
        break;
      case 14:
        env.type = this.pick(['evaluation', 'hello', 'Update', '']);
        kind = 'type';
        break;
      case 15:
        env.steps = this.pick([-1, 0.5, '3']);
        kind = 'steps';
        break;
      default:
        signer = undefined;
        kind = 'unsigned';
        break;
    }
    const signed = signer ? this.sign(env, signer) : env;
    const raw = JSON.stringify(signed);
    return { kind: `field: ${kind}`, subject, raw: encoder.encode(text ? text(raw) : raw), bytes: this.honest };
  }

  /** A valid, fresh envelope whose object is hostile (its hash and size matching unless said otherwise). */
  objectMutation(): Message {
    const site = this.pick(SENDERS);
    let kind: string;
    let bytes: Uint8Array;
    let declared: Uint8Array | undefined; // what the envelope describes, when it differs from what is fetched
    const roll = this.rng.int(10);
    if (roll === 0) {
      bytes = this.honest.slice(0, this.rng.int(this.honest.length));
      kind = 'truncated';
    } else if (roll === 1) {
      bytes = new Uint8Array(this.honest.length + 1 + this.rng.int(64));
      bytes.set(this.honest);
      kind = 'trailing bytes';
    } else if (roll === 2) {
      bytes = Uint8Array.from({ length: this.rng.int(MAX_UPDATE) }, () => this.rng.int(256));
      kind = 'random bytes';
    } else if (roll === 3) {
      bytes = this.honest.slice();
      new DataView(bytes.buffer).setBigUint64(0, this.pick([2n ** 64n - 1n, 2n ** 53n, BigInt(bytes.length), 0n, 1n]), true);
      kind = 'header length';
    } else if (roll === 4) {
      const shape = this.pick([[2 ** 40], [2 ** 53], [2 ** 20, 2 ** 20, 2 ** 20], [-1], [1e300]]);
      const header = {
        __metadata__: { format: 'consort.update/v1', codec: this.codec },
        huge: { dtype: 'F32', shape, data_offsets: [0, this.pick([4, 2 ** 42, 2 ** 53])] },
      };
      const text = encoder.encode(JSON.stringify(header));
      bytes = new Uint8Array(8 + text.length + 4);
      new DataView(bytes.buffer).setBigUint64(0, BigInt(text.length), true);
      bytes.set(text, 8);
      kind = 'huge declared shape';
    } else if (roll === 5) {
      declared = this.honest;
      bytes = this.honest.slice();
      bytes[this.rng.int(bytes.length)]! ^= 1 + this.rng.int(255);
      kind = 'hash mismatch';
    } else if (roll === 6) {
      declared = this.honest;
      bytes = this.chance(0.5) ? this.honest.slice(0, this.honest.length - 1 - this.rng.int(8)) : new Uint8Array(MAX_UPDATE + 1 + this.rng.int(1000));
      kind = 'size differs from the envelope';
    } else {
      [kind, bytes] = this.tensorMutation();
    }
    const env = this.envelope(site, declared ?? bytes);
    return { kind: `object: ${kind}`, subject: site, raw: json(this.sign(env)), bytes };
  }

  /** Edits the honest object's tensors so that it cannot be a valid update of this codec. */
  tensorMutation(): [string, Uint8Array] {
    const { tensors: map, metadata } = decodeTensors(this.honest, { maxBytes: 1 << 20, maxTensors: 100 });
    let tensors: NamedTensor[] = [...map.values()];
    const floats = tensors.filter((t) => t.dtype === 'F32' || t.dtype === 'F16');
    const t = this.pick(tensors);
    const i = this.rng.int(Math.max(1, t.data.length));
    switch (this.rng.int(9)) {
      case 0: {
        const f = this.pick(floats);
        const j = this.rng.int(f.data.length);
        if (f.dtype === 'F16') (f.data as Uint16Array)[j] = this.pick([0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xffff]);
        else (f.data as Float32Array)[j] = this.pick([Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]);
        return ['NaN/Inf', encodeTensors(tensors, metadata)];
      }
      case 1:
        tensors = tensors.filter((x) => x !== t);
        return ['tensor dropped', encodeTensors(tensors, metadata)];
      case 2:
        tensors.push({ name: this.pick(['extra', 'control:dense/bias', 'indices2', `${t.name}:scale2`]), dtype: 'F32', shape: [1], data: new Float32Array(1) });
        if (tensors.filter((x) => x.name === tensors.at(-1)!.name).length > 1) tensors.pop();
        if (tensors.length === map.size) tensors.push({ name: 'extra', dtype: 'I8', shape: [2], data: new Int8Array(2) });
        return ['tensor added', encodeTensors(tensors, metadata)];
      case 3:
        t.name = `${t.name}x`;
        return ['tensor renamed', encodeTensors(tensors, metadata)];
      case 4:
        t.shape = [1, ...t.shape];
        return ['rank changed', encodeTensors(tensors, metadata)];
      case 5:
        metadata.codec = this.pick(['none', 'fp16', 'int8', 'topk', 'gzip'].filter((c) => c !== this.codec));
        return ['metadata codec', encodeTensors(tensors, metadata)];
      case 6: {
        const wide = tensors.filter((x) => x.dtype === 'F32' || x.dtype === 'I32');
        if (wide.length === 0) return ['format missing', encodeTensors(tensors, { codec: this.codec })];
        const w = this.pick(wide);
        w.data =
          w.dtype === 'F32'
            ? new Int32Array(w.data.buffer, w.data.byteOffset, w.data.length)
            : new Float32Array(w.data.buffer, w.data.byteOffset, w.data.length);
        w.dtype = w.dtype === 'F32' ? 'I32' : 'F32';
        return ['dtype swapped', encodeTensors(tensors, metadata)];
      }
      case 7: {
        // Codec-specific impossibilities.
        if (this.codec === 'topk') {
          const ix = map.get('indices')!.data as Int32Array;
          const how = this.rng.int(4);
          if (how === 0) ix[this.rng.int(ix.length)] = this.pick([N, N + 1, -1, 2 ** 31 - 1, -(2 ** 31)]);
          else if (how === 1 && ix.length > 1) ix[1] = ix[0]!;
          else if (how === 2 && ix.length > 1) ix.reverse();
          else ix[0] = N + 100;
          return ['indices', encodeTensors(tensors, metadata)];
        }
        if (this.codec === 'int8') {
          const q = tensors.find((x) => x.dtype === 'I8')!;
          if (this.chance(0.5)) (q.data as Int8Array)[this.rng.int(q.data.length)] = -128;
          else (tensors.find((x) => x.name === `${q.name}:scale`)!.data as Float32Array)[0] = -this.rng.uniform() - 1e-3;
          return ['int8 range', encodeTensors(tensors, metadata)];
        }
        return ['format wrong', encodeTensors(tensors, { ...metadata, format: 'consort.update/v0' })];
      }
      default: {
        // Finite but beyond the ingestor's ±2^20.
        if (this.codec === 'none') (t.data as Float32Array)[i] = this.pick([1, -1]) * this.pick([2 ** 21, 1e7, 3e38]);
        else if (this.codec === 'topk') (map.get('values')!.data as Float32Array)[0] = -1e9;
        else if (this.codec === 'int8') {
          const q = tensors.find((x) => x.dtype === 'I8')!;
          (q.data as Int8Array)[0] = 127;
          (tensors.find((x) => x.name === `${q.name}:scale`)!.data as Float32Array)[0] = 1e6;
        } else return ['tensor dropped (fp16 cannot exceed 65504)', encodeTensors(tensors.slice(1), metadata)];
        return ['out of range', encodeTensors(tensors, metadata)];
      }
    }
  }

  missingObject(): Message {
    const site = this.pick(SENDERS);
    return { kind: 'object missing', subject: site, raw: json(this.sign(this.envelope(site, this.honest))), bytes: null };
  }

  replay(): Message {
    if (this.history.length === 0 || this.chance(0.3)) {
      const site = this.pick(SENDERS);
      return { kind: 'replay of a spent nonce', subject: site, raw: this.burned.get(site)!.raw, bytes: this.honest };
    }
    const earlier = this.pick(this.history);
    return { ...earlier, kind: `replay of ${earlier.kind}` };
  }
}

type Outcome = { code: RejectionCode } | { accepted: true } | { duplicate: true };

/** The coordinator shell's handling of one message. */
function feed(ing: UpdateIngestor, acc: RoundAccumulator, m: Message): Outcome {
  const e = ing.checkEnvelope(m.subject, m.raw);
  if (!e.ok) return { code: e.rejection.code };
  if (e.duplicate) return { duplicate: true };
  if (m.bytes === null) return { code: ing.reject(e.envelope, 'CONSORT_R_OBJECT_MISSING', 'not in the bucket').code };
  const o = ing.checkObject(e.envelope, m.bytes);
  if (!o.ok) return { code: o.rejection.code };
  acc.add(o.result);
  ing.commit(e.envelope);
  return { accepted: true };
}

function campaign(codec: Codec, count: number, seed: number): Map<RejectionCode, number> {
  const fuzz = new Fuzzer(seed, codec);
  const ing = new UpdateIngestor({
    job: JOB,
    protocol: PROTOCOL_VERSION,
    siteKeys: new Map([...KEYS].map(([s, k]) => [s, k.publicKey])),
    layout: LAYOUT,
    codec,
    topkFraction: FRACTION,
    maxUpdateBytes: MAX_UPDATE,
    mode: 'buffered',
    maxStaleness: 2,
    maxAttemptsPerRound: 1_000_000,
  });
  for (let r = 1; r <= 3; r++) ing.beginRound(r, ['site-a', ...SENDERS]);
  // Before the fuzz: site A's honest update is counted, and each sender spends a nonce on a bad object.
  const acc = new RoundAccumulator(N);
  const honest = fuzz.sign(fuzz.envelope('site-a', fuzz.honest));
  expect(feed(ing, acc, { kind: 'honest', subject: 'site-a', raw: json(honest), bytes: fuzz.honest })).toEqual({ accepted: true });
  for (const site of SENDERS) {
    const env = fuzz.sign(fuzz.envelope(site, new Uint8Array(3)));
    const raw = json(env);
    expect(feed(ing, acc, { kind: 'burn', subject: site, raw, bytes: new Uint8Array(3) })).toEqual({ code: 'CONSORT_R_BAD_ENCODING' });
    fuzz.burned.set(site, { nonce: env.nonce as string, raw });
  }
  const aggregate = Buffer.from(acc.finish(3).meanDelta.buffer).toString('hex');
  const accepted = JSON.stringify(ing.snapshot().accepted);
  const before = ing.counts();

  const seen = new Map<RejectionCode, number>();
  for (let i = 0; i < count; i++) {
    const m = fuzz.next();
    const where = `seed ${seed} (CONSORT_FUZZ_SEED=${seed}), codec ${codec}, message ${i} (${m.kind})`;
    let outcome: Outcome;
    try {
      outcome = feed(ing, acc, m);
    } catch (err) {
      throw new Error(`${where} threw: ${(err as Error).stack}`);
    }
    if (!('code' in outcome))
      throw new Error(`${where} was ${'accepted' in outcome ? 'accepted' : 'taken as a duplicate'}: ${new TextDecoder().decode(m.raw).slice(0, 400)}`);
    seen.set(outcome.code, (seen.get(outcome.code) ?? 0) + 1);
  }

  const after = ing.counts();
  const added = REJECTION_CODES.reduce((n, code) => n + after[code] - before[code], 0);
  expect(added, `seed ${seed}, codec ${codec}: rejections counted`).toBe(count);
  for (const code of REJECTION_CODES) expect(after[code] - before[code], `seed ${seed}: ${code}`).toBe(seen.get(code) ?? 0);
  expect(ing.duplicates(), `seed ${seed}: duplicates`).toBe(0);
  expect(Buffer.from(acc.finish(3).meanDelta.buffer).toString('hex'), `seed ${seed}: the aggregate moved`).toBe(aggregate);
  expect(acc.sites).toBe(1);
  expect(JSON.stringify(ing.snapshot().accepted), `seed ${seed}: counted pairs changed`).toBe(accepted);
  // The one honest update is still a duplicate, not a second contribution.
  expect(feed(ing, acc, { kind: 'redelivery', subject: 'site-a', raw: json(honest), bytes: fuzz.honest })).toEqual({ duplicate: true });
  return seen;
}

describe('UpdateIngestor under fuzz', () => {
  it(`refuses 10,000 hostile messages (codec none, seed ${SEED}), each with a catalogue code`, () => {
    const seen = campaign('none', 10_000, SEED);
    // A varied campaign: the whole catalogue but what this set-up rules out (a round is open; attempts are unlimited).
    const unreachable = new Set<RejectionCode>(['CONSORT_R_NOT_READY', 'CONSORT_R_TOO_MANY_ATTEMPTS', ...HELLO_ONLY_REJECTIONS]);
    const missing = REJECTION_CODES.filter((code) => !unreachable.has(code) && !seen.has(code));
    expect(missing, `seed ${SEED}: codes never reached`).toEqual([]);
  });

  it.each(['fp16', 'int8', 'topk'] as const)(`refuses 2,500 hostile messages with codec %s (seed ${SEED})`, (codec) => {
    const seen = campaign(codec, 2_500, SEED);
    expect(seen.get('CONSORT_R_BAD_ENCODING')).toBeGreaterThan(0);
    expect(seen.get('CONSORT_R_NON_FINITE')).toBeGreaterThan(0);
    expect(seen.get('CONSORT_R_WRONG_SHAPE')).toBeGreaterThan(0);
    if (codec !== 'fp16') expect(seen.get('CONSORT_R_OUT_OF_RANGE')).toBeGreaterThan(0);
  });
});
