// The 256-bit folds (core/aggregation/wide-simd.ts): only in a process that allows them (one that
// trains nothing), there where the CPU has AVX2 (x64), never with CONSORT_V8_DEFAULTS=0; the inputs
// read by their bits exactly when on; and a flag this Node's V8 knows (an upgrade that dropped it
// would otherwise be ignored in silence, and the folds slower).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const REPO = new URL('../..', import.meta.url).pathname;

/** [wideSimd(), inputReading()] in a fresh process, after allowWideSimd() when `allow`; then again after a late allow. */
function choice(allow: boolean, env: Record<string, string> = {}): [boolean, string, boolean, string] {
  const script = `
    import { inputReading, maxAbs } from './core/aggregation/exact-kernel.ts';
    import { allowWideSimd, wideSimd } from './core/aggregation/wide-simd.ts';
    ${allow ? 'allowWideSimd();' : ''}
    maxAbs(new Float32Array([1, -2]));
    const first = [wideSimd(), inputReading()];
    allowWideSimd();
    console.log(JSON.stringify([...first, wideSimd(), inputReading()]));`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: REPO, env: { ...process.env, ...env }, encoding: 'utf8' });
  return JSON.parse(out.trim()) as [boolean, string, boolean, string];
}

function avx2(): boolean {
  try {
    return process.arch === 'x64' && /^flags\s*:.*\bavx2\b/m.test(readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return false;
  }
}

describe('256-bit folds', () => {
  it('are on where allowed and the CPU has AVX2, and then read the inputs by their bits; decided for good at the first kernel', () => {
    const wide = avx2();
    const reading = wide ? 'bits' : 'promote';
    expect(choice(true)).toEqual([wide, reading, wide, reading]);
    // Not allowed before the first kernel (a site's scan of an update): a later allow changes nothing.
    expect(choice(false)).toEqual([false, 'promote', false, 'promote']);
    expect(choice(true, { CONSORT_V8_DEFAULTS: '0' })).toEqual([false, 'promote', false, 'promote']);
  });

  it('set a flag this V8 knows', () => {
    const options = execFileSync(process.execPath, ['--v8-options'], { encoding: 'utf8', maxBuffer: 64 * 2 ** 20 });
    expect(options).toContain('--experimental-wasm-revectorize');
  });
});
