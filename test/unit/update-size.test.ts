// The coordinator bounded a site's declared update size only loosely: 64 MiB plus 16 bytes a
// parameter, whatever the codec and model, so for a model of 1,000 parameters a site could make it
// read 64 MiB an attempt. The bound is now the exact size of an update of the job's codec and
// model (update-size.ts), and no honest update of any codec, with or without SCAFFOLD's control
// delta, on a model of many long-named tensors too, is refused by it; one byte more is.
import { describe, expect, it } from 'vitest';
import type { ParameterLayout } from '../../core/model/layout.ts';
import { layoutSize } from '../../core/model/layout.ts';
import { type Codec, encodeUpdate } from '../../core/protocol/codecs.ts';
import { sha256Hex } from '../../core/protocol/digest.ts';
import { UpdateIngestor } from '../../core/protocol/ingestion.ts';
import type { UpdateEnvelope } from '../../core/protocol/messages.ts';
import { newNonce, signEnvelope, siteKeyPair } from '../../core/protocol/signing.ts';
import { buckets, objectNames, PROTOCOL_VERSION } from '../../core/protocol/subjects.ts';
import { maxUpdateBytes, updateBucketCap, updateHeaderSlack } from '../../core/protocol/update-size.ts';

const JOB = 'default_sizes';
const SITE = 'north';
const KEY = siteKeyPair();

const LOGISTIC: ParameterLayout = [
  { name: 'dense/kernel', shape: [30, 2] },
  { name: 'dense/bias', shape: [2] },
];
/** A Keras-style CNN: many tensors (batch norm's four a block), long scoped names. */
const CNN: ParameterLayout = Array.from({ length: 24 }, (_, b) => {
  const scope = `functional_backbone/stage_${b}_residual_block_with_a_long_descriptive_keras_scope_name/conv2d_${b}`;
  return [
    { name: `${scope}/kernel`, shape: [3, 3, 8, 8] },
    { name: `${scope}/bias`, shape: [8] },
    { name: `${scope}_batch_normalization/gamma`, shape: [8] },
    { name: `${scope}_batch_normalization/beta`, shape: [8] },
    { name: `${scope}_batch_normalization/moving_mean`, shape: [8] },
    { name: `${scope}_batch_normalization/moving_variance`, shape: [8] },
  ];
}).flat();

const CODECS: Array<{ codec: Codec; topkFraction: number }> = [
  { codec: 'none', topkFraction: 0.01 },
  { codec: 'fp16', topkFraction: 0.01 },
  { codec: 'int8', topkFraction: 0.01 },
  { codec: 'topk', topkFraction: 0.01 },
  { codec: 'topk', topkFraction: 0.37 },
  { codec: 'topk', topkFraction: 1 },
];

function ingestor(layout: ParameterLayout, compression: { codec: Codec; topkFraction: number }, scaffold: boolean): UpdateIngestor {
  const ing = new UpdateIngestor({
    job: JOB,
    protocol: PROTOCOL_VERSION,
    siteKeys: new Map([[SITE, KEY.publicKey]]),
    layout,
    codec: compression.codec,
    topkFraction: compression.topkFraction,
    control: scaffold,
    maxUpdateBytes: maxUpdateBytes(layout, { compression, strategy: { name: scaffold ? 'scaffold' : 'fedavg' } }),
    mode: 'sync',
    maxStaleness: 0,
  });
  ing.beginRound(1, [SITE]);
  return ing;
}

function envelope(bytes: Uint8Array, codec: Codec, size = bytes.length): { env: UpdateEnvelope; raw: Uint8Array } {
  const nonce = newNonce();
  const env = signEnvelope(
    {
      type: 'update',
      protocol: PROTOCOL_VERSION,
      job: JOB,
      site: SITE,
      round: 1,
      taskId: newNonce(),
      nonce,
      samples: 10,
      trainLoss: 0.5,
      steps: 3,
      codec,
      object: { bucket: buckets(JOB).updates(SITE), name: objectNames.update(1, nonce), sha256: sha256Hex(bytes), size },
    },
    KEY.seed,
  ) as UpdateEnvelope;
  return { env, raw: new TextEncoder().encode(JSON.stringify(env)) };
}

/** Values of every magnitude up to the ingestor's largest, none zero: every coordinate a candidate for top-k. */
function values(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return ((s / 2 ** 31) * 2 - 1) * 2 ** 19 + 1e-3;
  });
}

/** The update as another encoder might write it: the same tensors, with a space after every `:` and `,` of the JSON header. */
function spacedHeader(bytes: Uint8Array): Uint8Array {
  const length = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = new TextDecoder().decode(bytes.subarray(8, 8 + length)).trimEnd();
  const spaced = (v: unknown): string =>
    Array.isArray(v)
      ? `[${v.map(spaced).join(', ')}]`
      : typeof v === 'object' && v !== null
        ? `{${Object.entries(v)
            .map(([k, x]) => `${JSON.stringify(k)}: ${spaced(x)}`)
            .join(', ')}}`
        : JSON.stringify(v);
  let text = spaced(JSON.parse(header));
  text += ' '.repeat((8 - ((8 + text.length) % 8)) % 8);
  const head = new TextEncoder().encode(text);
  const out = new Uint8Array(8 + head.length + bytes.length - 8 - length);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  out.set(bytes.subarray(8 + length), 8 + head.length);
  return out;
}

describe("an update's size bound", () => {
  for (const [model, layout] of [
    ['logistic', LOGISTIC],
    ['a CNN of many long-named tensors', CNN],
  ] as const) {
    for (const compression of CODECS) {
      for (const scaffold of [false, true]) {
        const what = `${model}, ${compression.codec}${compression.codec === 'topk' ? ` ${compression.topkFraction}` : ''}${scaffold ? ', SCAFFOLD' : ''}`;
        it(`takes every honest update (${what}), and refuses a declared size one byte over`, () => {
          const n = layoutSize(layout);
          const max = maxUpdateBytes(layout, { compression, strategy: { name: scaffold ? 'scaffold' : 'fedavg' } });
          const encoded = encodeUpdate(values(n, 1), layout, compression, {
            residual: values(n, 2).map((x) => x / 4),
            ...(scaffold ? { control: values(n, 3) } : {}),
          }).bytes;
          // Exact: what the slack leaves is the header another encoder may write longer.
          expect(max).toBe(encoded.length + updateHeaderSlack(tensorsOf(layout, compression.codec, scaffold)));
          for (const bytes of [encoded, spacedHeader(encoded)]) {
            expect(bytes.length).toBeLessThanOrEqual(max);
            const ing = ingestor(layout, compression, scaffold);
            const { env, raw } = envelope(bytes, compression.codec);
            const admitted = ing.checkEnvelope(SITE, raw);
            expect(admitted.ok ? 'admitted' : admitted.rejection).toBe('admitted');
            const read = ing.checkObject(env, bytes);
            expect(read.ok ? 'accepted' : read.rejection).toBe('accepted');
          }
          const atMost = ingestor(layout, compression, scaffold).checkEnvelope(SITE, envelope(encoded, compression.codec, max).raw);
          expect(atMost.ok).toBe(true);
          const over = ingestor(layout, compression, scaffold).checkEnvelope(SITE, envelope(encoded, compression.codec, max + 1).raw);
          expect(over.ok).toBe(false);
          if (over.ok) return;
          expect(over.rejection.code).toBe('CONSORT_R_OVERSIZED');
          expect(over.rejection.reason).toContain(`declares ${max + 1} bytes`);
          expect(over.rejection.reason).toContain(`at most ${max}`);
        });
      }
    }
  }

  it('is a model-sized figure, not 64 MiB: 1,000 parameters with top-k 1% allow a few KiB an update, a bucket a few more', () => {
    const layout: ParameterLayout = [
      { name: 'dense/kernel', shape: [999] },
      { name: 'dense/bias', shape: [1] },
    ];
    const spec = { compression: { codec: 'topk' as const, topkFraction: 0.01 }, strategy: { name: 'fedavg' }, aggregation: { maxStaleness: 2 } };
    const max = maxUpdateBytes(layout, spec);
    expect(max).toBeLessThan(2 * 1024);
    expect(updateBucketCap(layout, { ...spec, model: { type: 'mlp' } })).toBeLessThan(64 * 1024);
    // A model file's bucket also holds the copy of its weights the site put there before its hello.
    expect(updateBucketCap(layout, { ...spec, model: { type: 'layers' } })).toBeGreaterThan(
      updateBucketCap(layout, { ...spec, model: { type: 'mlp' } }) + 4000,
    );
  });
});

function tensorsOf(layout: ParameterLayout, codec: Codec, scaffold: boolean): number {
  return (codec === 'topk' ? 2 : codec === 'int8' ? 2 * layout.length : layout.length) + (scaffold ? layout.length : 0);
}
