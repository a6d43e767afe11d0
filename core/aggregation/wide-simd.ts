// Whether the fold kernels run 256 bits wide. WebAssembly SIMD is 128 bits, two float64 lanes, and
// the exact fold is bound by its arithmetic (exact-kernel.ts). V8 can pair 128-bit operations on
// adjacent memory into AVX2 ones (--experimental-wasm-revectorize: x64 only, built into Node's V8,
// off by default), which nearly halves the fold's instructions, but it cannot pair
// f64x2.promote_low_f32x4. So where it is on, the kernels read float32 inputs by their bits
// (exact-kernel.ts, 'bits'), which it can pair; elsewhere they keep the promotion, one operation
// fewer at 128 bits. Both readings give the same product, hence the same bits of every sum; the
// test suite compares them, also in V8's optimized code (test/unit/aggregation.test.ts).
//
// The flag is process-wide and experimental, and it would also revectorize tfjs-backend-wasm,
// which trains small models. So only processes that aggregate and train nothing turn it on (the
// coordinator, the operator that hosts coordinators, the aggregation benchmark), where the
// CPU has AVX2; CONSORT_V8_DEFAULTS=0 leaves V8 as shipped, here as in core/gc-tuning.ts.
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';

export const REVECTORIZE_FLAG = 'experimental-wasm-revectorize';

let allowed = false;
let decided: boolean | undefined;

function hasAvx2(): boolean {
  try {
    return /^flags\s*:.*\bavx2\b/m.test(readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return false;
  }
}

/** At the start of a process that aggregates and trains nothing: wide folds where the CPU has them. */
export function allowWideSimd(): void {
  allowed = true;
}

/**
 * Whether this process folds 256 bits wide. Decided when the first kernel is compiled (the flag
 * applies to code compiled after it is set), and for good: every kernel of a process reads alike.
 */
export function wideSimd(): boolean {
  if (decided === undefined) {
    decided = allowed && process.env.CONSORT_V8_DEFAULTS !== '0' && process.arch === 'x64' && hasAvx2();
    if (decided) setFlagsFromString(`--${REVECTORIZE_FLAG}`);
  }
  return decided;
}
