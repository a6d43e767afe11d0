// The terms of a job that every process running it must share: what the sites train (model,
// classes, training, the strategy's client side, compression) and the seed behind every random
// choice. Sites and coordinator started with different copies of a job file (another seed, a
// different model) would otherwise train and aggregate different things without a word, and a
// coordinator would resume a checkpoint of another job's training. Rounds, sampling, evaluation,
// stopping and the site list may change while a job runs: they are not terms.
import type { FederatedJobSpec } from './federated-job.ts';

const TERMS = ['model', 'classes', 'training', 'strategy', 'compression', 'seed'] as const;

/** JSON with object keys sorted at every level: the same value, the same text. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/** The job's terms as canonical JSON (what a hello and a checkpoint carry). */
export function jobTerms(spec: FederatedJobSpec): string {
  return canonical(Object.fromEntries(TERMS.map((k) => [k, spec[k]])));
}

/**
 * Which terms differ between `ours` and `theirs` (jobTerms texts), each with both values, e.g.
 * `seed (42 here, 7 there)`; undefined when they agree. Text that is not terms JSON differs as a whole.
 */
export function termsDiffer(ours: string, theirs: string, names: { here: string; there: string } = { here: 'here', there: 'there' }): string | undefined {
  if (ours === theirs) return undefined;
  let a: Record<string, unknown>;
  let b: Record<string, unknown>;
  try {
    a = JSON.parse(ours) as Record<string, unknown>;
    b = JSON.parse(theirs) as Record<string, unknown>;
  } catch {
    return 'the job terms (unreadable)';
  }
  const short = (v: unknown) => {
    const t = v === undefined ? 'unset' : canonical(v);
    return t.length > 80 ? `${t.slice(0, 77)}...` : t;
  };
  const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
  // Down to the fields that differ (spec.training.learningRate, not all of spec.training).
  const differences = (x: Record<string, unknown>, y: Record<string, unknown>, path: string): string[] =>
    [...new Set([...Object.keys(x), ...Object.keys(y)])]
      .sort()
      .filter((k) => canonical(x[k]) !== canonical(y[k]))
      .flatMap((k) =>
        isObject(x[k]) && isObject(y[k])
          ? differences(x[k], y[k], `${path}.${k}`)
          : [`${path}.${k} (${short(x[k])} ${names.here}, ${short(y[k])} ${names.there})`],
      );
  return differences(a, b, 'spec').join('; ') || 'the job terms';
}
