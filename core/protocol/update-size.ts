// How large an update object may be, and how much a site's update bucket may hold. An update's
// size is fixed by the job and the model, not by its values: the codec fixes every tensor's dtype
// and shape (top-k's k comes from the job's fraction), SCAFFOLD adds its control delta, and the
// safetensors header lists those tensors. So the coordinator knows, once the model layout is
// known, the exact size of every honest update; anything declared larger is refused before it is
// read, and a bucket holds no more than the updates it can legitimately hold at once.
import type { CompressionSpec } from '../job/federated-job.ts';
import type { ParameterLayout } from '../model/layout.ts';
import { bytesOfTensors } from '../tensor/safetensors.ts';
import { bytesOfUpdate } from './codecs.ts';

interface SizedSpec {
  compression: CompressionSpec;
  strategy: { name: string };
  aggregation: { maxStaleness: number };
  model: { type: string };
}

/**
 * Header bytes another honest encoder may write beyond ours (spacing in the JSON, more metadata):
 * 1 KiB, and 32 bytes a tensor (`: ` and `, ` between every key and value of an entry is 10).
 */
export function updateHeaderSlack(tensors: number): number {
  return 1024 + 32 * tensors;
}

/**
 * The largest update object accepted for this model and job: the exact size of one encoded with
 * the job's codec (SCAFFOLD's control delta included: every SCAFFOLD update carries one, no other
 * may), plus updateHeaderSlack.
 */
export function maxUpdateBytes(layout: ParameterLayout, spec: Pick<SizedSpec, 'compression' | 'strategy'>): number {
  const control = spec.strategy.name === 'scaffold';
  const tensors =
    (spec.compression.codec === 'topk' ? 2 : spec.compression.codec === 'int8' ? 2 * layout.length : layout.length) + (control ? layout.length : 0);
  return bytesOfUpdate(layout, spec.compression, { control }) + updateHeaderSlack(tensors);
}

/**
 * What one site's update bucket may hold at once, the model known: `updateBytes` (an update's
 * limit) for each round an update may still be folded in (maxStaleness + 1) and a retried write
 * or two, each as stored (storedObjectBytes), plus, for a model file (layers), the copy of its
 * pre-trained weights the site put there before its hello (kept until round 1's checkpoint lets it
 * go): a compressed update is smaller than that copy.
 */
export function updateBucketCap(layout: ParameterLayout, spec: SizedSpec, updateBytes = maxUpdateBytes(layout, spec)): number {
  const pieces = 3 * layout.length + 1; // an update's tensors (int8: and a scale each; SCAFFOLD: a control each) and its header
  const initial = spec.model.type === 'layers' ? storedObjectBytes(initialWeightsBytes(layout), layout.length + 1) : 0;
  return (spec.aggregation.maxStaleness + 3) * storedObjectBytes(updateBytes, pieces) + initial;
}

/**
 * Bytes a bucket's stream counts for an object of `bytes` written in `pieces` (putObject): the
 * server counts each message's subject, headers and its own few bytes beside the payload. Chunks
 * are up to 1 MiB (OBJECT_CHUNK_BYTES, capped at the server's max_payload); one may be cut short
 * at each piece's end, and the payload of every other is at least half a chunk.
 */
export function storedObjectBytes(bytes: number, pieces: number): number {
  const messages = 2 * Math.ceil(bytes / MIN_CHUNK_BYTES) + pieces + 3; // and the metadata (its JSON under 1 KiB: counted as two)
  return bytes + messages * STORED_MESSAGE_BYTES;
}

/** Bytes beside a message's payload in a stream: its subject ($O.<bucket>.C.<nuid>), headers, the store's own. */
const STORED_MESSAGE_BYTES = 512;
/** The smallest chunk assumed (a server whose max_payload is under 64 KiB would make more). */
const MIN_CHUNK_BYTES = 64 * 1024;

/**
 * What one site's update bucket may hold before the model is known (no hello taken yet), or
 * undefined for no cap yet. A model the spec builds (logistic, mlp, cnn) takes its shape from the
 * sites' data, unknown here, but no site writes anything there before a round's task: room for
 * the Object Store's metadata only. A model file's pre-trained weights are put there before the
 * site's first hello, of a size only the file knows: no cap until the hello names it (a cap as
 * large as any model the coordinator could take, its memory, would be reserved out of the
 * server's store for every site, taking it from every other job on the server, or refused).
 */
export function preLayoutBucketCap(spec: Pick<SizedSpec, 'model'>): number | undefined {
  return spec.model.type === 'layers' ? undefined : PRE_LAYOUT_BYTES;
}

/** A bucket's room before the model is known, a model the spec builds: metadata only. */
export const PRE_LAYOUT_BYTES = 64 * 1024;

/** Bytes of a layout's float32 safetensors object without metadata: how a site sends its model file's weights. */
export function initialWeightsBytes(layout: ParameterLayout): number {
  return bytesOfTensors(layout.map((t) => ({ name: t.name, dtype: 'F32' as const, shape: [...t.shape] })));
}
