// Every error code the processes emit is in its catalogue: a code written in the source but
// missing there (CONSORT_C_DEADLINE and CONSORT_C_UNREACHABLE were, though every round's failures
// carried them) is a code nobody can look up, and one a dashboard or a site cannot rely on.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CliErrorCodes } from '../../cli/errors.ts';
import { PolicyCodes } from '../../core/job/site-policy.ts';
import { REJECTIONS } from '../../core/protocol/rejections.ts';
import { OperatorErrorCodes } from '../../operator/errors.ts';
import { WorkerErrorCodes } from '../../worker/errors.ts';

const ROOT = new URL('../../', import.meta.url).pathname;
const CATALOGUES = { OperatorErrorCodes, CliErrorCodes, WorkerErrorCodes, REJECTIONS, PolicyCodes };
/** Codes by family: C and API (operator/errors.ts), CLI, W, R, P. */
const CODE = /["'`](CONSORT_(?:C|API|CLI|W|R|P)_[A-Z0-9_]+)["'`]/g;

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sources(path);
    return name.endsWith('.ts') ? [path] : [];
  });
}

describe('error catalogues', () => {
  it('hold every code the source emits', () => {
    const known = new Set(Object.values(CATALOGUES).flatMap((c) => Object.keys(c)));
    const used = new Map<string, string>();
    for (const dir of ['core', 'operator', 'worker', 'cli']) {
      for (const file of sources(join(ROOT, dir))) {
        for (const m of readFileSync(file, 'utf8').matchAll(CODE)) if (!used.has(m[1]!)) used.set(m[1]!, file.slice(ROOT.length));
      }
    }
    // The scan finds codes (it would pass vacuously on a pattern that matches nothing).
    expect(used.size).toBeGreaterThan(40);
    expect([...used].filter(([code]) => !known.has(code)).map(([code, file]) => `${code} (${file})`)).toEqual([]);
  });

  it('give each code once, in one family', () => {
    const all = Object.values(CATALOGUES).flatMap((c) => Object.keys(c));
    expect(all.length).toBe(new Set(all).size);
  });
});
