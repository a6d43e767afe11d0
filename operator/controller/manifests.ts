// The Kubernetes objects a FederatedJob owns, as pure functions of the job: its spec ConfigMap,
// its credentials Secrets, its worker Pods and (placement: pod) its coordinator Pod. Each carries
// an owner reference to the job, so deleting the job deletes them (the garbage collector does),
// and the labels by which the operator's informers find them again.
import { stringify } from 'yaml';
import type { FederatedJobSpec, ResourcesSpec, SiteSpec } from '../../core/job/federated-job.ts';
import { API_VERSION, KIND } from '../../core/job/federated-job.ts';
import type { KubeObject, OwnerReference } from '../kube/client.ts';

export const LABELS = {
  managedBy: 'app.kubernetes.io/managed-by',
  job: 'consort.dev/job',
  site: 'consort.dev/site',
  role: 'consort.dev/role',
} as const;
export const MANAGED_BY = 'consort-operator';
export const FINALIZER = 'consort.dev/cleanup';

/** Where the worker sees its job file and its NATS credentials. */
export const JOB_MOUNT = '/etc/consort/job';
export const NATS_MOUNT = '/etc/consort/nats';
/** Where a worker keeps its site state between rounds (consort site --state): an emptyDir of its Pod. */
export const SITE_STATE_MOUNT = '/var/lib/consort/state';

export interface JobObject extends KubeObject {
  spec: FederatedJobSpec;
  status?: Record<string, unknown>;
}

export interface PodSettings {
  /** The NATS URL as the Pods reach it. */
  natsUrl: string;
}

/** A name of at most 63 characters: `prefix-suffix`, the prefix shortened (with a hash) when too long. */
export function childName(job: string, suffix: string): string {
  const full = `${job}-${suffix}`;
  if (full.length <= 63) return full;
  let h = 0;
  for (const c of full) h = (Math.imul(h, 31) + c.charCodeAt(0)) >>> 0;
  const tag = h.toString(36).slice(0, 6);
  return `${full.slice(0, 63 - tag.length - 1).replace(/-+$/, '')}-${tag}`;
}

export const names = {
  jobConfig: (job: string) => childName(job, 'job'),
  jobSecret: (job: string) => childName(job, 'nats'),
  siteSecret: (job: string, site: string) => childName(job, `nats-${site}`),
  workerPod: (job: string, site: string) => childName(job, `site-${site}`),
  coordinatorPod: (job: string) => childName(job, 'coordinator'),
};

export function ownerRef(job: JobObject): OwnerReference {
  return { apiVersion: API_VERSION, kind: KIND, name: job.metadata.name, uid: job.metadata.uid!, controller: true, blockOwnerDeletion: true };
}

function meta(job: JobObject, name: string, role: string, extra: Record<string, string> = {}) {
  return {
    name,
    namespace: job.metadata.namespace,
    labels: { [LABELS.managedBy]: MANAGED_BY, [LABELS.job]: job.metadata.name, [LABELS.role]: role, ...extra },
    ownerReferences: [ownerRef(job)],
  };
}

/** The job as its processes read it: the spec the API server stored (defaults applied), nothing else. */
export function jobFile(job: JobObject): string {
  return stringify({
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name: job.metadata.name, namespace: job.metadata.namespace },
    spec: job.spec,
  });
}

export function jobConfigMap(job: JobObject): KubeObject {
  return { apiVersion: 'v1', kind: 'ConfigMap', metadata: meta(job, names.jobConfig(job.metadata.name), 'job'), data: { 'job.yaml': jobFile(job) } };
}

export function secret(job: JobObject, name: string, role: string, data: Record<string, string>, extra: Record<string, string> = {}): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: meta(job, name, role, extra),
    type: 'Opaque',
    immutable: true,
    data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
  };
}

function resources(r: ResourcesSpec | undefined): Record<string, Record<string, string>> | undefined {
  if (!r) return undefined;
  const want: Record<string, string> = {};
  if (r.cpu) want.cpu = r.cpu;
  if (r.memory) want.memory = r.memory;
  if (r.gpus > 0) want['nvidia.com/gpu'] = String(r.gpus);
  if (Object.keys(want).length === 0) return undefined;
  // Requests equal limits: a site's round time should not depend on its neighbours.
  return { requests: want, limits: want };
}

const securityContext = {
  runAsNonRoot: true,
  runAsUser: 65532,
  runAsGroup: 65532,
  allowPrivilegeEscalation: false,
  readOnlyRootFilesystem: true,
  capabilities: { drop: ['ALL'] },
  seccompProfile: { type: 'RuntimeDefault' },
};

function baseVolumes(job: JobObject, secretName: string) {
  return {
    volumes: [
      { name: 'job', configMap: { name: names.jobConfig(job.metadata.name) } },
      { name: 'nats', secret: { secretName, defaultMode: 0o400 } },
      { name: 'tmp', emptyDir: {} },
    ],
    mounts: [
      { name: 'job', mountPath: JOB_MOUNT, readOnly: true },
      { name: 'nats', mountPath: NATS_MOUNT, readOnly: true },
      { name: 'tmp', mountPath: '/tmp' },
    ],
  };
}

export function workerPod(job: JobObject, site: SiteSpec, s: PodSettings): KubeObject {
  const w = job.spec.worker;
  const { volumes, mounts } = baseVolumes(job, names.siteSecret(job.metadata.name, site.name));
  const args = ['site', '--job', `${JOB_MOUNT}/job.yaml`, '--site', site.name, '--nats', s.natsUrl, '--creds', `${NATS_MOUNT}/site.creds`];
  // The site's own state between rounds (a lossy codec's residual, SCAFFOLD's c_i) on a volume of the Pod:
  // a worker container that crashes and is restarted in place carries on where it stopped.
  volumes.push({ name: 'site-state', emptyDir: {} } as never);
  mounts.push({ name: 'site-state', mountPath: SITE_STATE_MOUNT } as never);
  args.push('--state', SITE_STATE_MOUNT);
  if (site.volume) {
    volumes.push({
      name: 'data',
      ...(site.volume.claimName
        ? { persistentVolumeClaim: { claimName: site.volume.claimName, readOnly: site.volume.readOnly } }
        : { hostPath: { path: site.volume.hostPath!, type: 'Directory' } }),
    } as never);
    mounts.push({ name: 'data', mountPath: site.volume.mountPath, readOnly: site.volume.readOnly } as never);
    args.push('--data-dir', site.volume.mountPath);
  }
  const nodeSelector = site.nodeSelector ?? w.nodeSelector;
  const res = resources(site.resources ?? w.resources);
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: meta(job, names.workerPod(job.metadata.name, site.name), 'worker', { [LABELS.site]: site.name }),
    spec: {
      restartPolicy: 'OnFailure',
      automountServiceAccountToken: false,
      ...(w.serviceAccountName ? { serviceAccountName: w.serviceAccountName } : {}),
      ...(w.schedulerName ? { schedulerName: w.schedulerName } : {}),
      ...(nodeSelector ? { nodeSelector } : {}),
      ...(w.tolerations ? { tolerations: w.tolerations } : {}),
      securityContext: { runAsNonRoot: true, fsGroup: 65532 },
      terminationGracePeriodSeconds: 10,
      containers: [
        {
          name: 'worker',
          image: w.image,
          imagePullPolicy: w.imagePullPolicy,
          command: ['consort'],
          args,
          env: [{ name: 'TF_CPP_MIN_LOG_LEVEL', value: '2' }],
          // A worker that stops on bad input says why in its last lines: kept as its termination message.
          terminationMessagePolicy: 'FallbackToLogsOnError',
          ...(res ? { resources: res } : {}),
          volumeMounts: mounts,
          securityContext,
        },
      ],
      volumes,
    },
  };
}

export function coordinatorPod(job: JobObject, s: PodSettings): KubeObject {
  const w = job.spec.worker;
  const { volumes, mounts } = baseVolumes(job, names.jobSecret(job.metadata.name));
  const res = resources(job.spec.coordinator.resources);
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: meta(job, names.coordinatorPod(job.metadata.name), 'coordinator'),
    spec: {
      restartPolicy: 'OnFailure',
      automountServiceAccountToken: false,
      securityContext: { runAsNonRoot: true, fsGroup: 65532 },
      terminationGracePeriodSeconds: 10,
      containers: [
        {
          name: 'coordinator',
          image: w.image,
          imagePullPolicy: w.imagePullPolicy,
          command: ['consort'],
          args: [
            'coordinator',
            `${JOB_MOUNT}/job.yaml`,
            '--nats',
            s.natsUrl,
            '--creds',
            `${NATS_MOUNT}/coordinator.creds`,
            '--keys',
            `${NATS_MOUNT}/keys.json`,
            '--out',
            '/tmp/out',
            '--join-timeout',
            String(job.spec.coordinator.joinTimeoutSeconds),
          ],
          env: [{ name: 'TF_CPP_MIN_LOG_LEVEL', value: '2' }],
          ...(res ? { resources: res } : {}),
          volumeMounts: mounts,
          securityContext,
        },
      ],
      volumes,
    },
  };
}
