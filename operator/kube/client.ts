// A small REST client for the Kubernetes API: JSON requests, the patch content types, and
// watch streams. Authentication and TLS come from the kubeconfig (kubeconfig.ts: in-cluster
// ServiceAccount, tokens, client certificates; exec plugins through @kubernetes/client-node's
// KubeConfig); the requests are node's own https, so that a watch is one long response read line
// by line and an abort ends it at once.
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, type RequestOptions, request as httpsRequest } from 'node:https';
import { type KubeAccess, loadKubeAccess } from './kubeconfig.ts';

export type PatchType = 'merge' | 'json' | 'strategic' | 'apply';
const PATCH_CONTENT: Record<PatchType, string> = {
  merge: 'application/merge-patch+json',
  json: 'application/json-patch+json',
  strategic: 'application/strategic-merge-patch+json',
  apply: 'application/apply-patch+yaml',
};

/** An error answer of the API server, with its HTTP status and Status reason. */
export class KubeApiError extends Error {
  override readonly name = 'KubeApiError';
  readonly status: number;
  readonly reason: string;
  constructor(status: number, reason: string, message: string) {
    super(message);
    this.status = status;
    this.reason = reason;
  }
}

export const isNotFound = (err: unknown): boolean => err instanceof KubeApiError && err.status === 404;
export const isConflict = (err: unknown): boolean => err instanceof KubeApiError && err.status === 409;
export const isGone = (err: unknown): boolean => err instanceof KubeApiError && err.status === 410;

export interface WatchEvent<T = KubeObject> {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: T;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    generation?: number;
    creationTimestamp?: string;
    deletionTimestamp?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    finalizers?: string[];
    ownerReferences?: OwnerReference[];
    [k: string]: unknown;
  };
  [k: string]: unknown;
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface KubeList<T> {
  metadata: { resourceVersion: string; continue?: string };
  items: T[];
}

export interface RequestInit {
  method?: string;
  body?: unknown;
  patch?: PatchType;
  query?: Record<string, string | number | boolean | undefined>;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export class KubeClient {
  readonly config: KubeAccess;
  readonly server: string;
  /** Every answer's status and how long it took (request sent → body read), for the operator's metrics. */
  onResponse?: (method: string, status: number, seconds: number) => void;
  /**
   * Connections kept alive between requests. client-node's KubeConfig gives every request an agent of its own,
   * that is a TCP connection, a TLS handshake and a new SecureContext per request; an agent pools
   * connections by their TLS options, so renewed client certificates still get new ones.
   */
  readonly #agents = { https: new HttpsAgent({ keepAlive: true }), http: new HttpAgent({ keepAlive: true }) };

  /** `config`: loadKubeAccess's, or a @kubernetes/client-node KubeConfig (the same shape). */
  constructor(config: KubeAccess) {
    this.config = config;
    const cluster = config.getCurrentCluster();
    if (!cluster) throw new Error('the kubeconfig names no current cluster');
    this.server = cluster.server.replace(/\/$/, '');
  }

  /** From a kubeconfig file, or (none given) $KUBECONFIG, ~/.kube/config or the in-cluster ServiceAccount. */
  static fromKubeconfig(path?: string): KubeClient {
    return new KubeClient(loadKubeAccess(path));
  }

  async #options(method: string, path: string, query: RequestInit['query'], headers: Record<string, string>): Promise<{ url: URL; opts: RequestOptions }> {
    const url = new URL(this.server + path);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const opts: RequestOptions = { method, headers: { accept: 'application/json', ...headers } };
    await this.config.applyToHTTPSOptions(opts);
    // A proxy's agent stays as client-node's KubeConfig made it.
    if (!this.config.getCurrentCluster()?.proxyUrl) opts.agent = url.protocol === 'https:' ? this.#agents.https : this.#agents.http;
    return { url, opts };
  }

  async request<T = KubeObject>(path: string, init: RequestInit = {}): Promise<T> {
    const method = init.method ?? (init.patch ? 'PATCH' : init.body !== undefined ? 'POST' : 'GET');
    const headers: Record<string, string> = {};
    let payload: string | undefined;
    if (init.body !== undefined) {
      headers['content-type'] = init.patch ? PATCH_CONTENT[init.patch] : 'application/json';
      payload = JSON.stringify(init.body);
      // Without a length node sends no body on DELETE, and the API server ignores DeleteOptions.
      headers['content-length'] = String(Buffer.byteLength(payload));
    }
    const { url, opts } = await this.#options(method, path, init.query, headers);
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const t0 = performance.now();
    return await new Promise<T>((done, fail) => {
      const req = send(url, { ...opts, timeout: init.timeoutMs ?? 30_000, ...(init.signal ? { signal: init.signal } : {}) }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', fail);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          this.onResponse?.(method, status, (performance.now() - t0) / 1000);
          let body: unknown;
          try {
            body = text ? JSON.parse(text) : {};
          } catch {
            body = text;
          }
          if (status >= 200 && status < 300) return done(body as T);
          const s = body as { reason?: string; message?: string };
          fail(new KubeApiError(status, s?.reason ?? 'Unknown', `${method} ${path}: ${status} ${s?.message ?? text.slice(0, 500)}`));
        });
      });
      req.on('timeout', () => req.destroy(new Error(`${method} ${path}: timed out`)));
      req.on('error', fail);
      if (payload !== undefined) req.write(payload);
      req.end();
    });
  }

  get<T = KubeObject>(path: string, query?: RequestInit['query']): Promise<T> {
    return this.request<T>(path, query ? { query } : {});
  }
  create<T = KubeObject>(path: string, body: unknown): Promise<T> {
    return this.request<T>(path, { method: 'POST', body });
  }
  patch<T = KubeObject>(path: string, body: unknown, type: PatchType = 'merge', query?: RequestInit['query']): Promise<T> {
    return this.request<T>(path, { method: 'PATCH', body, patch: type, ...(query ? { query } : {}) });
  }
  put<T = KubeObject>(path: string, body: unknown): Promise<T> {
    return this.request<T>(path, { method: 'PUT', body });
  }
  delete<T = KubeObject>(path: string, query?: RequestInit['query'], options?: Record<string, unknown>): Promise<T> {
    return this.request<T>(path, {
      method: 'DELETE',
      ...(query ? { query } : {}),
      ...(options ? { body: { kind: 'DeleteOptions', apiVersion: 'v1', ...options } } : {}),
    });
  }

  /**
   * A watch stream: calls `onEvent` for each event until the server closes it (resolves), it
   * fails (rejects), or `signal` aborts it (resolves).
   */
  async watch<T = KubeObject>(path: string, query: RequestInit['query'], onEvent: (e: WatchEvent<T>) => void, signal: AbortSignal): Promise<void> {
    const { url, opts } = await this.#options('GET', path, { ...query, watch: true }, {});
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    await new Promise<void>((done, fail) => {
      if (signal.aborted) return done();
      const req = send(url, { ...opts, signal }, (res) => {
        if ((res.statusCode ?? 0) >= 300) {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let s: { reason?: string; message?: string } = {};
            try {
              s = JSON.parse(text);
            } catch {}
            fail(new KubeApiError(res.statusCode ?? 0, s.reason ?? 'Unknown', `watch ${path}: ${res.statusCode} ${s.message ?? text.slice(0, 300)}`));
          });
          return;
        }
        let buffer = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buffer += chunk;
          let nl = buffer.indexOf('\n');
          while (nl >= 0) {
            const line = buffer.slice(0, nl).trim();
            buffer = buffer.slice(nl + 1);
            nl = buffer.indexOf('\n');
            if (!line) continue;
            let event: WatchEvent<T>;
            try {
              event = JSON.parse(line) as WatchEvent<T>;
            } catch {
              continue;
            }
            onEvent(event);
          }
        });
        res.on('end', () => done());
        res.on('error', (err) => (signal.aborted ? done() : fail(err)));
      });
      req.on('error', (err) => (signal.aborted ? done() : fail(err)));
      req.end();
    });
  }
}

/** The REST path of a resource: core (v1) or a group's, namespaced or not, optionally one object and a subresource. */
export function resourcePath(r: { group?: string; version: string; plural: string }, namespace?: string, name?: string, sub?: string): string {
  const base = r.group ? `/apis/${r.group}/${r.version}` : `/api/${r.version}`;
  return `${base}${namespace ? `/namespaces/${namespace}` : ''}/${r.plural}${name ? `/${name}` : ''}${sub ? `/${sub}` : ''}`;
}

export const Resources = {
  federatedJobs: { group: 'consort.dev', version: 'v1alpha1', plural: 'federatedjobs', kind: 'FederatedJob' },
  pods: { version: 'v1', plural: 'pods', kind: 'Pod' },
  secrets: { version: 'v1', plural: 'secrets', kind: 'Secret' },
  configMaps: { version: 'v1', plural: 'configmaps', kind: 'ConfigMap' },
  events: { version: 'v1', plural: 'events', kind: 'Event' },
  leases: { group: 'coordination.k8s.io', version: 'v1', plural: 'leases', kind: 'Lease' },
} as const;
