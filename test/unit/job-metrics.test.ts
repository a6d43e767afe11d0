// The per-job series: set from a snapshot, counters fed by cumulative figures only ever go up
// (also across a resumed loop), and a deleted job leaves no series behind.
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { type JobSnapshot, JobMetrics } from '../../operator/job-metrics.ts';
import { LocalRunMetrics } from '../../cli/run/run-metrics.ts';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { hospitalSpec, jobManifest } from '../helpers/jobs.ts';

const record = (round: number, accuracy: number) => ({
  round,
  globalLoss: 1 - accuracy,
  globalAccuracy: accuracy,
  fitLoss: 0.5,
  participants: ['a', 'b'],
  sites: [
    { site: 'a', samples: 10, loss: 0.3, accuracy: accuracy + 0.05 },
    { site: 'b', samples: 10, loss: 0.5, accuracy: accuracy - 0.05 },
  ],
  accuracySpread: { min: accuracy - 0.05, max: accuracy + 0.05, std: 0.05 },
  durationMs: 100,
});
const snapshot = (over: Partial<JobSnapshot> = {}): JobSnapshot => ({
  phase: 'Running',
  round: 3,
  roundsPlanned: 10,
  roundDeadlineSeconds: 600,
  records: [record(1, 0.7), record(2, 0.8), record(3, 0.75)],
  joined: ['a', 'b', 'c'],
  sampled: ['a', 'b', 'c'],
  participants: ['a', 'b'],
  refused: 1,
  missed: { a: 0, b: 0, c: 2 },
  norms: { a: 1.5, b: 2.5 },
  bytesIn: 1000,
  bytesOut: 3000,
  rejections: { CONSORT_R_BAD_SIGNATURE: 2, CONSORT_R_MALFORMED: 0 },
  lastRoundAt: 1_700_000_000_000,
  roundSeconds: [1, 2, 3],
  ...over,
});
const value = async (r: Registry, name: string, labels: Record<string, string>) => {
  const all = (await r.getMetricsAsJSON()).flatMap((m) =>
    (m.values as { labels: Record<string, string | number>; value: number; metricName?: string }[]).map((v) => ({ ...v, name: v.metricName ?? m.name })),
  );
  return all.find((v) => v.name === name && Object.entries(labels).every(([k, val]) => v.labels[k] === val))?.value;
};

describe('JobMetrics', () => {
  it('sets gauges, counters and the histogram from a snapshot', async () => {
    const r = new Registry();
    const m = new JobMetrics(r);
    m.update('ns', 'j', snapshot());
    const l = { namespace: 'ns', federatedjob: 'j' };
    expect(await value(r, 'consort_job_phase', { ...l, phase: 'Running' })).toBe(1);
    expect(await value(r, 'consort_job_phase', { ...l, phase: 'Succeeded' })).toBe(0);
    expect(await value(r, 'consort_job_accuracy', l)).toBe(0.75);
    expect(await value(r, 'consort_site_accuracy', { ...l, site: 'a' })).toBeCloseTo(0.8);
    expect(await value(r, 'consort_job_accuracy_falling_rounds', l)).toBe(1);
    expect(await value(r, 'consort_job_sites', { ...l, state: 'straggling' })).toBe(1);
    expect(await value(r, 'consort_job_sites', { ...l, state: 'refused' })).toBe(1);
    expect(await value(r, 'consort_site_rounds_missed_consecutive', { ...l, site: 'c' })).toBe(2);
    expect(await value(r, 'consort_site_update_norm', { ...l, site: 'b' })).toBe(2.5);
    expect(await value(r, 'consort_job_bytes_received_total', l)).toBe(1000);
    expect(await value(r, 'consort_updates_rejected_total', { ...l, reason: 'CONSORT_R_BAD_SIGNATURE' })).toBe(2);
    expect(await value(r, 'consort_updates_rejected_total', { ...l, reason: 'CONSORT_R_MALFORMED' })).toBeUndefined();
    expect(await value(r, 'consort_job_last_round_timestamp_seconds', l)).toBe(1_700_000_000);
    expect(await value(r, 'consort_round_duration_seconds_count', l)).toBe(3);
    const text = await r.metrics();
    expect(text).not.toMatch(/[{,]job=/); // never the label Prometheus owns
  });

  it('counters only go up: later snapshots add their increments, a restarted loop counts on', async () => {
    const r = new Registry();
    const m = new JobMetrics(r);
    const l = { namespace: 'ns', federatedjob: 'j' };
    m.update('ns', 'j', snapshot());
    m.update('ns', 'j', snapshot({ round: 4, bytesIn: 1500, roundSeconds: [1, 2, 3, 4] }));
    expect(await value(r, 'consort_job_bytes_received_total', l)).toBe(1500);
    expect(await value(r, 'consort_job_rounds_completed_total', l)).toBe(4);
    expect(await value(r, 'consort_round_duration_seconds_count', l)).toBe(4);
    // A new operator's loop starts its figures at 0 again.
    m.update('ns', 'j', snapshot({ round: 5, bytesIn: 200, roundSeconds: [9] }));
    expect(await value(r, 'consort_job_bytes_received_total', l)).toBe(1700);
    expect(await value(r, 'consort_round_duration_seconds_count', l)).toBe(4);
    expect(await value(r, 'consort_job_rounds_completed_total', l)).toBe(5);
    // A resumed run: round 0 until it has read its checkpoint, then the round it resumed after.
    // The round is a position: rounds counted before are not counted again.
    m.update('ns', 'j', snapshot({ round: 0, bytesIn: 0, roundSeconds: [] }));
    m.update('ns', 'j', snapshot({ round: 5, bytesIn: 0, roundSeconds: [] }));
    m.update('ns', 'j', snapshot({ round: 7, bytesIn: 0, roundSeconds: [] }));
    expect(await value(r, 'consort_job_rounds_completed_total', l)).toBe(7);
  });

  it('forget removes every series of the job and only of that job', async () => {
    const r = new Registry();
    const m = new JobMetrics(r);
    m.update('ns', 'gone', snapshot());
    m.update('ns', 'kept', snapshot());
    m.forget('ns', 'gone');
    const text = await r.metrics();
    expect(text).not.toContain('federatedjob="gone"');
    expect(text).toContain('federatedjob="kept"');
  });
});

describe('LocalRunMetrics (consort run --metrics-port)', () => {
  it('stamps the last-round time at the start, so that a first round that never ends shows as stalled', async () => {
    const job = FederatedJob.parse(jobManifest('stalled', hospitalSpec()));
    const before = Date.now() / 1000;
    const m = new LocalRunMetrics(job);
    const stamped = await value(m.registry, 'consort_job_last_round_timestamp_seconds', { namespace: 'default', federatedjob: 'stalled' });
    // ConsortJobStalled compares time() with this series: absent, the alert could never fire.
    expect(stamped).toBeGreaterThanOrEqual(Math.floor(before));
    expect(stamped).toBeLessThanOrEqual(Date.now() / 1000);
  });
});
