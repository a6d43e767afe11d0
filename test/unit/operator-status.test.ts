// The job's status as a pure function of what the operator observed: conditions keep their
// transition time while unchanged (so the same observation writes nothing), per-site state
// follows Pods and refusals, and the printer columns' fields are there.
import { describe, expect, it } from 'vitest';
import { FederatedJobSpec } from '../../core/job/federated-job.ts';
import { FederatedJobStatus } from '../../core/job/federated-job-status.ts';
import { emptyProgress, type RunProgress } from '../../operator/controller/job-runs.ts';
import type { JobObject } from '../../operator/controller/manifests.ts';
import { desiredStatus, keepTransitionTimes, sameJson, workerInputFailure } from '../../operator/controller/status.ts';
import type { KubeObject } from '../../operator/kube/client.ts';

const spec = FederatedJobSpec.parse({
  model: { type: 'logistic' },
  sites: ['a', 'b', 'c'].map((name) => ({ name, data: { type: 'synthetic', generator: 'hospital' } })),
  rounds: 5,
});
const job = (status?: Record<string, unknown>): JobObject => ({
  apiVersion: 'consort.dev/v1alpha1',
  kind: 'FederatedJob',
  metadata: { name: 'j', namespace: 'ns', uid: 'u', generation: 2 },
  spec,
  ...(status ? { status } : {}),
});
const pod = (phase: string): KubeObject => ({ metadata: { name: `j-site-x` }, status: { phase } });
const progress: RunProgress = {
  ...emptyProgress(),
  state: 'running',
  round: 3,
  records: [
    {
      round: 3,
      globalLoss: 0.41234,
      globalAccuracy: 0.87654,
      fitLoss: 0.5,
      participants: ['a', 'b'],
      sites: [],
      accuracySpread: { min: 0.8, max: 0.9, std: 0.05 },
      durationMs: 10,
    },
  ],
  siteLastRound: { a: 3, b: 3 },
  joined: ['a', 'b', 'c'],
};

describe('desiredStatus', () => {
  it('says which remote sites have not answered their assignment, rather than that every site accepted', () => {
    const remote = FederatedJobSpec.parse({ ...spec, sites: spec.sites.map((x) => (x.name === 'c' ? { ...x, remote: true } : x)) });
    const observe = (unanswered: string[], refusals: Array<[string, string]> = []) =>
      desiredStatus({
        job: { ...job(), spec: remote },
        phase: 'Pending',
        pods: new Map(),
        refusals: new Map(refusals),
        unanswered: new Set(unanswered),
        restarts: new Map(),
        now: new Date('2026-01-01T00:00:00Z'),
      });
    const waiting = observe(['c']);
    expect(waiting.conditions?.find((c) => c.type === 'SitesAccepted')).toMatchObject({
      status: 'False',
      reason: 'AwaitingSiteAgents',
      message: expect.stringMatching(/^no answer yet from the site agent of c \(is consort operator --mode site running for it/),
    });
    expect(waiting.sites?.find((x) => x.name === 'c')).toMatchObject({ state: 'Pending', message: expect.stringMatching(/^its site agent has not answered/) });
    expect(observe([]).conditions?.find((c) => c.type === 'SitesAccepted')).toMatchObject({ status: 'True', reason: 'AllSitesAccepted' });
    expect(observe([], [['c', 'no [CONSORT_P_MODEL]']]).conditions?.find((c) => c.type === 'SitesAccepted')).toMatchObject({
      status: 'False',
      reason: 'SiteRefused',
    });
  });

  it('of a failed job: the site the failure names, or whose worker failed, Failed; the others Stopped, none ready', () => {
    const crashed: KubeObject = {
      metadata: { name: 'j-site-b' },
      status: { phase: 'Running', containerStatuses: [{ lastState: { terminated: { exitCode: 2 } } }] },
    };
    const message = 'site b: its worker j-site-b stops on bad input (exit status 2), which restarting cannot mend: no such file [CONSORT_W_DATA_FILE]';
    const s = desiredStatus({
      job: job(),
      phase: 'Failed',
      progress,
      pods: new Map([
        ['a', pod('Running')],
        ['b', crashed],
        ['c', pod('Running')],
      ]),
      refusals: new Map(),
      restarts: new Map(),
      problem: { reason: 'WorkerInvalidInput', message },
      now: new Date('2026-01-01T00:00:00Z'),
    });
    expect(FederatedJobStatus.safeParse(s).success).toBe(true);
    expect(s.sites?.map((x) => [x.name, x.state, x.message])).toEqual([
      ['a', 'Stopped', undefined],
      ['b', 'Failed', message],
      ['c', 'Stopped', undefined],
    ]);
    expect(s.sitesReady).toBe('0/3');
    // A worker that failed without the problem naming it (the coordinator's failure) is Failed too.
    const other = desiredStatus({
      job: job(),
      phase: 'Failed',
      pods: new Map([['c', pod('Failed')]]),
      refusals: new Map(),
      restarts: new Map(),
      problem: { reason: 'CoordinatorFailed', message: 'round 2: quorum not reached' },
      now: new Date('2026-01-01T00:00:00Z'),
    });
    expect(other.sites?.map((x) => x.state)).toEqual(['Stopped', 'Stopped', 'Failed']);
  });

  it('fills the printer columns, per-site state and conditions, and parses as the status schema', () => {
    const s = desiredStatus({
      job: job(),
      phase: 'Running',
      progress,
      pods: new Map([
        ['a', pod('Running')],
        ['b', pod('Running')],
        ['c', pod('Failed')],
      ]),
      refusals: new Map(),
      restarts: new Map([['c', 2]]),
      now: new Date('2026-01-01T00:00:00Z'),
    });
    expect(FederatedJobStatus.safeParse(s).success).toBe(true);
    expect(s).toMatchObject({ phase: 'Running', round: 3, rounds: 5, accuracy: 0.8765, loss: 0.4123, sitesReady: '2/3', observedGeneration: 2 });
    expect(s.sites?.map((x) => [x.name, x.state, x.lastRound, x.restarts])).toEqual([
      ['a', 'Running', 3, 0],
      ['b', 'Running', 3, 0],
      ['c', 'Failed', undefined, 2],
    ]);
    const ready = s.conditions?.find((c) => c.type === 'Ready');
    expect(ready).toMatchObject({ status: 'False', reason: 'SitesStarting' });
  });

  it('the same observation later is the same status (transition times kept), so nothing is written', () => {
    const o = { phase: 'Running' as const, progress, pods: new Map([['a', pod('Running')]]), refusals: new Map(), restarts: new Map() };
    const first = desiredStatus({ ...o, job: job(), now: new Date('2026-01-01T00:00:00Z') });
    const again = desiredStatus({ ...o, job: job(first as Record<string, unknown>), now: new Date('2026-01-01T01:00:00Z') });
    expect(sameJson(first, again)).toBe(true);
  });

  it('a refusal names the site and its reason in SitesAccepted; a terminal phase sets completionTime once', () => {
    const s = desiredStatus({
      job: job(),
      phase: 'Failed',
      pods: new Map(),
      refusals: new Map([['b', 'model type "mlp" is not allowed [CONSORT_P_MODEL]']]),
      restarts: new Map(),
      problem: { reason: 'CoordinatorFailed', message: 'quorum' },
      now: new Date('2026-01-01T00:00:00Z'),
    });
    const c = s.conditions?.find((x) => x.type === 'SitesAccepted');
    expect(c).toMatchObject({ status: 'False', reason: 'SiteRefused' });
    expect(c?.message).toContain('b: model type "mlp" is not allowed');
    expect(s.sites?.find((x) => x.name === 'b')?.state).toBe('Refused');
    expect(s.conditions?.find((x) => x.type === 'Failed')).toMatchObject({ status: 'True', reason: 'CoordinatorFailed' });
    expect(s.completionTime).toBe('2026-01-01T00:00:00Z');
    // It failed before any round: it never started (start and completion used to be the same instant).
    expect(s.startTime).toBeUndefined();
    const ran = desiredStatus({
      job: job({ phase: 'Running', round: 3, startTime: '2025-12-31T23:00:00Z' }),
      phase: 'Failed',
      pods: new Map(),
      refusals: new Map(),
      restarts: new Map(),
      problem: { reason: 'CoordinatorFailed', message: 'quorum' },
      now: new Date('2026-01-01T00:00:00Z'),
    });
    expect(ran).toMatchObject({ startTime: '2025-12-31T23:00:00Z', completionTime: '2026-01-01T00:00:00Z' });
    const quick = desiredStatus({
      job: job(),
      phase: 'Running',
      pods: new Map(),
      refusals: new Map(),
      restarts: new Map(),
      now: new Date('2026-01-01T00:00:00Z'),
    });
    expect(quick.startTime).toBe('2026-01-01T00:00:00Z');
  });

  it("a job stopped early says by which rule, in the Succeeded condition's reason and message", () => {
    const succeeded = (stoppedBy: RunProgress['stoppedBy'], stopping: Record<string, unknown>) =>
      desiredStatus({
        job: { ...job(), spec: FederatedJobSpec.parse({ ...spec, stopping }) },
        phase: 'Succeeded',
        progress: {
          ...progress,
          state: 'succeeded',
          ...(stoppedBy ? { stoppedBy } : {}),
          model: { bucket: 'models', object: 'final', sha256: 'a'.repeat(64), bytes: 1 },
        },
        pods: new Map(),
        refusals: new Map(),
        restarts: new Map(),
        now: new Date('2026-01-01T00:00:00Z'),
      }).conditions?.find((c) => c.type === 'Succeeded');
    expect(succeeded('target', { target: { metric: 'accuracy', value: 0.85 } })).toMatchObject({
      reason: 'TargetReached',
      message: 'completed 3 of 5 rounds, stopped early: spec.stopping.target (accuracy >= 0.85) reached; the model is in models',
    });
    expect(succeeded('patience', { patience: 2 })).toMatchObject({
      reason: 'PatienceExhausted',
      message: 'completed 3 of 5 rounds, stopped early: no improvement in 2 evaluations (spec.stopping.patience); the model is in models',
    });
    expect(succeeded('rounds', {})).toMatchObject({ reason: 'RoundsCompleted', message: 'completed 3 of 5 rounds; the model is in models' });
  });
});

describe('the Ready condition', () => {
  it('counts running sites only while the job runs; after it, says the job is over', () => {
    const ready = (phase: 'Running' | 'Succeeded' | 'Failed' | 'Suspended') =>
      desiredStatus({
        job: job(),
        phase,
        progress,
        pods: new Map(['a', 'b', 'c'].map((s) => [s, pod(phase === 'Running' ? 'Running' : 'Succeeded')])),
        refusals: new Map(),
        restarts: new Map(),
        now: new Date('2026-01-01T00:00:00Z'),
      }).conditions?.find((c) => c.type === 'Ready');
    expect(ready('Running')).toMatchObject({ status: 'True', reason: 'AllSitesRunning', message: '3 of 3 sites running' });
    expect(ready('Succeeded')).toMatchObject({ status: 'False', reason: 'Succeeded', message: 'the job succeeded: no site runs any more' });
    expect(ready('Failed')).toMatchObject({ status: 'False', reason: 'Failed', message: 'the job failed: no site runs any more' });
    expect(ready('Suspended')).toMatchObject({ status: 'False', reason: 'Suspended', message: 'suspended: no site runs until spec.suspend is false' });
  });
});

describe('the status round', () => {
  it('never goes backwards: a resumed run reports 0 until it has read its checkpoint', () => {
    const s = desiredStatus({
      job: job({ phase: 'Running', round: 76 }),
      phase: 'Running',
      progress: { ...emptyProgress(), state: 'joining' },
      pods: new Map(),
      refusals: new Map(),
      restarts: new Map(),
      now: new Date('2026-01-01T00:00:00Z'),
    });
    expect(s.round).toBe(76);
    expect(s.conditions?.find((c) => c.type === 'Progressing')?.message ?? '').not.toContain('round 0');
  });
});

describe('workerInputFailure', () => {
  const worker = (name: string, lastExit?: number, message?: string): KubeObject => ({
    metadata: { name },
    status: {
      phase: 'Running',
      containerStatuses: [
        {
          name: 'worker',
          state: { waiting: { reason: 'CrashLoopBackOff' } },
          ...(lastExit !== undefined ? { lastState: { terminated: { exitCode: lastExit, ...(message ? { message } : {}) } } } : {}),
        },
      ],
    },
  });
  it('names the site whose worker exited with status 2, with its last "consort:" line; other exits are not bad input', () => {
    const log = 'loading\nconsort: site "b": train.csv: no such file [CONSORT_W_DATA_FILE]\n';
    expect(
      workerInputFailure(
        new Map([
          ['a', worker('j-site-a', 1)],
          ['b', worker('j-site-b', 2, log)],
        ]),
      ),
    ).toBe(
      'site b: its worker j-site-b stops on bad input (exit status 2), which restarting cannot mend: site "b": train.csv: no such file [CONSORT_W_DATA_FILE]',
    );
    expect(workerInputFailure(new Map([['a', worker('j-site-a', 2)]]))).toContain('see kubectl logs j-site-a');
    expect(
      workerInputFailure(
        new Map([
          ['a', worker('j-site-a', 137)],
          ['c', worker('j-site-c')],
        ]),
      ),
    ).toBeUndefined();
  });
});

describe('keepTransitionTimes', () => {
  it('moves lastTransitionTime only when the status changes', () => {
    const old = [{ type: 'Ready', status: 'True' as const, reason: 'A', message: 'm', lastTransitionTime: 'T0' }];
    expect(keepTransitionTimes(old, [{ ...old[0]!, reason: 'B', lastTransitionTime: 'T1' }])[0]!.lastTransitionTime).toBe('T0');
    expect(keepTransitionTimes(old, [{ ...old[0]!, status: 'False', lastTransitionTime: 'T1' }])[0]!.lastTransitionTime).toBe('T1');
  });
});
