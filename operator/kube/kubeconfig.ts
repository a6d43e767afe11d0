// What KubeClient needs of a kubeconfig, read without @kubernetes/client-node in the common cases:
// the in-cluster ServiceAccount (the operator's Pod) and kubeconfig files whose user has a token, a
// token file, a client certificate or a username and password. That package costs the operator
// ~100 MB of resident memory (it loads every generated API model to read one YAML file). A user
// with an exec plugin or an auth provider (EKS, GKE, AKS, OIDC), or a cluster behind a proxy, is
// handed to it, loaded only then. Which file, context, cluster and user: as kubectl and
// client-node choose them (--kubeconfig, else $KUBECONFIG's files merged with the first name
// winning, else ~/.kube/config, else the in-cluster ServiceAccount).
import { existsSync, readFileSync, statSync } from 'node:fs';
import type { RequestOptions } from 'node:https';
import { homedir } from 'node:os';
import { delimiter, dirname, isAbsolute, join, resolve } from 'node:path';
import type { KubeConfig } from '@kubernetes/client-node';
import { parse } from 'yaml';

/** The shape KubeClient uses; client-node's KubeConfig has it too. */
export interface KubeAccess {
  /** The API server; its CA (base64 PEM) when the kubeconfig gives one. */
  getCurrentCluster(): { server: string; proxyUrl?: string; caData?: string; caFile?: string } | null;
  /** Adds the TLS material and the credentials to a request's options. */
  applyToHTTPSOptions(opts: RequestOptions): Promise<void>;
}

export interface KubeAccessOptions {
  env?: NodeJS.ProcessEnv;
  /** Where the in-cluster ServiceAccount's token and CA are mounted. */
  serviceAccountDir?: string;
}

const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';
/** A token file is read again after this long: kubelet rotates bound ServiceAccount tokens. */
const TOKEN_FILE_TTL_MS = 60_000;

type Entry = Record<string, unknown>;
interface Found {
  value: Entry;
  /** The folder of the file it came from: relative paths in it are relative to that. */
  dir: string;
}

/** The kubeconfig at `path`, or (none given) $KUBECONFIG, ~/.kube/config or the in-cluster ServiceAccount. */
export function loadKubeAccess(path?: string, o: KubeAccessOptions = {}): KubeAccess {
  const env = o.env ?? process.env;
  if (path) return fromFiles([path], path);
  const listed = (env.KUBECONFIG ?? '').split(delimiter).filter((f) => f.length > 0);
  if (listed.length > 0) {
    const present = listed.filter((f) => existsSync(f));
    if (present.length === 0) throw new Error(`$KUBECONFIG: none of ${listed.join(', ')} exists`);
    return fromFiles(present, undefined);
  }
  const home = join(env.HOME ?? homedir(), '.kube', 'config');
  if (existsSync(home)) return fromFiles([home], home);
  const sa = o.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  if (env.KUBERNETES_SERVICE_HOST && env.KUBERNETES_SERVICE_PORT && existsSync(join(sa, 'token'))) {
    const host = env.KUBERNETES_SERVICE_HOST.includes(':') ? `[${env.KUBERNETES_SERVICE_HOST}]` : env.KUBERNETES_SERVICE_HOST;
    return new StaticAccess(`https://${host}:${env.KUBERNETES_SERVICE_PORT}`, {
      ca: readFileSync(join(sa, 'ca.crt')),
      token: tokenFile(join(sa, 'token')),
    });
  }
  throw new Error('no kubeconfig: none given, $KUBECONFIG unset, no ~/.kube/config, and not in a cluster');
}

/** `explicit`: the one file named (client-node loads it alone); otherwise $KUBECONFIG's list. */
function fromFiles(files: string[], explicit: string | undefined): KubeAccess {
  const clusters = new Map<string, Found>();
  const users = new Map<string, Found>();
  const contexts = new Map<string, Found>();
  let current: string | undefined;
  for (const file of files) {
    const doc = (parse(readFileSync(file, 'utf8')) ?? {}) as Record<string, unknown>;
    const dir = dirname(resolve(file));
    const take = (list: unknown, key: string, into: Map<string, Found>) => {
      for (const item of Array.isArray(list) ? (list as Entry[]) : []) {
        const name = item?.name;
        if (typeof name === 'string' && !into.has(name)) into.set(name, { value: (item[key] ?? {}) as Entry, dir });
      }
    };
    take(doc.clusters, 'cluster', clusters);
    take(doc.users, 'user', users);
    take(doc.contexts, 'context', contexts);
    if (!current && typeof doc['current-context'] === 'string' && doc['current-context']) current = doc['current-context'];
  }
  const where = files.join(', ');
  if (!current) throw new Error(`${where}: no current-context`);
  const context = contexts.get(current);
  if (!context) throw new Error(`${where}: current-context "${current}" is not among the contexts`);
  const cluster = clusters.get(String(context.value.cluster));
  if (!cluster) throw new Error(`${where}: context "${current}" names cluster "${context.value.cluster}", which is not there`);
  const server = String(cluster.value.server ?? '');
  if (!server) throw new Error(`${where}: cluster "${context.value.cluster}" has no server`);
  const user = context.value.user === undefined ? undefined : users.get(String(context.value.user));
  const proxyUrl = cluster.value['proxy-url'];
  if (user?.value.exec || user?.value['auth-provider'] || proxyUrl) {
    return viaClientNode(server, typeof proxyUrl === 'string' ? proxyUrl : undefined, (kc) => (explicit ? kc.loadFromFile(explicit) : kc.loadFromDefault()));
  }
  const data = (f: Found, key: string): Buffer | undefined => {
    const inline = f.value[`${key}-data`];
    if (typeof inline === 'string' && inline) return Buffer.from(inline, 'base64');
    const file = f.value[key];
    if (typeof file === 'string' && file) return readFileSync(isAbsolute(file) ? file : join(f.dir, file));
    return undefined;
  };
  const u = user?.value ?? {};
  const tokenPath = typeof u.tokenFile === 'string' && u.tokenFile ? (isAbsolute(u.tokenFile) ? u.tokenFile : join(user!.dir, u.tokenFile)) : undefined;
  const token = typeof u.token === 'string' && u.token ? () => u.token as string : tokenPath ? tokenFile(tokenPath) : undefined;
  const ca = data(cluster, 'certificate-authority');
  const cert = user ? data(user, 'client-certificate') : undefined;
  const key = user ? data(user, 'client-key') : undefined;
  return new StaticAccess(server, {
    ...(ca ? { ca } : {}),
    ...(cert ? { cert } : {}),
    ...(key ? { key } : {}),
    ...(cluster.value['insecure-skip-tls-verify'] === true ? { insecure: true } : {}),
    ...(typeof cluster.value['tls-server-name'] === 'string' ? { servername: cluster.value['tls-server-name'] } : {}),
    ...(token ? { token } : {}),
    ...(typeof u.username === 'string' && typeof u.password === 'string' ? { basic: `${u.username}:${u.password}` } : {}),
  });
}

interface Credentials {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  insecure?: boolean;
  servername?: string;
  token?: () => string;
  basic?: string;
}

class StaticAccess implements KubeAccess {
  readonly #server: string;
  readonly #c: Credentials;

  constructor(server: string, c: Credentials) {
    this.#server = server.replace(/\/$/, '');
    this.#c = c;
  }

  getCurrentCluster(): { server: string; caData?: string } {
    return { server: this.#server, ...(this.#c.ca ? { caData: this.#c.ca.toString('base64') } : {}) };
  }

  async applyToHTTPSOptions(opts: RequestOptions): Promise<void> {
    const c = this.#c;
    if (c.ca) opts.ca = c.ca;
    if (c.cert) opts.cert = c.cert;
    if (c.key) opts.key = c.key;
    if (c.insecure) opts.rejectUnauthorized = false;
    if (c.servername) opts.servername = c.servername;
    const headers = (opts.headers ?? {}) as Record<string, string>;
    if (c.token) headers.authorization = `Bearer ${c.token()}`;
    else if (c.basic) opts.auth = c.basic;
    opts.headers = headers;
  }
}

/** A token file, read again once it is older than TOKEN_FILE_TTL_MS or has changed on disk. */
function tokenFile(path: string): () => string {
  let token = '';
  let readAt = 0;
  let mtime = 0;
  return () => {
    const now = Date.now();
    if (now - readAt > TOKEN_FILE_TTL_MS || !token) {
      const m = statSync(path).mtimeMs;
      if (m !== mtime || !token) {
        token = readFileSync(path, 'utf8').trim();
        mtime = m;
      }
      readAt = now;
    }
    return token;
  };
}

/** Exec plugins, auth providers and proxies: client-node's KubeConfig, imported on the first request. */
function viaClientNode(server: string, proxyUrl: string | undefined, load: (kc: KubeConfig) => void): KubeAccess {
  let config: Promise<KubeConfig> | undefined;
  return {
    getCurrentCluster: () => ({ server: server.replace(/\/$/, ''), ...(proxyUrl ? { proxyUrl } : {}) }),
    applyToHTTPSOptions: async (opts) => {
      config ??= import('@kubernetes/client-node').then(
        ({ KubeConfig }) => {
          const kc = new KubeConfig();
          load(kc);
          return kc;
        },
        (err: unknown) => {
          config = undefined;
          throw err;
        },
      );
      await (await config).applyToHTTPSOptions(opts);
    },
  };
}
