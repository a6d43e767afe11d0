// The API's parts without a cluster: KubeAuthorizer's reviews (what it asks the API server, and
// that answers are cached per token hash for their TTL, shared while in flight, failures never
// cached); the server's order of checks (401, then 400, then 403, then 404), its error answers
// and their codes, the local runner's open variant, and the requests counter. The same against a
// real kube-apiserver is test/e2e/operator-api.test.ts.
import SwaggerParser from '@apidevtools/swagger-parser';
import type { FastifyInstance } from 'fastify';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { FederatedJobSpec } from '../../core/job/federated-job.ts';
import { type Access, type ApiUser, type Authorizer, KubeAuthorizer } from '../../operator/api/auth.ts';
import { assembleJobReport } from '../../operator/api/job-report.ts';
import type { JobSource } from '../../operator/api/job-source.ts';
import { buildApiServer } from '../../operator/api/server.ts';
import type { JobObject } from '../../operator/controller/manifests.ts';
import { OperatorError } from '../../operator/errors.ts';
import type { KubeClient } from '../../operator/kube/client.ts';

interface Sent {
  path: string;
  body: { spec: Record<string, unknown> };
}

/** A KubeClient whose reviews are answered by `answer`, recording what was asked. */
function reviewClient(answer: (s: Sent) => unknown): { client: KubeClient; sent: Sent[] } {
  const sent: Sent[] = [];
  const client = {
    request: async (path: string, init: { body: Sent['body'] }) => {
      const s = { path, body: init.body };
      sent.push(s);
      return answer(s);
    },
  } as unknown as KubeClient;
  return { client, sent };
}

const tokenReview = (s: Sent) =>
  s.body.spec.token === 'good'
    ? { status: { authenticated: true, user: { username: 'alice', uid: 'u-1', groups: ['team'] } } }
    : { status: { authenticated: false } };

describe('KubeAuthorizer', () => {
  it('asks a TokenReview once per token for the TTL, sharing one in flight, and keeps no token', async () => {
    let now = 0;
    const { client, sent } = reviewClient(tokenReview);
    const a = new KubeAuthorizer(client, { ttlMs: 10_000, now: () => now });
    const [u1, u2] = await Promise.all([a.authenticate('good'), a.authenticate('good')]);
    expect(u1).toEqual({ username: 'alice', uid: 'u-1', groups: ['team'] });
    expect(u2).toEqual(u1);
    expect(await a.authenticate('bad')).toBeUndefined();
    expect(sent.map((s) => s.path)).toEqual(['/apis/authentication.k8s.io/v1/tokenreviews', '/apis/authentication.k8s.io/v1/tokenreviews']);
    expect(sent[0]!.body).toMatchObject({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token: 'good' } });
    now = 9_999;
    await a.authenticate('good');
    expect(a.tokenReviews).toBe(2);
    now = 10_000;
    await a.authenticate('good');
    expect(a.tokenReviews).toBe(3);
  });

  it('asks a SubjectAccessReview for get federatedjobs on the job, or get on a path; caches the decision per token and access', async () => {
    const { client, sent } = reviewClient((s) => {
      if (s.path.endsWith('tokenreviews')) return tokenReview(s);
      const attrs = s.body.spec.resourceAttributes as { namespace?: string } | undefined;
      return { status: { allowed: attrs?.namespace === 'default', reason: 'RBAC' } };
    });
    const a = new KubeAuthorizer(client);
    const user = (await a.authenticate('good'))!;
    const job: Access = { namespace: 'default', name: 'h' };
    expect(await a.authorize('good', user, job)).toEqual({ allowed: true, reason: 'RBAC' });
    expect(await a.authorize('good', user, job)).toEqual({ allowed: true, reason: 'RBAC' });
    expect(await a.authorize('good', user, { namespace: 'other', name: 'h' })).toMatchObject({ allowed: false });
    expect(await a.authorize('good', user, { path: '/metrics' })).toMatchObject({ allowed: false });
    expect(a.accessReviews).toBe(3);
    const reviews = sent.filter((s) => s.path === '/apis/authorization.k8s.io/v1/subjectaccessreviews');
    expect(reviews[0]!.body).toEqual({
      apiVersion: 'authorization.k8s.io/v1',
      kind: 'SubjectAccessReview',
      spec: {
        user: 'alice',
        uid: 'u-1',
        groups: ['team'],
        resourceAttributes: { namespace: 'default', name: 'h', verb: 'get', group: 'consort.dev', resource: 'federatedjobs' },
      },
    });
    expect(reviews[2]!.body.spec.nonResourceAttributes).toEqual({ path: '/metrics', verb: 'get' });
  });

  it('never caches a review that could not be asked', async () => {
    let up = false;
    const { client } = reviewClient((s) => {
      if (!up) throw new Error('connect ECONNREFUSED');
      return tokenReview(s);
    });
    const a = new KubeAuthorizer(client);
    const err = await a.authenticate('good').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OperatorError);
    expect((err as OperatorError).code).toBe('CONSORT_API_UNAVAILABLE');
    up = true;
    expect(await a.authenticate('good')).toMatchObject({ username: 'alice' });
  });
});

const JOB: JobObject = {
  apiVersion: 'consort.dev/v1alpha1',
  kind: 'FederatedJob',
  metadata: { name: 'h', namespace: 'default', uid: 'uid-1', creationTimestamp: '2025-01-01T00:00:00Z' },
  spec: { model: { type: 'logistic' }, sites: [{ name: 'a', data: { type: 'synthetic', generator: 'hospital' } }] } as never,
  status: { phase: 'Running', round: 2 },
};

/** Alice may get jobs in `default`; nobody may get /metrics. */
const stubAuthorizer: Authorizer = {
  authenticate: async (t) => (t === 'good' ? { username: 'alice', groups: [] } : undefined),
  authorize: async (_t: string, _u: ApiUser, a: Access) => ({ allowed: !('path' in a) && a.namespace === 'default' }),
};

function stubJobs(over: Partial<JobSource> = {}): JobSource {
  return {
    job: (ns, name) => (ns === 'default' && name === 'h' ? JOB : undefined),
    history: async () => [],
    model: async () => undefined,
    report: async () => undefined,
    ...over,
  };
}

describe('the API server', () => {
  let app: FastifyInstance | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });
  const auth = { authorization: 'Bearer good' };
  const path = '/api/v1/namespaces/default/federatedjobs/h';

  it('checks in order: the token (401), the parameters (400), RBAC (403), then the job (404)', async () => {
    app = await buildApiServer({ registry: new Registry(), ready: () => true, jobs: stubJobs(), authorizer: stubAuthorizer });
    const ask = async (url: string, headers: Record<string, string> = {}) => {
      const r = await app!.inject({ url, headers });
      return { status: r.statusCode, body: r.json() as { code: string; field?: string } };
    };
    expect(await ask('/api/v1/namespaces/Bad_NS/federatedjobs/h')).toMatchObject({ status: 401, body: { code: 'CONSORT_API_UNAUTHENTICATED' } });
    expect(await ask('/api/v1/namespaces/Bad_NS/federatedjobs/h', auth)).toMatchObject({
      status: 400,
      body: { code: 'CONSORT_API_BAD_REQUEST', field: 'namespace' },
    });
    expect(await ask('/api/v1/namespaces/other/federatedjobs/nope', auth)).toMatchObject({ status: 403, body: { code: 'CONSORT_API_FORBIDDEN' } });
    expect(await ask('/api/v1/namespaces/default/federatedjobs/nope', auth)).toMatchObject({ status: 404, body: { code: 'CONSORT_API_NOT_FOUND' } });
    expect(await ask(path, { authorization: 'Basic abc' })).toMatchObject({ status: 401 });
    expect(await ask('/no/such/path')).toMatchObject({ status: 404, body: { code: 'CONSORT_API_NOT_FOUND' } });
  });

  it("answers a URL the router cannot read with the API's own 400, counted (it was Fastify's body, a 414 that said Bad Request, uncounted)", async () => {
    const registry = new Registry();
    app = await buildApiServer({ registry, ready: () => true, jobs: stubJobs(), authorizer: stubAuthorizer });
    const ask = async (url: string, headers: Record<string, string> = {}) => {
      const r = await app!.inject({ url, headers });
      return { status: r.statusCode, body: r.json() as { code: string; field?: string; message: string } };
    };
    // A name past 63 characters reaches the route: after the token, its schema names the field.
    expect(await ask(`/api/v1/namespaces/default/federatedjobs/${'a'.repeat(101)}`)).toMatchObject({ status: 401 });
    expect(await ask(`/api/v1/namespaces/default/federatedjobs/${'a'.repeat(101)}`, auth)).toMatchObject({
      status: 400,
      body: { code: 'CONSORT_API_BAD_REQUEST', field: 'name' },
    });
    // Past what the router takes, or not decodable: refused as a bad path, whoever asks.
    expect(await ask(`/api/v1/namespaces/default/federatedjobs/${'a'.repeat(2000)}`)).toMatchObject({
      status: 400,
      body: { code: 'CONSORT_API_BAD_REQUEST', field: 'path', message: 'a path segment is longer than 1024 characters' },
    });
    expect(await ask('/api/v1/namespaces/default/federatedjobs/%ZZ', auth)).toMatchObject({
      status: 400,
      body: { code: 'CONSORT_API_BAD_REQUEST', field: 'path', message: 'the URL cannot be decoded (bad percent-encoding)' },
    });
    const counted = (await registry.getSingleMetricAsString('consort_api_requests_total')).split('\n').find((l) => l.includes('route="unmatched",code="400"'));
    expect(counted).toMatch(/ 2$/);
  });

  it('answers 409 for a model or report not there yet, 503 when NATS fails, 500 without details for a bug', async () => {
    app = await buildApiServer({
      registry: new Registry(),
      ready: () => true,
      jobs: stubJobs({
        history: async () => {
          throw new OperatorError('CONSORT_API_UNAVAILABLE', 'cannot read the checkpoint from NATS: timeout');
        },
        report: async () => {
          throw new TypeError('secret internals');
        },
      }),
      authorizer: stubAuthorizer,
      log: () => {},
    });
    const model = await app.inject({ url: `${path}/model`, headers: auth });
    expect(model.statusCode).toBe(409);
    expect(model.json()).toMatchObject({ code: 'CONSORT_API_NOT_READY' });
    const job = await app.inject({ url: path, headers: auth });
    expect(job.statusCode).toBe(503);
    expect(job.json()).toMatchObject({ code: 'CONSORT_API_UNAVAILABLE' });
    const report = await app.inject({ url: `${path}/report`, headers: auth });
    expect(report.statusCode).toBe(500);
    expect(report.json()).toEqual({ code: 'CONSORT_API_INTERNAL', message: 'internal error (see the operator log)' });
  });

  it('is read-only: 405 with Allow for any other method', async () => {
    app = await buildApiServer({ registry: new Registry(), ready: () => true, jobs: stubJobs(), authorizer: stubAuthorizer });
    for (const method of ['POST', 'PUT', 'PATCH', 'DELETE'] as const) {
      const r = await app.inject({ url: path, method, headers: auth });
      expect(r.statusCode, method).toBe(405);
      expect(r.headers.allow).toBe('GET, HEAD');
    }
  });

  it('protects /metrics with a review of the path unless told not to; /readyz follows the caches', async () => {
    let ready = false;
    const registry = new Registry();
    app = await buildApiServer({ registry, ready: () => ready, jobs: stubJobs(), authorizer: stubAuthorizer });
    expect((await app.inject({ url: '/metrics' })).statusCode).toBe(401);
    expect((await app.inject({ url: '/metrics', headers: auth })).statusCode).toBe(403);
    expect((await app.inject({ url: '/readyz' })).statusCode).toBe(503);
    ready = true;
    expect((await app.inject({ url: '/readyz' })).statusCode).toBe(200);
    await app.close();
    app = await buildApiServer({ registry, ready: () => true, jobs: stubJobs(), authorizer: stubAuthorizer, metricsAuth: false });
    const m = await app.inject({ url: '/metrics' });
    expect(m.statusCode).toBe(200);
    // The same registry kept counting across both servers.
    expect(m.body).toContain('consort_api_requests_total{route="/metrics",code="401"} 1');
    expect(m.body).toContain('consort_api_requests_total{route="/metrics",code="403"} 1');
    expect(m.body).toContain('consort_api_requests_total{route="/readyz",code="503"} 1');
    // A review that cannot be asked answers 503: documented, as 401 and 403 are.
    const doc = (await app.inject({ url: '/openapi.json' })).json() as { paths: Record<string, { get: { responses: Record<string, unknown> } }> };
    expect(Object.keys(doc.paths['/metrics']!.get.responses).sort()).toEqual(['200', '401', '403', '503']);
  });

  it("the local runner's variant: metrics and probes only, open, documented as such", async () => {
    app = await buildApiServer({ registry: new Registry(), ready: () => true });
    expect((await app.inject({ url: '/metrics' })).statusCode).toBe(200);
    expect((await app.inject({ url: path })).statusCode).toBe(404);
    const doc = (await app.inject({ url: '/openapi.json' })).json() as { paths: Record<string, unknown> };
    expect(Object.keys(doc.paths).sort()).toEqual(['/healthz', '/metrics', '/readyz']);
    await SwaggerParser.validate(doc as never);
  });
});

describe('assembleJobReport', () => {
  const record = (round: number) => ({
    round,
    globalLoss: 0.5,
    globalAccuracy: 0.8,
    fitLoss: 0.4,
    participants: ['a'],
    sites: [{ site: 'a', samples: 10, loss: 0.5, accuracy: 0.8 }],
    accuracySpread: { min: 0.8, max: 0.8, std: 0 },
    durationMs: 5,
  });
  const facts = {
    metadata: { name: 'h', namespace: 'default' },
    spec: FederatedJobSpec.parse({ ...JOB.spec, rounds: 2 }),
    status: { phase: 'Succeeded' as const, round: 2, startTime: '2025-01-01T00:00:00Z', completionTime: '2025-01-01T00:01:00Z' },
    roundsCompleted: 2,
    layout: [{ name: 'w', shape: [2] }],
    weights: new Float32Array([1, 2]),
  };

  it('has nothing to say before a round was evaluated', () => {
    expect(assembleJobReport({ ...facts, records: [] })).toBeUndefined();
  });

  it("takes what the sites said of themselves from the checkpoint, and the times from the job's status", () => {
    const quality = { trainSamples: 30, testSamples: 10, rowsUsed: 40, rowsRejected: {}, missing: {}, labels: { no: 30, yes: 10 } };
    const r = assembleJobReport({
      ...facts,
      records: [record(1), record(2)],
      sites: { a: { labels: ['no', 'yes'], sampleShape: [12], quality, backend: { name: 'wasm', reason: 'small' } } },
    })!;
    expect(r.namespace).toBe('default');
    expect(r.durationMs).toBe(60_000);
    expect(r.model).toMatchObject({ classes: ['no', 'yes'], inputShape: [12], parameters: 2 });
    expect(r.backend).toBe('wasm');
    expect(r.sites).toEqual([{ site: 'a', quality }]);
    expect(r.final).toMatchObject({ rounds: 2, stoppedBy: 'rounds', accuracy: 0.8 });
  });
});
