// Expected numbers are computed by hand (or, for the adaptive optimizers, by a few lines of
// plain Python floats following Reddi et al. 2021, Algorithm 2), never by the code under test.
import { describe, expect, it } from 'vitest';
import { RoundAccumulator } from '../../core/aggregation/round-accumulator.ts';
import type { StrategySpec } from '../../core/job/federated-job.ts';
import { proximalGradient, scaffoldControlUpdate, scaffoldCorrectedGradient } from '../../core/strategies/client-terms.ts';
import { createStrategy } from '../../core/strategies/index.ts';
import type { RoundAggregate } from '../../core/strategies/strategy.ts';

const f32 = (xs: number[]): number[] => xs.map((x) => Math.fround(x));

function aggregate(meanDelta: number[], extra: Partial<RoundAggregate> = {}): RoundAggregate {
  return { round: 1, meanDelta: new Float64Array(meanDelta), sites: 1, totalSamples: 10, ...extra };
}

function expectClose(actual: ArrayLike<number>, expected: number[], rel = 1e-12): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    expect(Math.abs(actual[i]! - expected[i]!)).toBeLessThanOrEqual(rel * Math.max(1e-300, Math.abs(expected[i]!)));
  }
}

describe('FedAvg', () => {
  it('steps to the sample-weighted mean of the deltas', () => {
    const acc = new RoundAccumulator(3);
    acc.add({ site: 'a', samples: 1, delta: new Float32Array([1, 2, -3]), trainLoss: 0 });
    acc.add({ site: 'b', samples: 3, delta: new Float32Array([5, -2, 1]), trainLoss: 0 });
    // mean = ([1,2,-3] + 3*[5,-2,1]) / 4 = [4, -1, 0]; lr 0.5 from [0.5, 0.5, 0.5].
    const strategy = createStrategy({ name: 'fedavg', serverLearningRate: 0.5 }, 3, 2);
    const next = strategy.aggregateFit(new Float32Array([0.5, 0.5, 0.5]), acc.finish(1));
    expect(next).toBeInstanceOf(Float32Array);
    expect([...next]).toEqual([2.5, 0, 0.5]);
    expect(strategy.configureFit(1)).toEqual({ proximalMu: 0 });
    expect(strategy.state()).toEqual({ name: 'fedavg', step: 1, buffers: {} });
  });

  it('rounds to float32 once, after a float64 step', () => {
    const strategy = createStrategy({ name: 'fedavg', serverLearningRate: 1 }, 1, 1);
    // In float64, 1 + (2^-24 + 2^-50) is just above float32's midpoint 1 + 2^-24: it rounds up
    // to 1 + 2^-23. Rounding the delta to float32 first (2^-24) would land on the tie: 1.
    const next = strategy.aggregateFit(new Float32Array([1]), aggregate([2 ** -24 + 2 ** -50]));
    expect(next[0]).toBe(1 + 2 ** -23);
  });
});

describe('FedProx', () => {
  it('sends mu and steps like FedAvg', () => {
    const strategy = createStrategy({ name: 'fedprox', mu: 0.01, serverLearningRate: 1 }, 2, 3);
    expect(strategy.configureFit(1)).toEqual({ proximalMu: 0.01 });
    expect([...strategy.aggregateFit(new Float32Array([1, 2]), aggregate([0.5, -1]))]).toEqual([1.5, 1]);
  });

  it('proximal gradient: grad + mu (w - wGlobal)', () => {
    // [0.1 + 0.01 * (1 - 0.5), -0.2 + 0.01 * (2 - 2.5)] = [0.105, -0.205]
    const g = proximalGradient(new Float32Array([0.1, -0.2]), new Float32Array([1, 2]), new Float32Array([0.5, 2.5]), 0.01);
    expect(g).toBeInstanceOf(Float32Array);
    expectClose(g, [0.105, -0.205], 1e-7);
    expect([...proximalGradient(new Float32Array([0.1]), new Float32Array([3]), new Float32Array([1]), 0)]).toEqual(f32([0.1]));
    expect(() => proximalGradient(new Float32Array(2), new Float32Array(2), new Float32Array(3), 1)).toThrow(RangeError);
    expect(() => proximalGradient(new Float32Array(1), new Float32Array(1), new Float32Array(1), -1)).toThrow(RangeError);
  });
});

describe('FedAvgM', () => {
  it('two steps with server momentum', () => {
    const strategy = createStrategy({ name: 'fedavgm', serverLearningRate: 0.5, momentum: 0.9 }, 2, 2);
    // v1 = [1, -2]; x1 = [0, 0] + 0.5 v1 = [0.5, -1]
    const x1 = strategy.aggregateFit(new Float32Array([0, 0]), aggregate([1, -2]));
    expect([...x1]).toEqual([0.5, -1]);
    // v2 = 0.9 [1, -2] + [0.5, 0.5] = [1.4, -1.3]; x2 = [0.5, -1] + 0.5 v2 = [1.2, -1.65]
    const x2 = strategy.aggregateFit(x1, aggregate([0.5, 0.5]));
    expect([...x2]).toEqual(f32([1.2, -1.65]));
    const state = strategy.state();
    expect(state.step).toBe(2);
    expectClose(state.buffers.momentum!, [1.4, -1.3]);
  });
});

describe('FedAdam, FedYogi, FedAdagrad (one step)', () => {
  // beta1 0.9, beta2 0.99, tau 1e-3, lr 0.1; from x = 1, D = [0.5, -0.2, 0, 0.0005]
  // m = 0.1 D = [0.05, -0.02, 0, 5e-5] for all three; v starts at tau^2 = 1e-6.
  const adaptive = { serverLearningRate: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-3 };
  const delta = [0.5, -0.2, 0, 0.0005];
  const cases: { name: 'fedadam' | 'fedyogi' | 'fedadagrad'; v: number[]; x: number[] }[] = [
    {
      // v = 0.99e-6 + 0.01 D^2
      name: 'fedadam',
      v: [0.00250099, 0.00040099, 9.9e-7, 9.925e-7],
      x: [1.0980201901209485, 0.9048739483244113, 1, 1.0025047051609575],
    },
    {
      // v = 1e-6 - 0.01 D^2 sign(1e-6 - D^2): grows where D^2 > v, shrinks where D^2 < v
      name: 'fedyogi',
      v: [0.002501, 0.000401, 1e-6, 9.975e-7],
      x: [1.0980199980004, 0.9048750780274961, 1, 1.002501564456182],
    },
    {
      // v = 1e-6 + D^2
      name: 'fedadagrad',
      v: [0.250001, 0.040001, 1e-6, 1.25e-6],
      x: [1.00998001999998, 0.9900498750007812, 1, 1.002360679774998],
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const strategy = createStrategy({ name: c.name, ...adaptive }, 4, 5);
      const next = strategy.aggregateFit(new Float32Array([1, 1, 1, 1]), aggregate(delta));
      expect([...next]).toEqual(f32(c.x));
      const state = strategy.state();
      expectClose(state.buffers.m!, [0.05, -0.02, 0, 5e-5], 1e-14);
      expectClose(state.buffers.v!, c.v, 1e-14);
      expect(strategy.configureFit(2)).toEqual({ proximalMu: 0 });
    });
  }
});

describe('SCAFFOLD', () => {
  const cLocal = new Float32Array([0.1, 0]);
  const cServer = new Float32Array([0.2, -0.1]);

  it('client: corrected gradient grad - c_i + c', () => {
    // [1 - 0.1 + 0.2, 1 - 0 - 0.1] = [1.1, 0.9]
    expectClose(scaffoldCorrectedGradient(new Float32Array([1, 1]), cLocal, cServer), [1.1, 0.9], 1e-7);
  });

  it('client: option II control update c_i - c + (x - y_i) / (K lr)', () => {
    // K lr = 10 * 0.01 = 0.1; (x - y) / 0.1 = [(1 - 0.9) / 0.1, (1 - 1.2) / 0.1] = [1, -2]
    // c_i+ = [0.1 - 0.2 + 1, 0 + 0.1 - 2] = [0.9, -1.9]
    const c = scaffoldControlUpdate(cLocal, cServer, new Float32Array([1, 1]), new Float32Array([0.9, 1.2]), 10, 0.01);
    expect(c).toBeInstanceOf(Float32Array);
    expectClose(c, [0.9, -1.9], 1e-6); // float32 inputs 0.9, 1.2: the difference carries their rounding
    expect(() => scaffoldControlUpdate(cLocal, cServer, cLocal, cLocal, 0, 0.01)).toThrow(RangeError);
    expect(() => scaffoldControlUpdate(cLocal, cServer, cLocal, cLocal, 1, 0)).toThrow(RangeError);
  });

  it('server: x + lr D, c + (|S|/N) mean control delta', () => {
    const strategy = createStrategy({ name: 'scaffold', serverLearningRate: 1 }, 2, 4);
    expect([...strategy.configureFit(1).serverControl!]).toEqual([0, 0]);
    // 2 of the job's 4 sites; control deltas [0.8, -1.9] and [0.4, 0.1] (weight 1 each).
    const acc = new RoundAccumulator(2, { control: true });
    acc.add({ site: 'a', samples: 10, delta: new Float32Array([1, 0]), controlDelta: new Float32Array([0.8, -1.9]), trainLoss: 0 });
    acc.add({ site: 'b', samples: 30, delta: new Float32Array([-1, 2]), controlDelta: new Float32Array([0.4, 0.1]), trainLoss: 0 });
    // meanDelta = (10 [1, 0] + 30 [-1, 2]) / 40 = [-0.5, 1.5]; meanControlDelta = [0.6, -0.9]
    const next = strategy.aggregateFit(new Float32Array([1, 1]), acc.finish(1));
    expect([...next]).toEqual([0.5, 2.5]);
    // c = 0 + (2/4) [0.6, -0.9] = [0.3, -0.45]
    expectClose(strategy.state().buffers.c!, [0.3, -0.45], 1e-7);
    const control = strategy.configureFit(2).serverControl!;
    expect(control).toBeInstanceOf(Float32Array);
    expectClose(control, [0.3, -0.45], 1e-7);
    expect(() => strategy.aggregateFit(new Float32Array(2), aggregate([0, 0], { sites: 1 }))).toThrow(/meanControlDelta/);
  });

  it("server, buffered: a late update beside its site's current one moves c by its own control delta / N too", () => {
    // Both sites of a 2-site job answer round 2, and a's round-1 update comes late into it. Each
    // control delta is a change of some c_i that happened, so c, the mean of the c_i, moves by
    // their sum / N: (1/2) ([0.8, -1.9] + [0.4, 0.1] + [0.2, 0.6]) = [0.7, -0.6].
    const strategy = createStrategy({ name: 'scaffold', serverLearningRate: 1 }, 2, 2);
    const results = [
      { site: 'a', samples: 10, delta: new Float32Array([1, 0]), controlDelta: new Float32Array([0.8, -1.9]), trainLoss: 0 },
      { site: 'b', samples: 10, delta: new Float32Array([0, 1]), controlDelta: new Float32Array([0.4, 0.1]), trainLoss: 0 },
      { site: 'a', samples: 10, delta: new Float32Array([2, 2]), controlDelta: new Float32Array([0.2, 0.6]), trainLoss: 0, staleness: 1 },
    ];
    const acc = new RoundAccumulator(2, { control: true });
    for (const r of results) expect(acc.add(r)).toBe(true);
    const agg = acc.finish(2);
    expect(agg.sites).toBe(3);
    strategy.aggregateFit(new Float32Array(2), agg);
    expectClose(strategy.state().buffers.c!, [0.7, -0.6], 1e-7);
    // The same a range at a time (a stored round's path).
    const ranged = createStrategy({ name: 'scaffold', serverLearningRate: 1 }, 2, 2);
    const global = new Float32Array(2);
    for (const start of [0, 1]) {
      ranged.aggregateFitRange(global, {
        ...agg,
        start,
        meanDelta: agg.meanDelta.subarray(start, start + 1),
        meanControlDelta: agg.meanControlDelta!.subarray(start, start + 1),
      });
    }
    ranged.endRangeFit();
    expect(ranged.state()).toEqual(strategy.state());
  });
});

describe('strategy state', () => {
  const specs: StrategySpec[] = [
    { name: 'fedavg', serverLearningRate: 1 },
    { name: 'fedprox', mu: 0.1, serverLearningRate: 0.7 },
    { name: 'fedavgm', serverLearningRate: 1, momentum: 0.9 },
    { name: 'fedadam', serverLearningRate: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-3 },
    { name: 'fedyogi', serverLearningRate: 0.1, beta1: 0.9, beta2: 0.99, tau: 1e-3 },
    { name: 'fedadagrad', serverLearningRate: 0.1, beta1: 0.9, tau: 1e-3 },
    { name: 'scaffold', serverLearningRate: 1 },
  ];
  const rounds = [0.3, -0.1, 0.02].map((s, r) =>
    aggregate([s, -2 * s, s / 3, 1e-4 * (r + 1)], { round: r + 1, sites: 2, meanControlDelta: new Float64Array([s, s, -s, 0]) }),
  );

  for (const spec of specs) {
    it(`${spec.name}: restore then continue equals uninterrupted`, () => {
      const straight = createStrategy(spec, 4, 5);
      let x: Float32Array = new Float32Array([0.1, 0.2, 0.3, 0.4]);
      for (const agg of rounds) x = straight.aggregateFit(x, agg);

      const first = createStrategy(spec, 4, 5);
      let y = first.aggregateFit(new Float32Array([0.1, 0.2, 0.3, 0.4]), rounds[0]!);
      const saved = structuredClone(first.state());
      // state() is a copy: more steps of the original do not change what was saved.
      first.aggregateFit(y, rounds[1]!);
      const resumed = createStrategy(spec, 4, 5, saved);
      expect(resumed.state().step).toBe(1);
      for (const agg of rounds.slice(1)) y = resumed.aggregateFit(y, agg);

      expect([...y]).toEqual([...x]);
      expect(resumed.state()).toEqual(straight.state());
      expect(resumed.configureFit(4)).toEqual(straight.configureFit(4));
    });
  }

  it('refuses a state of another strategy or size', () => {
    const adam = createStrategy(specs[3]!, 4, 5);
    adam.aggregateFit(new Float32Array(4), rounds[0]!);
    expect(() => createStrategy(specs[4]!, 4, 5, adam.state())).toThrow(RangeError);
    expect(() => createStrategy(specs[3]!, 5, 5, adam.state())).toThrow(RangeError);
    expect(() => createStrategy(specs[0]!, 4, 5).aggregateFit(new Float32Array(3), rounds[0]!)).toThrow(RangeError);
  });
});
