// operator/kube/kubeconfig.ts against @kubernetes/client-node's KubeConfig, which it stands in for:
// the same server, TLS options and credentials for tokens, token files, client certificates
// (inline and as files relative to the kubeconfig), basic auth, insecure clusters, $KUBECONFIG's
// merged files and the in-cluster ServiceAccount (and a user's tokenFile, as kubectl, which
// client-node ignores); exec plugins are handed to client-node.
import { mkdirSync, writeFileSync } from 'node:fs';
import type { RequestOptions } from 'node:https';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadKubeAccess } from '../../operator/kube/kubeconfig.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const PEM = (what: string) => `-----BEGIN ${what}-----\nMIIB${what.replace(/ /g, '')}==\n-----END ${what}-----\n`;

function kubeconfig(user: Record<string, unknown>, cluster: Record<string, unknown> = {}, name = 'one'): Record<string, unknown> {
  return {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: `c-${name}`, cluster: { server: `https://${name}.example:6443/`, ...cluster } }],
    users: [{ name: `u-${name}`, user }],
    contexts: [{ name, context: { cluster: `c-${name}`, user: `u-${name}` } }],
    'current-context': name,
  };
}

async function options(access: { applyToHTTPSOptions(o: RequestOptions): Promise<void> }): Promise<Record<string, unknown>> {
  const o: RequestOptions = { headers: {} };
  await access.applyToHTTPSOptions(o);
  const h = (o.headers ?? {}) as Record<string, string>;
  const auth = h.authorization ?? h.Authorization;
  const text = (v: unknown) => (v === undefined ? undefined : Buffer.isBuffer(v) ? v.toString('utf8') : String(v));
  return {
    authorization: auth,
    basic: o.auth,
    ca: text(o.ca),
    cert: text(o.cert),
    key: text(o.key),
    rejectUnauthorized: o.rejectUnauthorized,
    servername: o.servername,
  };
}

describe('loadKubeAccess', () => {
  const tmp = useTmpDirs();

  it('reads what client-node reads: tokens, token files, certificates inline and as relative files, basic auth, insecure', async () => {
    const dir = tmp('kubeconfig');
    mkdirSync(join(dir, 'pki'));
    writeFileSync(join(dir, 'pki', 'ca.crt'), PEM('CA CERT'));
    writeFileSync(join(dir, 'pki', 'client.crt'), PEM('CLIENT CERT'));
    writeFileSync(join(dir, 'pki', 'client.key'), PEM('PRIVATE KEY'));
    writeFileSync(join(dir, 'token'), 'from-a-file\n');
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    const cases: Record<string, Record<string, unknown>> = {
      token: kubeconfig({ token: 'abc.def' }, { 'certificate-authority-data': b64(PEM('CA CERT')) }),
      tokenFile: kubeconfig({ tokenFile: 'token' }, { 'certificate-authority': 'pki/ca.crt' }),
      certFiles: kubeconfig(
        { 'client-certificate': 'pki/client.crt', 'client-key': join(dir, 'pki', 'client.key') },
        { 'certificate-authority': 'pki/ca.crt' },
      ),
      certData: kubeconfig(
        { 'client-certificate-data': b64(PEM('CLIENT CERT')), 'client-key-data': b64(PEM('PRIVATE KEY')) },
        { 'tls-server-name': 'api.internal' },
      ),
      basic: kubeconfig({ username: 'ada', password: 's3cret' }, { 'insecure-skip-tls-verify': true }),
    };
    for (const [name, doc] of Object.entries(cases)) {
      const file = join(dir, `${name}.yaml`);
      writeFileSync(file, stringify(doc));
      const ours = loadKubeAccess(file);
      const theirs = new KubeConfig();
      theirs.loadFromFile(file);
      expect(ours.getCurrentCluster()?.server, name).toBe('https://one.example:6443');
      const mine = await options(ours);
      if (name === 'tokenFile') {
        // kubectl reads a user's tokenFile; client-node does not (it knows token files only of auth providers).
        expect(mine.authorization).toBe('Bearer from-a-file');
        expect({ ...mine, authorization: undefined }, name).toEqual(await options(theirs));
      } else expect(mine, name).toEqual(await options(theirs));
      expect(mine.authorization ?? mine.basic ?? mine.cert, name).toBeDefined();
    }
  });

  it("merges $KUBECONFIG's files (the first name and current-context win), skipping missing ones", async () => {
    const dir = tmp('kubeconfig-merge');
    const first = join(dir, 'first.yaml');
    const second = join(dir, 'second.yaml');
    // The first file names the context; the second holds it, and a cluster of the same name as the first's.
    writeFileSync(first, stringify({ ...kubeconfig({ token: 'first' }), contexts: [], 'current-context': 'two' }));
    writeFileSync(second, stringify(kubeconfig({ token: 'second' }, {}, 'two')));
    const env = { KUBECONFIG: [join(dir, 'missing.yaml'), first, second].join(':'), HOME: dir };
    const access = loadKubeAccess(undefined, { env });
    expect(access.getCurrentCluster()?.server).toBe('https://two.example:6443');
    expect((await options(access)).authorization).toBe('Bearer second');
    expect(() => loadKubeAccess(undefined, { env: { KUBECONFIG: join(dir, 'missing.yaml'), HOME: dir } })).toThrow(/none of/);
  });

  it('falls back to the in-cluster ServiceAccount (an IPv6 service host in brackets)', async () => {
    const home = tmp('kubeconfig-home');
    const sa = tmp('kubeconfig-sa');
    writeFileSync(join(sa, 'token'), 'first-token');
    writeFileSync(join(sa, 'ca.crt'), PEM('CA CERT'));
    const access = loadKubeAccess(undefined, {
      env: { HOME: home, KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '443' },
      serviceAccountDir: sa,
    });
    expect(access.getCurrentCluster()?.server).toBe('https://[fd00::1]:443');
    expect(await options(access)).toMatchObject({ authorization: 'Bearer first-token', ca: PEM('CA CERT') });
    expect(() => loadKubeAccess(undefined, { env: { HOME: home }, serviceAccountDir: sa })).toThrow(/no kubeconfig/);
  });

  it('hands an exec plugin to client-node', async () => {
    const dir = tmp('kubeconfig-exec');
    const file = join(dir, 'exec.yaml');
    const credential = { apiVersion: 'client.authentication.k8s.io/v1beta1', kind: 'ExecCredential', status: { token: 'from-exec' } };
    writeFileSync(
      file,
      stringify(
        kubeconfig({
          exec: {
            apiVersion: 'client.authentication.k8s.io/v1beta1',
            command: process.execPath,
            args: ['-e', `process.stdout.write(${JSON.stringify(JSON.stringify(credential))})`],
            interactiveMode: 'Never',
          },
        }),
      ),
    );
    const access = loadKubeAccess(file);
    expect(access.getCurrentCluster()?.server).toBe('https://one.example:6443');
    expect((await options(access)).authorization).toBe('Bearer from-exec');
  });
});
