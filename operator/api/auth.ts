// Who is asking, and may they: the API authenticates a bearer token with a TokenReview and
// authorises the request with a SubjectAccessReview, both answered by the API server, as
// kube-rbac-proxy does. A user then sees exactly what `kubectl get federatedjob` lets them see.
// Answers are cached briefly, keyed by a hash of the token (the token itself is never kept), so
// that a dashboard polling every second costs the API server one review per TTL; concurrent
// requests with one token share one review in flight. Failures to ask are never cached.
import { createHash } from 'node:crypto';
import { API_GROUP } from '../../core/job/federated-job.ts';
import { OperatorError } from '../errors.ts';
import type { KubeClient } from '../kube/client.ts';

export interface ApiUser {
  username: string;
  uid?: string;
  groups: string[];
  extra?: Record<string, string[]>;
}

/** What a request needs: `get` on one FederatedJob, or `get` on a non-resource path (/metrics). */
export type Access = { namespace: string; name: string } | { path: string };

export interface Decision {
  allowed: boolean;
  reason?: string;
}

/** The API's view of authentication and authorisation (the API server's, or a test's). */
export interface Authorizer {
  /** The user a token belongs to, or undefined for a token the API server does not accept. */
  authenticate(token: string): Promise<ApiUser | undefined>;
  authorize(token: string, user: ApiUser, access: Access): Promise<Decision>;
}

export interface KubeAuthorizerOptions {
  /** How long an answer is reused (default 10 s). */
  ttlMs?: number;
  /** Entries kept at most per cache; the oldest go first (default 10,000). */
  maxEntries?: number;
  /** TokenReview audiences (default: the API server's own). */
  audiences?: string[];
  now?: () => number;
}

interface TokenReviewStatus {
  authenticated?: boolean;
  user?: { username?: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> };
  error?: string;
}
interface SubjectAccessReviewStatus {
  allowed?: boolean;
  denied?: boolean;
  reason?: string;
  evaluationError?: string;
}

/** A small TTL cache of promises: one lookup in flight per key, failures dropped at once. */
class TtlCache<V> {
  readonly #entries = new Map<string, { expires: number; value: Promise<V> }>();
  readonly #ttlMs: number;
  readonly #max: number;
  readonly #now: () => number;
  constructor(ttlMs: number, max: number, now: () => number) {
    this.#ttlMs = ttlMs;
    this.#max = max;
    this.#now = now;
  }
  get(key: string, load: () => Promise<V>): Promise<V> {
    const now = this.#now();
    const hit = this.#entries.get(key);
    if (hit && hit.expires > now) return hit.value;
    if (hit) this.#entries.delete(key);
    while (this.#entries.size >= this.#max) this.#entries.delete(this.#entries.keys().next().value!);
    const value = load();
    this.#entries.set(key, { expires: now + this.#ttlMs, value });
    value.catch(() => {
      if (this.#entries.get(key)?.value === value) this.#entries.delete(key);
    });
    return value;
  }
  get size(): number {
    return this.#entries.size;
  }
}

export const tokenHash = (token: string): string => createHash('sha256').update(token).digest('hex');

export class KubeAuthorizer implements Authorizer {
  readonly #client: KubeClient;
  readonly #audiences: string[] | undefined;
  readonly #users: TtlCache<ApiUser | undefined>;
  readonly #decisions: TtlCache<Decision>;
  /** Reviews sent to the API server, for tests. */
  tokenReviews = 0;
  accessReviews = 0;

  constructor(client: KubeClient, o: KubeAuthorizerOptions = {}) {
    this.#client = client;
    this.#audiences = o.audiences;
    const ttl = o.ttlMs ?? 10_000;
    const max = o.maxEntries ?? 10_000;
    const now = o.now ?? Date.now;
    this.#users = new TtlCache(ttl, max, now);
    this.#decisions = new TtlCache(ttl, max, now);
  }

  authenticate(token: string): Promise<ApiUser | undefined> {
    return this.#users.get(tokenHash(token), async () => {
      this.tokenReviews++;
      const review = await this.#ask<{ status?: TokenReviewStatus }>('/apis/authentication.k8s.io/v1/tokenreviews', {
        apiVersion: 'authentication.k8s.io/v1',
        kind: 'TokenReview',
        spec: { token, ...(this.#audiences ? { audiences: this.#audiences } : {}) },
      });
      const s = review.status ?? {};
      if (!s.authenticated || !s.user?.username) return undefined;
      return {
        username: s.user.username,
        groups: s.user.groups ?? [],
        ...(s.user.uid ? { uid: s.user.uid } : {}),
        ...(s.user.extra ? { extra: s.user.extra } : {}),
      };
    });
  }

  authorize(token: string, user: ApiUser, access: Access): Promise<Decision> {
    const key = `${tokenHash(token)}\u0000${'path' in access ? `path\u0000${access.path}` : `job\u0000${access.namespace}\u0000${access.name}`}`;
    return this.#decisions.get(key, async () => {
      this.accessReviews++;
      const attributes =
        'path' in access
          ? { nonResourceAttributes: { path: access.path, verb: 'get' } }
          : { resourceAttributes: { namespace: access.namespace, name: access.name, verb: 'get', group: API_GROUP, resource: 'federatedjobs' } };
      const review = await this.#ask<{ status?: SubjectAccessReviewStatus }>('/apis/authorization.k8s.io/v1/subjectaccessreviews', {
        apiVersion: 'authorization.k8s.io/v1',
        kind: 'SubjectAccessReview',
        spec: {
          user: user.username,
          groups: user.groups,
          ...(user.uid ? { uid: user.uid } : {}),
          ...(user.extra ? { extra: user.extra } : {}),
          ...attributes,
        },
      });
      const s = review.status ?? {};
      return { allowed: s.allowed === true && s.denied !== true, ...(s.reason ? { reason: s.reason } : {}) };
    });
  }

  async #ask<T>(path: string, body: unknown): Promise<T> {
    try {
      return await this.#client.request<T>(path, { method: 'POST', body, timeoutMs: 10_000 });
    } catch (err) {
      throw new OperatorError('CONSORT_API_UNAVAILABLE', `cannot ask the API server (${path.split('/').at(-1)}): ${(err as Error).message}`, { cause: err });
    }
  }
}
