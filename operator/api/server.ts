// The operator's HTTP server (fastify): the read-only FederatedJob API, /openapi.json generated
// from the routes' zod schemas, /metrics for Prometheus, /healthz and /readyz for the kubelet.
// Every error answer is { code, message, field? } with a code of operator/errors.ts; every
// request is counted in consort_api_requests_total{route, code}.
//
// Access, as kube-rbac-proxy does it: a bearer token, authenticated by a TokenReview (401
// without one the API server accepts), then a SubjectAccessReview for `get federatedjobs` on the
// job (403), after the parameters are checked (400), before the job is looked up (so a user
// who may not see a namespace cannot learn which jobs exist there). /metrics takes a
// SubjectAccessReview on the non-resource path; /healthz, /readyz and /openapi.json are open.
// Without an authorizer (the local runner, on loopback) nothing is checked.
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import {
  hasZodFastifySchemaValidationErrors,
  jsonSchemaTransform,
  jsonSchemaTransformObject,
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from 'fastify-type-provider-zod';
import { Counter, type Registry } from 'prom-client';
import { FederatedJobSpec } from '../../core/job/federated-job.ts';
import { FederatedJobStatus } from '../../core/job/federated-job-status.ts';
import { sha256OfObjectStoreDigest } from '../../core/protocol/digest.ts';
import { renderReportHtml } from '../../core/report/html.ts';
import type { JobObject } from '../controller/manifests.ts';
import { API_ERROR_STATUS, type ApiErrorCode, isApiErrorCode, OperatorError } from '../errors.ts';
import type { Access, ApiUser, Authorizer } from './auth.ts';
import type { JobSource } from './job-source.ts';
import { ApiErrorBody, BinaryBody, JobParams, JobView, TextBody } from './schemas.ts';

export const API_PREFIX = '/api/v1';
const JOB_PATH = `${API_PREFIX}/namespaces/:namespace/federatedjobs/:name`;
const REQUESTS_METRIC = 'consort_api_requests_total';
/** The longest path segment the router takes (Fastify's default, 100, refused a long name with its own error body). */
const MAX_PARAM_LENGTH = 1024;

export interface ApiServerOptions {
  /** The registry served at /metrics; consort_api_requests_total joins it. */
  registry: Registry;
  /** /readyz answers 200 once this is true (the controller's caches are synced). */
  ready: () => boolean;
  /** The jobs. Absent (the local runner): /metrics, /healthz, /readyz and /openapi.json only. */
  jobs?: JobSource;
  /** TokenReview and SubjectAccessReview. Absent: every route is open (loopback use only). */
  authorizer?: Authorizer;
  /** With an authorizer: /metrics asks a SubjectAccessReview for the path too (default true). */
  metricsAuth?: boolean;
  log?: (line: string) => void;
}

export interface ListenOptions {
  /** 0 picks a free port. */
  port: number;
  /** In a Pod 0.0.0.0 (Prometheus and the kubelet come from outside); the local runner 127.0.0.1. */
  address: string;
}

export interface ApiServer {
  readonly port: number;
  readonly app: FastifyInstance;
  close(): Promise<void>;
}

type Protection = 'open' | 'metrics' | 'job';

interface Authenticated {
  token: string;
  user: ApiUser;
}
const users = new WeakMap<FastifyRequest, Authenticated>();

const fail = (code: ApiErrorCode, message: string, field?: string) => new OperatorError(code, message, field === undefined ? {} : { field });

/** The requests counter, made once per registry (a test may build several servers on one). */
export function requestsCounter(registry: Registry): Counter<'route' | 'code'> {
  const existing = registry.getSingleMetric(REQUESTS_METRIC);
  if (existing) return existing as Counter<'route' | 'code'>;
  return new Counter({
    name: REQUESTS_METRIC,
    help: 'Requests to the operator HTTP API, by route (its pattern; "unmatched" for none) and HTTP status code.',
    labelNames: ['route', 'code'],
    registers: [registry],
  });
}

function bearer(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  const m = typeof h === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(h) : null;
  return m?.[1];
}

export async function buildApiServer(o: ApiServerOptions): Promise<FastifyInstance> {
  const log = o.log ?? (() => {});
  const requests = requestsCounter(o.registry);
  const protection = new Map<string, Protection>();
  const errorBody = (err: OperatorError): ApiErrorBody => ({
    code: err.code as ApiErrorCode,
    message: err.message,
    ...(err.field !== undefined ? { field: err.field } : {}),
  });
  const sendError = (reply: FastifyReply, err: OperatorError) => {
    const code = err.code as ApiErrorCode;
    if (code === 'CONSORT_API_UNAUTHENTICATED') reply.header('www-authenticate', 'Bearer realm="consort"');
    if (code === 'CONSORT_API_METHOD_NOT_ALLOWED') reply.header('allow', 'GET, HEAD');
    return reply.code(API_ERROR_STATUS[code]).type('application/json; charset=utf-8').send(errorBody(err));
  };
  // A URL the router cannot read (bad percent-encoding; a path segment past maxParamLength) got
  // Fastify's own body, uncounted; it is refused here as any bad parameter is. Names longer than
  // a Kubernetes name (63) but within maxParamLength reach the route, after the token, and its
  // schema names the field.
  const badUrl = (err: Error, reply: FastifyReply) => {
    const code = (err as { code?: string }).code;
    const what =
      code === 'FST_ERR_MAX_PARAM_LENGTH' ? `a path segment is longer than ${MAX_PARAM_LENGTH} characters` : 'the URL cannot be decoded (bad percent-encoding)';
    requests.inc({ route: 'unmatched', code: '400' });
    return sendError(reply, fail('CONSORT_API_BAD_REQUEST', what, 'path'));
  };
  const app = Fastify({
    logger: false,
    forceCloseConnections: true,
    return503OnClosing: true,
    keepAliveTimeout: 5000,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    frameworkErrors: (err, _req, reply) => badUrl(err, reply),
  });
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Consort operator API',
        version: 'v1',
        description:
          'Read-only access to FederatedJobs: status, per-round metric history, the final model and the run report. ' +
          'Send a Kubernetes bearer token: it is checked with a TokenReview, and each request with a SubjectAccessReview ' +
          '(`get federatedjobs` in the namespace; `get` on the path for /metrics), as kube-rbac-proxy does.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'A Kubernetes token (ServiceAccount or user).' } } },
    },
    transform: jsonSchemaTransform,
    transformObject: jsonSchemaTransformObject,
  });

  app.setErrorHandler((err, req, reply) => {
    if (hasZodFastifySchemaValidationErrors(err)) {
      const issue = err.validation[0]!;
      const field = issue.instancePath.replace(/^\//, '').replaceAll('/', '.') || (err.validationContext ?? 'request');
      return sendError(reply, fail('CONSORT_API_BAD_REQUEST', `${field}: ${issue.message}`, field));
    }
    if (err instanceof OperatorError && isApiErrorCode(err.code)) {
      if (err.code === 'CONSORT_API_UNAVAILABLE' || err.code === 'CONSORT_API_INTERNAL') log(`api: ${req.method} ${req.url}: ${err.message}`);
      return sendError(reply, err);
    }
    const status = (err as { statusCode?: number }).statusCode;
    if (status !== undefined && status >= 400 && status < 500) return sendError(reply, fail('CONSORT_API_BAD_REQUEST', (err as Error).message));
    log(`api: ${req.method} ${req.url}: ${(err as Error).stack ?? err}`);
    return sendError(reply, fail('CONSORT_API_INTERNAL', 'internal error (see the operator log)'));
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, fail('CONSORT_API_NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`)));

  app.addHook('onRequest', async (req) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') throw fail('CONSORT_API_METHOD_NOT_ALLOWED', `${req.method} is not allowed: the API is read-only`);
    const p = protection.get(req.routeOptions.url ?? '') ?? 'open';
    if (p === 'open' || !o.authorizer || (p === 'metrics' && o.metricsAuth === false)) return;
    const token = bearer(req);
    if (!token) throw fail('CONSORT_API_UNAUTHENTICATED', 'send a Kubernetes token: Authorization: Bearer <token>');
    const user = await o.authorizer.authenticate(token);
    if (!user) throw fail('CONSORT_API_UNAUTHENTICATED', 'the API server does not accept this token');
    users.set(req, { token, user });
    if (p === 'metrics') await authorize(req, { path: req.routeOptions.url! });
  });
  app.addHook('onResponse', async (req, reply) => {
    requests.inc({ route: req.routeOptions.url ?? 'unmatched', code: String(reply.statusCode) });
  });

  async function authorize(req: FastifyRequest, access: Access): Promise<void> {
    if (!o.authorizer) return;
    const who = users.get(req);
    // Fails closed: a protected route always passed authentication first.
    if (!who) throw fail('CONSORT_API_UNAUTHENTICATED', 'send a Kubernetes token: Authorization: Bearer <token>');
    const d = await o.authorizer.authorize(who.token, who.user, access);
    if (d.allowed) return;
    const what = 'path' in access ? `get ${access.path}` : `get federatedjobs.consort.dev "${access.name}" in namespace "${access.namespace}"`;
    throw fail('CONSORT_API_FORBIDDEN', `user "${who.user.username}" may not ${what}${d.reason ? ` (${d.reason})` : ''}`);
  }

  const z = app.withTypeProvider<ZodTypeProvider>();
  const text = (s: string) => ({ description: s, content: { 'text/plain': { schema: TextBody } } });

  protection.set('/healthz', 'open');
  z.get('/healthz', { schema: { summary: 'Liveness: the process answers.', response: { 200: text('ok') } } }, async (_req, reply) =>
    reply.type('text/plain; charset=utf-8').send('ok\n'),
  );
  protection.set('/readyz', 'open');
  z.get(
    '/readyz',
    { schema: { summary: "Readiness: the controller's caches are synced.", response: { 200: text('ok'), 503: text('not synced yet') } } },
    async (_req, reply) =>
      o.ready() ? reply.type('text/plain; charset=utf-8').send('ok\n') : reply.code(503).type('text/plain; charset=utf-8').send('caches not synced\n'),
  );
  protection.set('/metrics', 'metrics');
  z.get(
    '/metrics',
    {
      schema: {
        summary: 'Prometheus metrics (text exposition format).',
        ...(o.authorizer && o.metricsAuth !== false ? { security: [{ bearer: [] }] } : {}),
        response: {
          200: { description: 'The exposition text.', content: { 'text/plain': { schema: TextBody } } },
          401: ApiErrorBody,
          403: ApiErrorBody,
          503: ApiErrorBody,
        },
      },
    },
    async (_req, reply) => reply.type(o.registry.contentType).send(await o.registry.metrics()),
  );
  protection.set('/openapi.json', 'open');
  z.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  if (o.jobs) {
    const jobs = o.jobs;
    const security = o.authorizer ? { security: [{ bearer: [] }] } : {};
    const errors = { 400: ApiErrorBody, 401: ApiErrorBody, 403: ApiErrorBody, 404: ApiErrorBody, 503: ApiErrorBody };
    /** The job the request names, once the user may see it. */
    const findJob = async (req: FastifyRequest, p: JobParams): Promise<JobObject> => {
      await authorize(req, p);
      const job = jobs.job(p.namespace, p.name);
      if (!job) throw fail('CONSORT_API_NOT_FOUND', `no FederatedJob "${p.name}" in namespace "${p.namespace}"`);
      return job;
    };

    protection.set(JOB_PATH, 'job');
    z.get(
      JOB_PATH,
      {
        schema: {
          summary: 'A FederatedJob: its spec, its status and the metrics of every evaluated round.',
          tags: ['federatedjobs'],
          params: JobParams,
          ...security,
          response: { 200: JobView, ...errors },
        },
      },
      async (req) => {
        const job = await findJob(req, req.params);
        const spec = FederatedJobSpec.safeParse(job.spec);
        const status = FederatedJobStatus.safeParse(job.status ?? {});
        if (!spec.success || !status.success) throw fail('CONSORT_API_INTERNAL', 'the job in the cache does not match the FederatedJob schema');
        const m = job.metadata;
        return {
          metadata: {
            name: m.name,
            namespace: m.namespace ?? req.params.namespace,
            ...(m.uid ? { uid: m.uid } : {}),
            ...(m.resourceVersion ? { resourceVersion: m.resourceVersion } : {}),
            ...(m.generation !== undefined ? { generation: m.generation } : {}),
            ...(m.creationTimestamp ? { creationTimestamp: m.creationTimestamp } : {}),
            ...(m.deletionTimestamp ? { deletionTimestamp: m.deletionTimestamp } : {}),
            ...(m.labels ? { labels: m.labels } : {}),
            ...(m.annotations ? { annotations: m.annotations } : {}),
          },
          spec: spec.data,
          status: status.data,
          history: await jobs.history(job),
        };
      },
    );

    protection.set(`${JOB_PATH}/model`, 'job');
    z.get(
      `${JOB_PATH}/model`,
      {
        schema: {
          summary: 'The final model (safetensors, float32), once the job succeeded.',
          tags: ['federatedjobs'],
          params: JobParams,
          ...security,
          response: {
            200: { description: 'The safetensors file.', content: { 'application/octet-stream': { schema: BinaryBody } } },
            ...errors,
            409: ApiErrorBody,
          },
        },
      },
      async (req, reply) => {
        const job = await findJob(req, req.params);
        const model = await jobs.model(job);
        if (!model) throw fail('CONSORT_API_NOT_READY', `FederatedJob "${job.metadata.name}" has no final model yet (phase ${phaseOf(job)})`);
        const sha = sha256OfObjectStoreDigest(model.digest) ?? 'unknown';
        reply
          .header('content-type', 'application/octet-stream')
          .header('content-length', String(model.size))
          .header('content-disposition', `attachment; filename="${job.metadata.namespace}_${job.metadata.name}.safetensors"`)
          .header('etag', `"sha256-${sha}"`);
        if (req.method === 'HEAD') {
          await model.data.cancel().catch(() => {});
          model.done.catch(() => {});
          // An empty stream keeps the content-length set above (a string would replace it).
          return reply.send(Readable.from([]) as unknown as string);
        }
        model.done.catch((err: unknown) => log(`api: model of ${job.metadata.namespace}/${job.metadata.name}: ${(err as Error).message}`));
        // A stream is sent as it is, never serialised: the type provider only knows the documented schema.
        const body = Readable.fromWeb(model.data as WebReadableStream<Uint8Array>) as unknown as string;
        return reply.send(body);
      },
    );

    const reports = new Map<string, string>();
    protection.set(`${JOB_PATH}/report`, 'job');
    z.get(
      `${JOB_PATH}/report`,
      {
        schema: {
          summary: 'The run report (one self-contained HTML page, as `consort run` writes it), once the job succeeded.',
          tags: ['federatedjobs'],
          params: JobParams,
          ...security,
          response: {
            200: { description: 'report.html', content: { 'text/html': { schema: TextBody } } },
            ...errors,
            409: ApiErrorBody,
          },
        },
      },
      async (req, reply) => {
        const job = await findJob(req, req.params);
        const uid = job.metadata.uid ?? '';
        let html = phaseOf(job) === 'Succeeded' ? reports.get(uid) : undefined;
        if (!html) {
          const report = await jobs.report(job);
          if (!report)
            throw fail(
              'CONSORT_API_NOT_READY',
              phaseOf(job) === 'Failed'
                ? `FederatedJob "${job.metadata.name}" failed: it has no report (one is written only when a job succeeds; its status says why it failed)`
                : `FederatedJob "${job.metadata.name}" has no report yet (phase ${phaseOf(job)}): it is written when the job succeeds`,
            );
          html = await renderReportHtml(report);
          while (reports.size >= 16) reports.delete(reports.keys().next().value!);
          reports.set(uid, html);
        }
        // The page has no scripts and loads nothing: say so to the browser.
        return reply
          .type('text/html; charset=utf-8')
          .header('content-security-policy', "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
          .send(html);
      },
    );
  }
  await app.ready();
  return app;
}

const phaseOf = (job: JobObject) => (job.status as { phase?: string } | undefined)?.phase ?? 'Pending';

export async function startApiServer(o: ApiServerOptions & ListenOptions): Promise<ApiServer> {
  const app = await buildApiServer(o);
  await app.listen({ port: o.port, host: o.address });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : o.port;
  return { port, app, close: () => app.close() };
}
