// The operator's metrics: names and labels as Prometheus wants them, one registry per operator,
// the controller's wiring (work queue, reconcile results, API responses), and the small HTTP
// endpoint with /metrics, /healthz and /readyz.
import { KubeConfig } from '@kubernetes/client-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterEach, describe, expect, it } from 'vitest';
import { FederatedJobController } from '../../operator/controller/federated-job-controller.ts';
import { KubeClient } from '../../operator/kube/client.ts';
import { OperatorMetrics } from '../../operator/metrics.ts';
import { type ApiServer, startApiServer } from '../../operator/api/server.ts';
import type { AccountSigner } from '../../operator/nats/trust.ts';

/** The value of one sample line of the exposition text, or undefined. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** A client for an API server that is never asked (the controller's informers are not started). */
function idleClient(): KubeClient {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'none', server: 'https://127.0.0.1:1', skipTLSVerify: true }],
    users: [{ name: 'nobody' }],
    contexts: [{ name: 'none', cluster: 'none', user: 'nobody' }],
    currentContext: 'none',
  });
  return new KubeClient(kc);
}

describe('OperatorMetrics', () => {
  it('exposes the documented names, with the reconcile results at zero and process metrics', async () => {
    const m = new OperatorMetrics();
    const { body, contentType } = await m.expose();
    expect(contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    for (const name of [
      'consort_workqueue_latency_seconds',
      'consort_workqueue_depth',
      'consort_reconcile_total',
      'consort_reconcile_duration_seconds',
      'consort_job_reconciles_total',
      'consort_kube_requests_total',
      'consort_kube_request_duration_seconds',
      'consort_informer_relists_total',
      'process_resident_memory_bytes',
    ]) {
      expect(body).toMatch(new RegExp(`^# TYPE ${name} `, 'm'));
    }
    expect(sample(body, 'consort_reconcile_total{result="success"}')).toBe(0);
    expect(sample(body, 'consort_reconcile_total{result="error"}')).toBe(0);
    // The histogram has an exact bound at the benchmark's 0.5 s target.
    expect(body).toContain('consort_workqueue_latency_seconds_bucket{le="0.5"} 0');
  });

  it('counts reconciles per result and per job, drops a deleted job, and reads the depth at scrape time', async () => {
    const m = new OperatorMetrics({ defaultMetrics: false });
    let depth = 3;
    m.observeQueueDepth(() => depth);
    m.reconciled('default/a', 'success', 0.004);
    m.reconciled('default/a', 'error', 0.2);
    m.reconciled('team/b', 'success', 0.001);
    m.workqueueLatency.observe(0.0015);
    m.workqueueLatency.observe(0.6);
    let text = (await m.expose()).body;
    expect(sample(text, 'consort_reconcile_total{result="success"}')).toBe(2);
    expect(sample(text, 'consort_reconcile_total{result="error"}')).toBe(1);
    expect(sample(text, 'consort_reconcile_duration_seconds_count')).toBe(3);
    expect(sample(text, 'consort_job_reconciles_total{namespace="default",federatedjob="a"}')).toBe(2);
    expect(sample(text, 'consort_job_reconciles_total{namespace="team",federatedjob="b"}')).toBe(1);
    expect(sample(text, 'consort_workqueue_depth')).toBe(3);
    expect(sample(text, 'consort_workqueue_latency_seconds_bucket{le="0.002"}')).toBe(1);
    expect(sample(text, 'consort_workqueue_latency_seconds_bucket{le="0.5"}')).toBe(1);
    expect(sample(text, 'consort_workqueue_latency_seconds_count')).toBe(2);
    depth = 0;
    m.forgetJob('default/a');
    text = (await m.expose()).body;
    expect(sample(text, 'consort_workqueue_depth')).toBe(0);
    expect(text).not.toContain('federatedjob="a"');
    expect(text).not.toMatch(/^process_/m);
    // A second operator in the same process counts on its own.
    expect(sample((await new OperatorMetrics({ defaultMetrics: false }).expose()).body, 'consort_reconcile_total{result="success"}')).toBe(0);
  });

  it('is wired into the controller: queue latency, reconcile results, API responses', async () => {
    const metrics = new OperatorMetrics({ defaultMetrics: false });
    const client = idleClient();
    const controller = new FederatedJobController({
      client,
      nc: {} as NatsConnection,
      signer: {} as AccountSigner,
      pods: { natsUrl: 'nats://127.0.0.1:4222' },
      metrics,
    });
    try {
      controller.startReconciling();
      // A key whose job is not in the cache: reconciled once (nothing to do), its series dropped.
      controller.queue.add('default/gone');
      await expect.poll(() => controller.queue.runs.get('default/gone')).toBe(1);
      await expect.poll(async () => sample((await metrics.expose()).body, 'consort_reconcile_total{result="success"}')).toBe(1);
      client.onResponse?.('PATCH', 200, 0.004);
      client.onResponse?.('GET', 404, 0.002);
      const text = (await metrics.expose()).body;
      expect(sample(text, 'consort_workqueue_latency_seconds_count')).toBe(1);
      expect(text).not.toContain('federatedjob="gone"');
      expect(sample(text, 'consort_kube_requests_total{method="PATCH",code="200"}')).toBe(1);
      expect(sample(text, 'consort_kube_requests_total{method="GET",code="404"}')).toBe(1);
      expect(sample(text, 'consort_kube_request_duration_seconds_count{method="PATCH"}')).toBe(1);
      expect(sample(text, 'consort_kube_request_duration_seconds_bucket{le="0.005",method="PATCH"}')).toBe(1);
      expect(controller.synced).toBe(false);
    } finally {
      await controller.stop();
    }
  });
});

describe('the metrics endpoint', () => {
  let server: ApiServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  it('serves /metrics, /healthz, and /readyz only once ready', async () => {
    const metrics = new OperatorMetrics({ defaultMetrics: false });
    let ready = false;
    server = await startApiServer({ registry: metrics.registry, port: 0, address: '127.0.0.1', ready: () => ready });
    const base = `http://127.0.0.1:${server.port}`;
    const m = await fetch(`${base}/metrics`);
    expect(m.status).toBe(200);
    expect(m.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(await m.text()).toContain('consort_reconcile_total{result="success"} 0');
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/readyz`)).status).toBe(503);
    ready = true;
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    expect((await fetch(`${base}/nothing`)).status).toBe(404);
    expect((await fetch(`${base}/metrics`, { method: 'POST' })).status).toBe(405);
  });
});
