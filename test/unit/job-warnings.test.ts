// Rules a valid job sets that cannot act as written are said before the job runs.
import { describe, expect, it } from 'vitest';
import { FederatedJobSpec } from '../../core/job/federated-job.ts';
import { aucTargetWarnings, dataWarnings, jobWarnings, scaleWarnings } from '../../core/job/warnings.ts';
import { momentsOf } from '../../core/data/moments.ts';

const spec = (extra: Record<string, unknown>) =>
  FederatedJobSpec.parse({ model: { type: 'mlp' }, sites: [{ name: 'a', data: { type: 'synthetic', generator: 'hospital', samples: 10 } }], ...extra });

describe('jobWarnings', () => {
  it('a patience that the evaluations can never exhaust, and a target checked only at the end', () => {
    expect(jobWarnings(spec({ rounds: 5, evaluation: { every: 10 }, stopping: { patience: 2 } }))).toEqual([
      'stopping.patience 2 cannot stop the job: 5 rounds evaluated every 10 give 1 evaluation, and patience needs 3 (the first sets the best)',
    ]);
    // 10 rounds every 3: rounds 3, 6, 9 and the last, 10.
    expect(jobWarnings(spec({ rounds: 10, evaluation: { every: 3 }, stopping: { patience: 4 } }))[0]).toContain('give 4 evaluations, and patience needs 5');
    expect(jobWarnings(spec({ rounds: 10, evaluation: { every: 3 }, stopping: { patience: 3 } }))).toEqual([]);
    expect(jobWarnings(spec({ rounds: 4, evaluation: { every: 4 }, stopping: { target: { metric: 'accuracy', value: 0.9 } } }))).toEqual([
      'stopping.target can only be checked after the last round: evaluation.every 4 leaves one evaluation in 4 rounds',
    ]);
    expect(jobWarnings(spec({}))).toEqual([]);
  });
});

describe('jobWarnings on sampling', () => {
  it('a fraction that asks fewer sites than minSites: each round asks minSites, and says so', () => {
    const four = (sampling: Record<string, unknown>) =>
      FederatedJobSpec.parse({
        model: { type: 'mlp' },
        sites: ['a', 'b', 'c', 'd'].map((name) => ({ name, data: { type: 'synthetic', generator: 'hospital', samples: 10 } })),
        sampling,
      });
    expect(jobWarnings(four({ fraction: 0.5, minSites: 3 }))).toEqual([
      'sampling.fraction 0.5 of 4 sites asks 2 a round, fewer than sampling.minSites 3: each round asks 3 sites instead (raise fraction to 0.75, or lower minSites, to say so)',
    ]);
    expect(jobWarnings(four({ fraction: 0.5, minSites: 2 }))).toEqual([]);
    expect(jobWarnings(four({ sitesPerRound: 3, minSites: 3 }))).toEqual([]);
  });
});

describe('dataWarnings', () => {
  it('a class of spec.classes that no site has, counting only the sites that said their labels', () => {
    const a = { labels: { no: 10, yes: 3, maybe: 0 } };
    const b = { labels: { no: 4, yes: 0, maybe: 0 } };
    expect(dataWarnings(['no', 'yes', 'maybe'], [a, b])).toEqual([
      `spec.classes lists "maybe", which no site's data has (2 sites counted): the model keeps an output for it that no example trains; check the spelling, or leave it out`,
    ]);
    expect(dataWarnings(['no', 'yes', 'maybe', '2'], [a, { labels: undefined }])[0]).toContain(
      'lists "maybe", "2", which no site\'s data has (1 site counted)',
    );
    expect(dataWarnings(['no', 'yes'], [a, b])).toEqual([]);
    // Classes gathered from the data (no spec.classes): an empty class folder, not a spelling.
    expect(dataWarnings(['no', 'yes', 'maybe'], [a, b], false)).toEqual([
      'class "maybe" has no example at any site (an empty class folder?): the model keeps an output for it that no example trains',
    ]);
    expect(dataWarnings(['no', 'yes', 'maybe'], [{ labels: undefined }])).toEqual([]);
  });

  it("one class spelt two ways at two sites (case, spacing), and a site whose labels are none of the others'", () => {
    const a = { site: 'a', labels: { no: 50, yes: 50 } };
    const b = { site: 'b', labels: { No: 40, Yes: 60 } };
    const classes = ['No', 'Yes', 'no', 'yes'];
    expect(dataWarnings(classes, [a, b], false)).toEqual([
      'classes "No" (site b), "no" (site a) differ only in case or spacing: the model learns them as 2 different classes; write the labels alike at every site',
      'classes "Yes" (site b), "yes" (site a) differ only in case or spacing: the model learns them as 2 different classes; write the labels alike at every site',
    ]);
    // 1/0 at one site, True/False at another: no spelling in common.
    const c = { site: 'c', labels: { '0': 30, '1': 20 } };
    const d = { site: 'd', labels: { False: 30, True: 20 } };
    const e = { site: 'e', labels: { '0': 10, '1': 10 } };
    expect(dataWarnings(['0', '1', 'False', 'True'], [c, d, e], false)).toEqual([
      `site d's labels ("False", "True") are none of the other sites' ("0", "1"): each of these classes is learnt from one site's data alone; if they mean the same, write them alike at every site`,
    ]);
    // Sites sharing a class, or a site of one class (label skew), say nothing; nor does one site alone.
    expect(dataWarnings(['0', '1', '2'], [c, { site: 'f', labels: { '1': 5, '2': 5 } }], false)).toEqual([]);
    expect(dataWarnings(['0', '1', '2'], [c, { site: 'g', labels: { '2': 5 } }], false)).toEqual([]);
    expect(dataWarnings(['False', 'True'], [d], false)).toEqual([]);
    // Two sites apart: said once.
    expect(dataWarnings(['0', '1', 'False', 'True'], [c, d], false)).toEqual([
      `site c's labels ("0", "1") are none of the other sites' ("False", "True"): each of these classes is learnt from one site's data alone; if they mean the same, write them alike at every site`,
    ]);
    // Unnamed sites are counted.
    expect(dataWarnings(classes, [{ labels: a.labels }, { labels: b.labels }, { labels: a.labels }], false)[0]).toBe(
      'classes "No" (1 site), "no" (2 sites) differ only in case or spacing: the model learns them as 2 different classes; write the labels alike at every site',
    );
  });

  it('a class only test splits have, when every counted site said its train counts', () => {
    const a = { labels: { no: 10, yes: 3, maybe: 2 }, trainLabels: { no: 8, yes: 2, maybe: 0 } };
    const b = { labels: { no: 4, yes: 1, maybe: 1 }, trainLabels: { no: 3, yes: 1 } };
    const onlyTest =
      'class "maybe" (3) is only in test data: no site trains on it, so every such test example is scored wrong; move some into a train split, or check the spelling of the test labels or folders';
    expect(dataWarnings(['no', 'yes', 'maybe'], [a, b])).toEqual([onlyTest]);
    expect(dataWarnings(['no', 'yes', 'maybe'], [a, b], false)).toEqual([onlyTest]);
    // One site trains on it: no warning. A site that did not say its train counts: no judgement.
    expect(dataWarnings(['no', 'yes', 'maybe'], [a, { ...b, trainLabels: { no: 3, yes: 0, maybe: 1 } }])).toEqual([]);
    expect(dataWarnings(['no', 'yes', 'maybe'], [a, { labels: b.labels }])).toEqual([]);
    // Both kinds at once: the test-only class first, then the class no site has.
    expect(dataWarnings(['no', 'yes', 'maybe', 'gone'], [a, b])).toEqual([
      onlyTest,
      `spec.classes lists "gone", which no site's data has (2 sites counted): the model keeps an output for it that no example trains; check the spelling, or leave it out`,
    ]);
  });
});

describe('scaleWarnings', () => {
  /** The moments of columns of values (one array per column). */
  const moments = (...columns: number[][]) => {
    const n = columns[0]!.length;
    const rows = Array.from({ length: n * columns.length }, (_, k) => columns[k % columns.length]![Math.floor(k / columns.length)]!);
    return momentsOf(rows, n, columns.length);
  };
  const kg = [60, 72, 81, 55, 90, 67];
  const celsius = [36.6, 37.2, 38.1, 36.9, 39.0, 37.5];
  const site = (name: string, weight: number[], temperature: number[], smoker: number[] = [0, 1, 0, 0, 1, 0]) => ({
    site: name,
    features: ['weight', 'temperature', 'smoker'],
    moments: moments(weight, temperature, smoker),
  });

  it('names a column one site measures in other units, against the median of the others', () => {
    const sites = [
      site('north', kg, celsius),
      site(
        'south',
        kg.map((v) => v + 4),
        celsius.map((v) => v - 0.3),
      ),
      site(
        'east',
        kg.map((v) => v * 1000),
        celsius.map((v) => (v * 9) / 5 + 32),
      ),
      site(
        'west',
        kg.map((v) => v - 3),
        celsius,
        [0, 0, 0, 0, 0, 0],
      ),
    ];
    const w = scaleWarnings(sites);
    expect(w).toHaveLength(2);
    expect(w[0]).toMatch(
      /^column "weight" at site "east" looks on another scale than at the other sites \(mean 70830, sd 11940; the sites' median: mean 72\.83, sd 11\.94\): other units/,
    );
    expect(w[1]).toMatch(/^column "temperature" at site "east" looks on another scale/);
    // Natural differences between hospitals, and a column constant at one site (west's smokers), are not warned of.
    expect(scaleWarnings(sites.filter((s) => s.site !== 'east'))).toEqual([]);
  });

  it('with two sites, names both; with fewer, or without moments (images), says nothing', () => {
    const [a, b] = [
      site('north', kg, celsius),
      site(
        'east',
        kg.map((v) => v * 1000),
        celsius,
      ),
    ];
    const w = scaleWarnings([a, b]);
    expect(w).toEqual([
      expect.stringMatching(
        /^column "weight" differs in scale between site "north" \(mean 70\.83, sd 11\.94\) and site "east" \(mean 70830, sd 11940\): other units/,
      ),
    ]);
    expect(scaleWarnings([a])).toEqual([]);
    expect(scaleWarnings([a, { site: 'images' }])).toEqual([]);
    // Columns in another order (a run refuses them, naming the difference): not compared by position.
    expect(scaleWarnings([a, { ...b, features: ['temperature', 'weight', 'smoker'] }])).toEqual([]);
    // Without feature names, features are numbered from 1.
    expect(
      scaleWarnings([
        { ...a, features: undefined },
        { ...b, features: undefined },
      ])[0],
    ).toMatch(/^feature 1 differs in scale/);
  });
});

describe('jobWarnings on the model', () => {
  it('an mlp whose hidden layers alone hold a billion parameters or more', () => {
    const mlp = (hidden: number[]) => spec({ model: { type: 'mlp', hidden } });
    expect(jobWarnings(mlp([100_000, 100_000]))).toEqual([
      'spec.model.hidden [100000, 100000] has at least 10,000,100,000 parameters between its hidden layers alone (40.0 GB of weights); training needs about 240.0 GB at each site: check the units',
    ]);
    expect(jobWarnings(mlp([1024, 1024, 1024]))).toEqual([]);
  });
});

describe('jobWarnings on FedProx', () => {
  it('mu x learningRate from 1 on, with SGD: the pull overshoots', () => {
    const prox = (mu: number, optimizer = 'sgd') => spec({ strategy: { name: 'fedprox', mu }, training: { optimizer, learningRate: 0.1 } });
    expect(jobWarnings(prox(1000))).toEqual([
      'strategy.mu 1000 with training.learningRate 0.1: each step pulls the weights back by learningRate x mu = 100 times their distance from the global model, which overshoots it from 1 on (training diverges): keep it well below 1',
    ]);
    expect(jobWarnings(prox(1))).toEqual([]);
    expect(jobWarnings(prox(1000, 'adam'))).toEqual([]);
  });
});

describe('jobWarnings on SCAFFOLD', () => {
  it('with Adam: its per-coordinate scaling takes the constant correction at full step size', () => {
    const scaffold = (optimizer: string, name = 'scaffold') => spec({ strategy: { name }, training: { optimizer, learningRate: 0.01 } });
    expect(jobWarnings(scaffold('adam'))).toEqual([
      "strategy scaffold with training.optimizer adam: Adam scales each coordinate's step by its own gradient's magnitude, so SCAFFOLD's correction (c - c_i, the same every step of a round) is taken at full step size wherever the gradient is small, and training can collapse at learning rates where fedavg with adam trains: use training.optimizer sgd (SCAFFOLD's own) or momentum, or a far lower training.learningRate (0.01 now)",
    ]);
    expect(jobWarnings(scaffold('sgd'))).toEqual([]);
    expect(jobWarnings(scaffold('momentum'))).toEqual([]);
    expect(jobWarnings(scaffold('adam', 'fedavg'))).toEqual([]);
  });
});

describe('aucTargetWarnings', () => {
  const target = { stopping: { target: { metric: 'auc' as const, value: 0.6 } } };
  const two = { site: 'a', labels: { no: 60, yes: 40 }, trainLabels: { no: 48, yes: 32 } };
  const oneTest = { site: 'c', labels: { no: 39, yes: 1 }, trainLabels: { no: 31, yes: 1 } };
  it('names a site whose test split has one class: the AUC and the target are over the others', () => {
    expect(aucTargetWarnings(target, [two, oneTest])).toEqual([
      'stopping.target on auc: the test split of c (only "no") has one class, which no AUC ranks: the global AUC, and the target, are over the other sites',
    ]);
    expect(aucTargetWarnings(target, [{ ...oneTest, site: 'b' }, oneTest])[0]).toMatch(/can never be reached: no site's test split has two classes/);
    // Only with a target on auc; sites that did not say their counts are not judged.
    expect(aucTargetWarnings({ stopping: { target: { metric: 'accuracy', value: 0.6 } } }, [two, oneTest])).toEqual([]);
    expect(aucTargetWarnings({ stopping: {} }, [two, oneTest])).toEqual([]);
    expect(aucTargetWarnings(target, [two, { site: 'd', labels: undefined }])).toEqual([]);
    expect(aucTargetWarnings(target, [two, two])).toEqual([]);
  });
});
