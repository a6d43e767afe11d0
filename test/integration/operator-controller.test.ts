// Parts of the operator against a real API server, in this process: a reconcile the API server
// refuses (an admission policy) shows as a Warning event; the finalizer never blocks a
// deletion forever (NATS unreachable: given up after the cleanup timeout, with a Warning);
// an informer's stall watchdog re-lists a silent watch; two Lease candidates never lead together
// and a released lease passes at once; status is written only when it changes.
import { connect } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FederatedJobController } from '../../operator/controller/federated-job-controller.ts';
import { KubeClient, resourcePath, Resources } from '../../operator/kube/client.ts';
import { Informer } from '../../operator/kube/informer.ts';
import { LeaderElector } from '../../operator/kube/leader-election.ts';
import { createNatsTrust } from '../../operator/nats/trust.ts';
import { ControlPlane } from '../helpers/control-plane.ts';
import { NatsServer } from '../helpers/nats-server.ts';
import { waitUntil } from '../helpers/managed-process.ts';

describe('operator parts on a real API server', () => {
  let cp: ControlPlane;
  let client: KubeClient;

  beforeAll(async () => {
    cp = await ControlPlane.start({ crds: true, controllers: false });
    client = KubeClient.fromKubeconfig(cp.kubeconfig);
  }, 120_000);
  afterAll(async () => {
    await cp?.stop();
  });

  it('a job whose NATS buckets cannot be removed is still deleted after the cleanup timeout, with a Warning event', async () => {
    // A connection to a server that is then stopped: every bucket call fails.
    const nats = await NatsServer.start();
    const nc = await connect({ servers: nats.url, maxReconnectAttempts: 0 });
    await nats.stop();
    const trust = await createNatsTrust();
    const controller = new FederatedJobController({
      client,
      nc,
      signer: trust.signer,
      pods: { natsUrl: 'nats://127.0.0.1:1' },
      namespace: 'default',
      cleanupTimeoutMs: 2000,
    });
    try {
      await controller.startInformers();
      await client.create(resourcePath(Resources.federatedJobs, 'default'), {
        apiVersion: 'consort.dev/v1alpha1',
        kind: 'FederatedJob',
        metadata: { name: 'stuck', finalizers: ['consort.dev/cleanup'] },
        spec: { model: { type: 'logistic' }, sites: [{ name: 'a', data: { type: 'synthetic', generator: 'hospital' } }], rounds: 1, suspend: true },
      });
      await client.delete(resourcePath(Resources.federatedJobs, 'default', 'stuck'));
      controller.startReconciling();
      const t0 = Date.now();
      await waitUntil(
        'the job is gone',
        async () => {
          try {
            await client.get(resourcePath(Resources.federatedJobs, 'default', 'stuck'));
            return false;
          } catch {
            return true;
          }
        },
        { timeoutMs: 30_000, intervalMs: 100 },
      );
      expect(Date.now() - t0).toBeGreaterThan(1000);
      const events = await cp.kubectlOk(['get', 'events', '--field-selector', 'involvedObject.name=stuck', '-o', 'jsonpath={.items[*].reason}']);
      expect(events).toContain('CleanupIncomplete');
    } finally {
      await controller.stop();
      await nc.close().catch(() => {});
    }
  });

  it("a job whose Pods the API server refuses (a hospital's admission policy) says why in a Warning event, not only in the operator's log", async () => {
    await cp.kubectlOk(['create', 'namespace', 'guarded']);
    await cp.kubectlOk(['label', 'namespace', 'guarded', 'registry-policy=on']);
    // No controller manager here: the namespace's default ServiceAccount is made by hand.
    await cp.kubectlOk(['create', 'serviceaccount', 'default', '-n', 'guarded']);
    await cp.kubectlOk(['apply', '-f', '-'], {
      input: `apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: { name: hospital-registry }
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules: [{ apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods] }]
  validations:
    - expression: "object.spec.containers.all(c, c.image.startsWith('registry.hospital.local/'))"
      message: images must come from registry.hospital.local
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: { name: hospital-registry }
spec:
  policyName: hospital-registry
  validationActions: [Deny]
  matchResources: { namespaceSelector: { matchLabels: { registry-policy: "on" } } }
`,
    });
    const nats = await NatsServer.start();
    const nc = await connect({ servers: nats.url });
    const trust = await createNatsTrust();
    const lines: string[] = [];
    const controller = new FederatedJobController({
      client,
      nc,
      signer: trust.signer,
      pods: { natsUrl: nats.url },
      namespace: 'guarded',
      log: (l: string) => lines.push(l),
    });
    try {
      // The policy takes a moment to be enforced after it is made: the job comes once a Pod of
      // another registry's image is refused (a server-side dry run), or its Pods would be made.
      await waitUntil(
        'the admission policy enforced',
        async () => (await cp.kubectl(['run', 'probe', '-n', 'guarded', '--image=busybox', '--dry-run=server'])).stderr.includes('registry.hospital.local'),
        { timeoutMs: 60_000, intervalMs: 250 },
      );
      await controller.startInformers();
      controller.startReconciling();
      await client.create(resourcePath(Resources.federatedJobs, 'guarded'), {
        apiVersion: 'consort.dev/v1alpha1',
        kind: 'FederatedJob',
        metadata: { name: 'refused' },
        spec: { model: { type: 'logistic' }, sites: [{ name: 'a', data: { type: 'synthetic', generator: 'hospital' } }], rounds: 1 },
      });
      await waitUntil(
        'a ReconcileFailed event naming the policy',
        async () => {
          const events = await cp.kubectlOk([
            'get',
            'events',
            '-n',
            'guarded',
            '--field-selector',
            'involvedObject.name=refused',
            '-o',
            'jsonpath={range .items[*]}{.type} {.reason}: {.message}{"\\n"}{end}',
          ]);
          return /Warning ReconcileFailed: .*hospital-registry.*images must come from registry\.hospital\.local/.test(events);
        },
        {
          timeoutMs: 60_000,
          intervalMs: 500,
          describe: () => lines.join('\n'),
        },
      );
    } finally {
      await controller.stop();
      await nc.close().catch(() => {});
      await nats.stop();
    }
  });

  it("an informer's stall watchdog re-lists a watch that says nothing", async () => {
    const inf = new Informer(client, { path: resourcePath(Resources.configMaps, 'kube-public'), stallMs: 1500 });
    inf.start();
    await inf.waitForSync();
    expect(inf.lists).toBe(1);
    await waitUntil('a re-list', async () => inf.lists >= 2, { timeoutMs: 20_000 });
    // It still sees changes after re-listing.
    await client.create(resourcePath(Resources.configMaps, 'kube-public'), { metadata: { name: 'after-relist' }, data: { a: 'b' } });
    await waitUntil('the new object', async () => inf.get('kube-public/after-relist') !== undefined, { timeoutMs: 10_000 });
    await inf.stop();
  });

  it('two Lease candidates never lead at once; the holder stepping down hands over at once', async () => {
    await cp.kubectl(['create', 'namespace', 'consort-system']);
    const leading = new Set<string>();
    let overlap = false;
    const candidate = (id: string) =>
      new LeaderElector(client, {
        namespace: 'consort-system',
        name: 'test-lease',
        identity: id,
        leaseDurationMs: 3000,
        renewDeadlineMs: 2000,
        retryPeriodMs: 300,
        onStartedLeading: () => {
          leading.add(id);
          if (leading.size > 1) overlap = true;
        },
        onStoppedLeading: () => leading.delete(id),
      });
    const a = candidate('a');
    const b = candidate('b');
    a.start();
    await waitUntil('a leads', async () => a.leading, { timeoutMs: 10_000 });
    b.start();
    await new Promise((r) => setTimeout(r, 2000));
    expect(b.leading).toBe(false);
    const t0 = Date.now();
    await a.stop();
    await waitUntil('b leads', async () => b.leading, { timeoutMs: 10_000 });
    // Released, not expired: well under the 3 s lease.
    expect(Date.now() - t0).toBeLessThan(2500);
    expect(overlap).toBe(false);
    await b.stop();
  });
});
