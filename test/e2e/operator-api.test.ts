// The operator's HTTP API against a real kube-apiserver: a job runs on the local cluster (three
// hospitals, four rounds) and is read back through `consort operator --metrics-port` as users the
// API server knows by static token. Authentication is the API server's (TokenReview): no token
// and an unknown one get 401. Authorisation is RBAC's (SubjectAccessReview), with the ClusterRoles
// manifests/operator/api.yaml ships: a user bound to consort-federatedjob-viewer in `default` sees
// the job, its history, its model and its report there; a user without a binding gets 403, for a
// job that exists or not; /metrics wants consort-metrics-reader (a nonResourceURL rule). Bad
// parameters get 400 naming the field, an unknown job 404. /openapi.json is a valid OpenAPI
// document and the job's answer matches the schema it documents. The report opens in headless
// Chromium under the API's Content-Security-Policy without a complaint.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import SwaggerParser from '@apidevtools/swagger-parser';
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { freePort } from '../../cli/nats/server.ts';
import { decodeSafetensors } from '../../core/tensor/safetensors.ts';
import { launchChromium, openPage, reportFigures, screenshot } from '../helpers/browser.ts';
import { REPO_ROOT } from '../helpers/consort-cli.ts';
import { ConsortCluster } from '../helpers/consort-cluster.ts';
import { HOSPITALS } from '../helpers/federation.ts';
import { waitUntil } from '../helpers/managed-process.ts';

const ROUNDS = 4;
const JOB = 'api-hospitals';
const JOB_PATH = `/api/v1/namespaces/default/federatedjobs/${JOB}`;

/** The example, three hospitals and four rounds, under another name. */
function smallJob(): string {
  const doc = parse(readFileSync(HOSPITALS, 'utf8')) as { metadata: { name: string }; spec: { sites: unknown[]; rounds: number } };
  doc.metadata.name = JOB;
  doc.spec.sites = doc.spec.sites.slice(0, 3);
  doc.spec.rounds = ROUNDS;
  return stringify(doc);
}

/** Bindings to the ClusterRoles manifests/operator/api.yaml ships: alice reads jobs in `default` only, prometheus scrapes. */
const BINDINGS = `
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: alice-views-federatedjobs, namespace: default }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: consort-federatedjob-viewer }
subjects:
  - { apiGroup: rbac.authorization.k8s.io, kind: User, name: alice }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: { name: prometheus-reads-consort-metrics }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: consort-metrics-reader }
subjects:
  - { apiGroup: rbac.authorization.k8s.io, kind: User, name: prometheus }
`;

interface Answer {
  status: number;
  headers: Headers;
  body: unknown;
  bytes: Uint8Array;
}

describe("the operator's API on a real API server", () => {
  let cluster: ConsortCluster;
  let base: string;
  let browser: Browser;
  const token = (user: string) => cluster.cp.users[user]!.token;

  async function get(path: string, user?: string, init: { token?: string; method?: string } = {}): Promise<Answer> {
    const t = init.token ?? (user ? token(user) : undefined);
    const res = await fetch(`${base}${path}`, { method: init.method ?? 'GET', headers: t ? { authorization: `Bearer ${t}` } : {} });
    const bytes = new Uint8Array(await res.arrayBuffer());
    let body: unknown = new TextDecoder().decode(bytes);
    if (res.headers.get('content-type')?.startsWith('application/json')) body = JSON.parse(body as string);
    return { status: res.status, headers: res.headers, body, bytes };
  }

  beforeAll(async () => {
    const [c, b] = await Promise.all([
      ConsortCluster.start({
        users: {
          alice: { user: 'alice', groups: [] },
          bob: { user: 'bob', groups: [] },
          prometheus: { user: 'prometheus', groups: [] },
        },
      }),
      launchChromium(),
    ]);
    cluster = c;
    browser = b;
    await cluster.cp.kubectlOk(['apply', '-f', join(REPO_ROOT, 'manifests/operator/api.yaml')]);
    await cluster.cp.kubectlOk(['apply', '-f', '-'], { input: BINDINGS });
    const port = await freePort();
    await cluster.startOperator({ args: ['--metrics-port', String(port), '--metrics-address', '127.0.0.1'] });
    base = `http://127.0.0.1:${port}`;
    await waitUntil('the API answers /readyz', async () => (await get('/readyz')).status === 200, { timeoutMs: 30_000 });
    const applied = await cluster.kubectl(['apply', '-f', '-'], { input: smallJob() });
    expect(applied.code, applied.stderr).toBe(0);
  }, 240_000);

  afterAll(async () => {
    await browser?.close();
    await cluster?.stop();
  });

  it('answers /healthz and /readyz without a token', async () => {
    expect((await get('/healthz')).status).toBe(200);
    expect((await get('/readyz')).status).toBe(200);
  });

  it('refuses a request without a token, or with one the API server does not know, with 401', async () => {
    for (const r of [await get(JOB_PATH), await get(JOB_PATH, undefined, { token: 'not-a-token' }), await get('/metrics')]) {
      expect(r.status).toBe(401);
      expect(r.body).toMatchObject({ code: 'CONSORT_API_UNAUTHENTICATED' });
      expect(r.headers.get('www-authenticate')).toMatch(/^Bearer/);
    }
  });

  it('refuses a user without RBAC on federatedjobs with 403, whether the job exists or not', async () => {
    for (const path of [JOB_PATH, `${JOB_PATH}/model`, `${JOB_PATH}/report`, '/api/v1/namespaces/default/federatedjobs/no-such-job']) {
      const r = await get(path, 'bob');
      expect(r.status, path).toBe(403);
      expect(r.body, path).toMatchObject({ code: 'CONSORT_API_FORBIDDEN' });
      expect((r.body as { message: string }).message).toContain('"bob"');
    }
    // Alice's Role is in `default` only.
    expect((await get(`/api/v1/namespaces/kube-system/federatedjobs/${JOB}`, 'alice')).status).toBe(403);
  });

  it('names the bad parameter in a 400', async () => {
    const ns = await get(`/api/v1/namespaces/Not_A_Label/federatedjobs/${JOB}`, 'alice');
    expect(ns.status).toBe(400);
    expect(ns.body).toMatchObject({ code: 'CONSORT_API_BAD_REQUEST', field: 'namespace' });
    const name = await get(`/api/v1/namespaces/default/federatedjobs/${'x'.repeat(64)}`, 'alice');
    expect(name.status).toBe(400);
    expect(name.body).toMatchObject({ code: 'CONSORT_API_BAD_REQUEST', field: 'name' });
  });

  it('answers 404 for a job that does not exist, and 405 for anything but GET', async () => {
    const r = await get('/api/v1/namespaces/default/federatedjobs/no-such-job', 'alice');
    expect(r.status).toBe(404);
    expect(r.body).toMatchObject({ code: 'CONSORT_API_NOT_FOUND' });
    expect((await get(JOB_PATH, 'alice', { method: 'DELETE' })).status).toBe(405);
  });

  it('shows the running job and its history so far, then the finished job with every round', async () => {
    // While it runs (if the poll catches it so): the rounds so far, in order.
    let sawRunning = false;
    let finished: Answer | undefined;
    const answers: { status: number; phase?: string; rounds: number[] }[] = [];
    await waitUntil(
      'the job succeeds, seen through the API',
      async () => {
        const r = await get(JOB_PATH, 'alice');
        const v = r.body as { status?: { phase: string }; history?: { round: number }[] };
        answers.push({ status: r.status, ...(v.status ? { phase: v.status.phase } : {}), rounds: (v.history ?? []).map((h) => h.round) });
        if (v.status?.phase === 'Succeeded' || v.status?.phase === 'Failed') finished = r;
        return finished !== undefined;
      },
      { timeoutMs: 240_000, intervalMs: 200, describe: () => cluster.podLogs(JOB) },
    );
    // Every answer on the way: 200, and the rounds so far in order from the first.
    for (const a of answers) {
      expect(a.status).toBe(200);
      expect(a.rounds).toEqual(a.rounds.map((_, i) => i + 1));
    }
    sawRunning = answers.some((a) => a.phase === 'Running' && a.rounds.length > 0);
    const v = finished!.body as {
      metadata: { name: string; namespace: string; uid: string };
      spec: { rounds: number; sites: { name: string }[]; seed: number };
      status: { phase: string; round: number; accuracy: number; model: { sha256: string } };
      history: { round: number; globalAccuracy: number; sites: { site: string }[] }[];
    };
    expect(v.status.phase, `${JSON.stringify(v.status, null, 1)}\n${cluster.operators.map((p) => p.log(4000)).join('\n')}\n${cluster.podLogs(JOB)}`).toBe(
      'Succeeded',
    );
    expect(v.metadata).toMatchObject({ name: JOB, namespace: 'default' });
    expect(v.spec.rounds).toBe(ROUNDS);
    expect(v.spec.seed).toBe(42);
    expect(v.status.round).toBe(ROUNDS);
    expect(v.history.map((h) => h.round)).toEqual([1, 2, 3, 4]);
    expect(v.history.at(-1)!.globalAccuracy).toBeCloseTo(v.status.accuracy, 3); // status rounds to 4 places
    for (const h of v.history) expect(h.sites.map((s) => s.site).sort()).toEqual(v.spec.sites.map((s) => s.name).sort());
    // The same as the API server's own object.
    const direct = await cluster.job(JOB);
    expect(v.metadata.uid).toBe((direct!.metadata as { uid: string }).uid);
    expect(v.status).toMatchObject({ phase: 'Succeeded', round: ROUNDS });
    console.log(`api: history of ${v.history.length} rounds read through the API${sawRunning ? ', also while the job ran' : ''}`);
  });

  it('streams the final model: the safetensors whose SHA-256 the status names', async () => {
    const status = (await cluster.job(JOB))!.status as { model: { sha256: string; bytes: number } };
    const r = await get(`${JOB_PATH}/model`, 'alice');
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe('application/octet-stream');
    expect(r.headers.get('content-disposition')).toBe(`attachment; filename="default_${JOB}.safetensors"`);
    expect(r.bytes.length).toBe(status.model.bytes);
    expect(createHash('sha256').update(r.bytes).digest('hex')).toBe(status.model.sha256);
    expect(r.headers.get('etag')).toBe(`"sha256-${status.model.sha256}"`);
    const { layout, values } = decodeSafetensors(r.bytes);
    expect(layout.length).toBeGreaterThan(0);
    expect(values.every(Number.isFinite)).toBe(true);
    const head = await get(`${JOB_PATH}/model`, 'alice', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(status.model.bytes));
  });

  it('serves the run report, which opens in Chromium under its Content-Security-Policy with no complaint', async () => {
    const r = await get(`${JOB_PATH}/report`, 'alice');
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/html/);
    expect(r.headers.get('content-security-policy')).toContain("default-src 'none'");
    const html = r.body as string;
    expect(html).toContain(`<h1>${JOB}</h1>`);
    const load = await openPage(browser, `${base}${JOB_PATH}/report`, { headers: { authorization: `Bearer ${token('alice')}` } });
    expect(load.status).toBe(200);
    expect(load.consoleErrors).toEqual([]);
    expect(load.pageErrors).toEqual([]);
    expect(load.failedRequests).toEqual([]);
    expect(load.otherRequests).toEqual([]);
    const figures = await reportFigures(load.page);
    expect(figures).toHaveLength(3);
    for (const f of figures) expect(f.marks, f.caption).toBeGreaterThan(10);
    // The sites' own descriptions (data quality, backend) came through the checkpoint.
    expect(await load.page.locator('table.quality tbody tr').count()).toBe(3);
    expect(await load.page.locator('table.kv').textContent()).not.toContain('no site reported its backend');
    await screenshot(load.page, 'operator-report.png');
  });

  it('serves /metrics to a user RBAC lets get the path, and counts the requests by route and code', async () => {
    expect((await get('/metrics', 'alice')).status).toBe(403);
    const r = await get('/metrics', 'prometheus');
    expect(r.status).toBe(200);
    const text = r.body as string;
    expect(text).toMatch(/consort_api_requests_total\{route="\/api\/v1\/namespaces\/:namespace\/federatedjobs\/:name",code="403"\} [1-9]/);
    expect(text).toMatch(/consort_api_requests_total\{route="\/api\/v1\/namespaces\/:namespace\/federatedjobs\/:name",code="400"\} [1-9]/);
    expect(text).toMatch(/consort_api_requests_total\{route="\/api\/v1\/namespaces\/:namespace\/federatedjobs\/:name",code="200"\} [1-9]/);
    expect(text).toContain(`consort_job_round{namespace="default",federatedjob="${JOB}"} ${ROUNDS}`);
  });

  it('publishes a valid OpenAPI document, and the job answer matches the schema it documents', async () => {
    const doc = (await get('/openapi.json')).body as Record<string, unknown>;
    expect(doc.openapi).toMatch(/^3\.1\./);
    await SwaggerParser.validate(structuredClone(doc) as never);
    const deref = (await SwaggerParser.dereference(structuredClone(doc) as never)) as unknown as {
      paths: Record<string, { get: { responses: Record<string, { content: Record<string, { schema: object }> }> } }>;
    };
    const op = deref.paths['/api/v1/namespaces/{namespace}/federatedjobs/{name}']!.get;
    // zod writes .startsWith() as a pattern plus a format of its own naming, which Ajv need not check.
    const ajv = new Ajv2020({ strict: false, formats: { starts_with: true } });
    const validJob = ajv.compile(op.responses['200']!.content['application/json']!.schema);
    const job = await get(JOB_PATH, 'alice');
    expect(validJob(job.body), JSON.stringify(validJob.errors)).toBe(true);
    const validError = ajv.compile(op.responses['404']!.content['application/json']!.schema);
    expect(validError((await get('/api/v1/namespaces/default/federatedjobs/nope', 'alice')).body)).toBe(true);
  });
});
