// The one V8 setting every Consort process runs with (core/gc-tuning.ts): on at start-up, given up
// for good by a process that takes up a large model, never set with CONSORT_V8_DEFAULTS=0, and a
// flag this Node's V8 knows (an upgrade that dropped it would otherwise be ignored in silence).
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

const REPO = new URL('../..', import.meta.url).pathname;

/** The tuning states a fresh process goes through for `models` (bytes), as `gcTuning()` reports them. */
function states(models: number[], env: Record<string, string> = {}): string[] {
  const script = `
    import { gcTuning, tuneGcForModel, tuneGcForThroughput } from './core/gc-tuning.ts';
    const seen = [gcTuning()];
    tuneGcForThroughput();
    seen.push(gcTuning());
    for (const m of ${JSON.stringify(models)}) { tuneGcForModel(m); seen.push(gcTuning()); }
    tuneGcForThroughput();
    seen.push(gcTuning());
    console.log(JSON.stringify(seen));`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: REPO, env: { ...process.env, ...env }, encoding: 'utf8' });
  return JSON.parse(out.trim()) as string[];
}

describe('V8 tuning of a Consort process', () => {
  it('throughput from start-up, memory for good once a model of 32 MB or more is taken up', () => {
    expect(states([4e6, 31 * 2 ** 20, 32 * 2 ** 20, 1e6])).toEqual(['default', 'throughput', 'throughput', 'throughput', 'memory', 'memory', 'memory']);
    expect(states([1e9], { CONSORT_V8_DEFAULTS: '0' })).toEqual(['default', 'default', 'default', 'default']);
  });

  it('sets a flag this V8 knows', () => {
    const options = execFileSync(process.execPath, ['--v8-options'], { encoding: 'utf8', maxBuffer: 64 * 2 ** 20 });
    expect(options).toContain('--external-memory-accounted-in-global-limit');
  });
});
