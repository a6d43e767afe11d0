// How V8 collects the buffers a Consort process moves. The bytes of models and updates live in
// ArrayBuffers outside V8's heap (NATS chunks, sockets' reads, model and update buffers). By
// default V8 starts a full mark-compact each time 64 MB more of them were allocated, whatever the
// heap: a coordinator reading ten 4 MB updates a round ran two or three full collections a round,
// and spent more CPU collecting than hashing. With --external-memory-accounted-in-global-limit
// they are collected when heap and buffers together outgrow V8's global limit: 25-30 % less CPU in
// the coordinator and the sites for the same round (test/bench/nats-overhead.ts). The price is
// garbage kept longer: +50 MB of peak RSS for a 64 MB model, which for large models would break
// the coordinator's memory bound (test/bench/coordinator-rss.ts: 607 MB for a 256 MB model and 50
// sites, against the 584 MB bound; 554 MB in an earlier run with the default). So processes start with it (cli/consort.ts; the benchmarks too, to measure what
// runs), and one that takes up a large model gives it up for good (the flag is process-wide: an
// operator holding one large job's coordinator keeps memory first for all of them).
// CONSORT_V8_DEFAULTS=0 leaves V8's defaults throughout (to compare).
import { setFlagsFromString } from 'node:v8';

const FLAG = 'external-memory-accounted-in-global-limit';

/** Models from this size (bytes) keep V8's default: collected by the 64 MB rule, memory first. */
export const LARGE_MODEL_BYTES = 32 * 1024 * 1024;

let state: 'default' | 'throughput' | 'memory' = 'default';

/** At start-up: external buffers counted in the global limit (less CPU collecting). */
export function tuneGcForThroughput(): void {
  if (process.env.CONSORT_V8_DEFAULTS === '0' || state !== 'default') return;
  setFlagsFromString(`--${FLAG}`);
  state = 'throughput';
}

/** Once a process knows the model it moves: a large one puts memory first, for the rest of the process. */
export function tuneGcForModel(modelBytes: number): void {
  if (state !== 'throughput' || modelBytes < LARGE_MODEL_BYTES) return;
  setFlagsFromString(`--no-${FLAG}`);
  state = 'memory';
}

/** What this process runs with now (the benchmarks print it). */
export function gcTuning(): typeof state {
  return state;
}
