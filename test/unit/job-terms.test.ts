// The terms every process of a job must share: the same spec gives the same text whatever the
// order of its keys, and a difference is named field by field with both values.
import { describe, expect, it } from 'vitest';
import { FederatedJobSpec } from '../../core/job/federated-job.ts';
import { jobTerms, termsDiffer } from '../../core/job/terms.ts';
import { hospitalSpec } from '../helpers/jobs.ts';

const spec = FederatedJobSpec.parse(hospitalSpec());

describe('jobTerms', () => {
  it('is the same text for the same terms in any key order, and leaves out what may change while a job runs', () => {
    const reordered = FederatedJobSpec.parse(Object.fromEntries(Object.entries(hospitalSpec()).reverse()));
    expect(jobTerms(reordered)).toBe(jobTerms(spec));
    expect(jobTerms({ ...spec, rounds: spec.rounds + 5, sampling: { ...spec.sampling, minSites: 2 }, sites: spec.sites.slice(1) })).toBe(jobTerms(spec));
    expect(Object.keys(JSON.parse(jobTerms(spec)))).toEqual(['compression', 'model', 'seed', 'strategy', 'training']);
  });

  it('names each differing term with both values', () => {
    const other = jobTerms({ ...spec, seed: spec.seed + 1, training: { ...spec.training, learningRate: 0.5 } });
    const said = termsDiffer(jobTerms(spec), other)!;
    expect(said).toBe(`spec.seed (${spec.seed} here, ${spec.seed + 1} there); spec.training.learningRate (${spec.training.learningRate} here, 0.5 there)`);
    expect(termsDiffer(jobTerms(spec), jobTerms(spec))).toBeUndefined();
    expect(termsDiffer(jobTerms(spec), 'not json')).toBe('the job terms (unreadable)');
  });
});
