// The Prometheus harness itself (test/helpers/prometheus.ts): a real Prometheus 3.x scrapes a
// small exporter on loopback every second, answers instant and range queries through the HTTP
// API, loads the alert rules, reports a bad query as an error, and is gone after stop().
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import { Counter, Gauge, Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PrometheusServer } from '../helpers/prometheus.ts';

const RULES = resolve(import.meta.dirname, '../../manifests/prometheus/rules.yaml');

describe('the Prometheus harness', () => {
  const registry = new Registry();
  const round = new Gauge({ name: 'consort_job_round', help: 'Rounds completed.', labelNames: ['namespace', 'federatedjob'], registers: [registry] });
  const bytes = new Counter({ name: 'consort_job_bytes_received_total', help: 'Bytes.', labelNames: ['namespace', 'federatedjob'], registers: [registry] });
  let exporter: Server;
  let prom: PrometheusServer;

  beforeAll(async () => {
    round.set({ namespace: 'default', federatedjob: 'hospitals' }, 3);
    exporter = createServer(async (_req, res) => {
      bytes.inc({ namespace: 'default', federatedjob: 'hospitals' }, 1000);
      res.setHeader('content-type', registry.contentType);
      res.end(await registry.metrics());
    });
    await new Promise<void>((r) => exporter.listen(0, '127.0.0.1', r));
    const port = (exporter.address() as AddressInfo).port;
    prom = await PrometheusServer.start({ scrape: [{ jobName: 'consort-operator', targets: [`127.0.0.1:${port}`] }], ruleFiles: [RULES] });
    await prom.waitForTargetsUp();
  }, 60_000);

  afterAll(async () => {
    await prom?.stop();
    await new Promise((r) => exporter?.close(r));
  });

  it('scrapes every second, the series labelled with the scrape job and the target', async () => {
    const r = await prom.query('consort_job_round');
    expect(r.status).toBe('success');
    expect(r.data!.resultType).toBe('vector');
    const [sample] = r.data!.result as { metric: Record<string, string>; value: [number, string] }[];
    expect(sample!.metric).toMatchObject({ __name__: 'consort_job_round', namespace: 'default', federatedjob: 'hospitals', job: 'consort-operator' });
    expect(sample!.metric.instance).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(sample!.value[1]).toBe('3');
  });

  it('answers range queries over several scrapes', async () => {
    await new Promise((r) => setTimeout(r, 3000));
    const now = Date.now() / 1000;
    const r = await prom.queryRange('rate(consort_job_bytes_received_total{federatedjob=~"hospitals"}[5s])', now - 10, now, 1);
    expect(r.status, r.error).toBe('success');
    expect(r.data!.resultType).toBe('matrix');
    const [series] = r.data!.result as { values: [number, string][] }[];
    expect(series!.values.length).toBeGreaterThan(0);
    expect(Number(series!.values.at(-1)![1])).toBeGreaterThan(0);
  });

  it('loads the alert rules and evaluates them without error, even on absent series', async () => {
    await expect.poll(async () => (await prom.rules()).flatMap((g) => g.rules).every((r) => r.health === 'ok'), { timeout: 10_000 }).toBe(true);
    const rules = (await prom.rules()).flatMap((g) => g.rules);
    expect(rules.map((r) => r.name)).toContain('ConsortJobStalled');
    expect(rules.every((r) => r.type === 'alerting' && r.state === 'inactive')).toBe(true);
  });

  it('a bad query is an error with its reason', async () => {
    const r = await prom.query('sum(');
    expect(r.status).toBe('error');
    expect(r.errorType).toBe('bad_data');
  });

  it('stop() ends the process', async () => {
    const other = await PrometheusServer.start({ scrape: [] });
    const pid = other.process.pid;
    await other.stop();
    expect(other.process.exited).toBe(true);
    expect(() => process.kill(pid, 0)).toThrow();
  });
});
