// The FederatedJob controller: informers on jobs and on what they own (Pods, Secrets,
// ConfigMaps, found again by label), one keyed work queue, and a level-triggered reconcile that
// looks at the job and its objects as they are now and makes one step towards what the spec
// asks: finalizer, credentials, spec ConfigMap, worker Pods, the round loop (here or in a Pod),
// status (written only when it changed), Events. The reconcile never waits for training: the
// round loop runs beside it and re-queues the job whenever its progress changes.
import type { NatsConnection } from '@nats-io/transport-node';
import { Objm } from '@nats-io/obj';
import { FederatedJobSpec, separateProcessesProblem, type FederatedJob } from '../../core/job/federated-job.ts';
import type { FederatedJobStatus, JobPhase } from '../../core/job/federated-job-status.ts';
import { describeIssues } from '../../core/job/issues.ts';
import { type Assignment, AssignmentReply, assignmentSubject } from '../../core/protocol/assignment.ts';
import { buckets, jobKey, PROTOCOL_VERSION } from '../../core/protocol/subjects.ts';
import { decodeJson, encodeJson } from '../../core/protocol/wire.ts';
import { isConflict, isNotFound, type KubeClient, type KubeObject, resourcePath, Resources } from '../kube/client.ts';
import { EventRecorder } from '../kube/events.ts';
import { Informer, keyOf } from '../kube/informer.ts';
import { OwnWrites } from '../kube/own-writes.ts';
import { StatusWrites } from '../kube/status-writes.ts';
import { WorkQueue } from '../kube/work-queue.ts';
import type { OperatorMetrics } from '../metrics.ts';
import { type AccountSigner, mintJobCreds } from '../nats/trust.ts';
import { InOperatorRun, type JobRun, PodRun, type RunProgress } from './job-runs.ts';
import { coordinatorPod, FINALIZER, type JobObject, jobConfigMap, LABELS, MANAGED_BY, names, type PodSettings, secret, workerPod } from './manifests.ts';
import { workerInputFailure, desiredStatus, sameJson } from './status.ts';
import { emptySnapshot, type JobMetrics } from '../job-metrics.ts';

export interface ControllerOptions {
  client: KubeClient;
  nc: NatsConnection;
  signer: AccountSigner;
  pods: PodSettings;
  /** Watch one namespace only (default: all). */
  namespace?: string;
  workers?: number;
  /** Credentials minted for a job expire after this long. */
  credentialsTtlMs?: number;
  /** Past this long after deletion, cleanup outside Kubernetes is given up (with a Warning) rather than block deletion. */
  cleanupTimeoutMs?: number;
  log?: (line: string) => void;
  /** Per-job series (round, loss, accuracy, sites, bytes, refusals) for Prometheus. */
  jobMetrics?: JobMetrics;
  /** Work-queue latency, for metrics and the benchmark. */
  onQueueLatency?: (seconds: number) => void;
  /** The process's Prometheus metrics: work queue, reconciles, API requests, re-lists. */
  metrics?: OperatorMetrics;
}

type JobKeys = { coordinator: string; sites: Record<string, string> };
interface StoredCredentials {
  seeds: Record<string, string>;
  keys: JobKeys | null;
}

const TERMINAL: JobPhase[] = ['Succeeded', 'Failed'];
/** Progress that changes no state (a round's figures) is written to status at most this often per job. */
const PROGRESS_WRITE_INTERVAL_MS = 1000;
const podPhase = (p: KubeObject | undefined) => (p?.status as { phase?: string } | undefined)?.phase;
/** A change of a job other than of its status. */
const jobChanged = (old: KubeObject, j: KubeObject) =>
  old.metadata.generation !== j.metadata.generation ||
  old.metadata.deletionTimestamp !== j.metadata.deletionTimestamp ||
  !sameJson(old.metadata.finalizers ?? [], j.metadata.finalizers ?? []) ||
  !sameJson(old.metadata.labels ?? {}, j.metadata.labels ?? {}) ||
  !sameJson(old.metadata.annotations ?? {}, j.metadata.annotations ?? {}) ||
  old.metadata.uid !== j.metadata.uid;
const decode = (s: KubeObject | undefined, key: string) => {
  const v = (s?.data as Record<string, string> | undefined)?.[key];
  return v === undefined ? undefined : Buffer.from(v, 'base64').toString('utf8');
};

/** Restarts of a Pod's containers, summed (the kubelet counts them in its status). */
function containerRestarts(p: KubeObject): number {
  const statuses = (p.status as { containerStatuses?: Array<{ restartCount?: number }> } | undefined)?.containerStatuses ?? [];
  return statuses.reduce((n, c) => n + (c.restartCount ?? 0), 0);
}

export class FederatedJobController {
  readonly jobs: Informer<JobObject>;
  readonly pods: Informer<KubeObject>;
  readonly secrets: Informer<KubeObject>;
  readonly configMaps: Informer<KubeObject>;
  readonly queue: WorkQueue;
  readonly runs = new Map<string, JobRun>();
  readonly #o: ControllerOptions;
  readonly #events: EventRecorder;
  readonly #restarts = new Map<string, Map<string, number>>();
  readonly #refusals = new Map<string, Map<string, string>>();
  /** Assignments asked at least once without an answer (logged once). */
  readonly #unanswered = new Set<string>();
  /** Jobs this operator saw finish (their terminal status may not be in the cache yet). */
  readonly #finished = new Map<
    string,
    { uid: string; generation: number; phase: JobPhase; progress: RunProgress; problem?: { reason: string; message: string } }
  >();
  /** Remote sites' answers, by job uid and site. */
  readonly #assignments = new Map<string, 'asking' | 'accepted' | 'refused' | number>();
  readonly #log: (line: string) => void;
  /** Credentials this process stored for a job (by uid) that its cache may not show yet. */
  readonly #minted = new Map<string, StoredCredentials>();
  /** Our own creates and patches, whose echoes are not news. */
  readonly #own = new OwnWrites();
  /** Our status writes the job cache has not shown yet (status-writes.ts). */
  readonly #statusWrites = new StatusWrites<Record<string, unknown>>();
  #reconciling = false;
  /** Status writes and reconciles done, for tests and metrics. */
  statusWrites = 0;

  constructor(o: ControllerOptions) {
    this.#o = o;
    this.#log = o.log ?? (() => {});
    const { client, metrics } = o;
    const ns = o.namespace;
    const selector = `${LABELS.managedBy}=${MANAGED_BY}`;
    const informer = (r: { group?: string; version: string; plural: string }, labelSelector?: string) => ({
      path: resourcePath(r, ns),
      ...(labelSelector ? { labelSelector } : {}),
      log: this.#log,
      ...(metrics ? { onRelist: () => metrics.informerRelists.inc({ resource: r.plural }) } : {}),
    });
    this.jobs = new Informer<JobObject>(client, informer(Resources.federatedJobs));
    this.pods = new Informer(client, informer(Resources.pods, selector));
    this.secrets = new Informer(client, informer(Resources.secrets, selector));
    this.configMaps = new Informer(client, informer(Resources.configMaps, selector));
    const onLatency = o.onQueueLatency;
    this.queue = new WorkQueue({
      workers: o.workers ?? 4,
      log: this.#log,
      ...(onLatency || metrics
        ? {
            onLatency: (s: number) => {
              metrics?.workqueueLatency.observe(s);
              onLatency?.(s);
            },
          }
        : {}),
    });
    if (metrics) {
      metrics.observeQueueDepth(() => this.queue.length);
      const previous = client.onResponse;
      client.onResponse = (method, status, seconds) => {
        metrics.kubeRequests.inc({ method, code: String(status) });
        metrics.kubeRequestDuration.observe({ method }, seconds);
        previous?.(method, status, seconds);
      };
    }
    this.#events = new EventRecorder(client, 'consort-operator', this.#log);
    // Only what a reconcile reads is news (as controller-runtime's predicates): of a job, all but
    // its status, which only this controller writes (its own writes would each bring the job
    // back for nothing); of a Pod, its phase and its deletion; of a Secret or ConfigMap, that it
    // exists. A burst of 200 jobs is a third fewer reconciles.
    // Nor is the echo of our own write (own-writes.ts): the reconcile that made it acted on it.
    const own = this.#own;
    this.jobs.on({
      upsert: (j, old) => {
        if (j.metadata.uid) this.#statusWrites.seen(j.metadata.uid, j.metadata.resourceVersion);
        if (own.isEcho('federatedjobs', j)) return;
        if (!old || jobChanged(old, j)) this.queue.add(keyOf(j));
      },
      deleted: (j) => {
        own.forget('federatedjobs', j);
        if (j.metadata.uid) this.#statusWrites.forget(j.metadata.uid);
        this.queue.add(keyOf(j));
      },
    });
    const owner = (o: KubeObject) => {
      const job = o.metadata.labels?.[LABELS.job];
      if (job) this.queue.add(o.metadata.namespace ? `${o.metadata.namespace}/${job}` : job);
    };
    const gone = (resource: string) => (o: KubeObject) => {
      own.forget(resource, o);
      owner(o);
    };
    this.pods.on({
      upsert: (p, old) => {
        if (own.isEcho('pods', p)) return;
        // A restarted container, too: a worker that stops on bad input restarts in a Pod that stays Running.
        if (
          !old ||
          podPhase(old) !== podPhase(p) ||
          old.metadata.deletionTimestamp !== p.metadata.deletionTimestamp ||
          containerRestarts(old) !== containerRestarts(p)
        )
          owner(p);
      },
      deleted: gone('pods'),
    });
    for (const [resource, inf] of [
      ['secrets', this.secrets],
      ['configmaps', this.configMaps],
    ] as const) {
      inf.on({ upsert: (o, old) => (own.isEcho(resource, o) || old ? undefined : owner(o)), deleted: gone(resource) });
    }
  }

  /** Starts the informers (a standby keeps its cache warm too). */
  async startInformers(): Promise<void> {
    for (const inf of [this.jobs, this.pods, this.secrets, this.configMaps]) inf.start();
    await Promise.all([this.jobs, this.pods, this.secrets, this.configMaps].map((i) => i.waitForSync()));
  }

  /** Every informer has listed once (the readiness probe). */
  get synced(): boolean {
    return [this.jobs, this.pods, this.secrets, this.configMaps].every((i) => i.synced);
  }

  /** Starts reconciling (the leader only). */
  startReconciling(): void {
    if (this.#reconciling) return;
    this.#reconciling = true;
    this.queue.start((key) => this.#measured(key));
    for (const j of this.jobs.list()) this.queue.add(keyOf(j));
  }

  async stop(): Promise<void> {
    await this.queue.stop();
    await Promise.all([...this.runs.values()].map((r) => r.stop()));
    this.runs.clear();
    await this.#events.flush();
    await Promise.all([this.jobs, this.pods, this.secrets, this.configMaps].map((i) => i.stop()));
  }

  /**
   * A reconcile, measured, whose failure the job's Events show: an API server refusing its Pods (an
   * admission policy, a missing ServiceAccount) left the job with no status and no Event, the
   * reason only in the operator's log. A conflict (someone else's write first) is routine: retried
   * without a word.
   */
  async #reconcileShown(key: string): Promise<{ requeueAfterMs?: number } | undefined> {
    try {
      return await this.reconcile(key);
    } catch (err) {
      const job = this.jobs.get(key);
      if (job && !isConflict(err)) void this.#events.record(job, 'Warning', 'ReconcileFailed', `${(err as Error).message}`.slice(0, 1000));
      throw err;
    }
  }

  async #measured(key: string): Promise<{ requeueAfterMs?: number } | undefined> {
    const metrics = this.#o.metrics;
    if (!metrics) return await this.#reconcileShown(key);
    const t0 = performance.now();
    let result: 'success' | 'error' = 'error';
    try {
      const r = await this.#reconcileShown(key);
      result = 'success';
      return r;
    } finally {
      metrics.reconciled(key, result, (performance.now() - t0) / 1000);
      // A deleted job's series goes with it.
      if (!this.jobs.get(key)) metrics.forgetJob(key);
    }
  }

  #owned(inf: Informer<KubeObject>, ns: string, name: string): KubeObject | undefined {
    return inf.get(`${ns}/${name}`);
  }

  async reconcile(key: string): Promise<{ requeueAfterMs?: number } | undefined> {
    const cached = this.jobs.get(key);
    if (!cached) {
      const [ns, name] = key.split('/') as [string, string];
      this.#o.jobMetrics?.forget(ns, name);
      await this.#stopRun(key);
      this.queue.forget(key);
      return undefined;
    }
    if (cached.metadata.deletionTimestamp) return await this.#finalize(key, cached);
    // A copy: the cache's objects are the informer's, never changed here. Its status is the one
    // we last wrote while the cache has not shown that write yet.
    const job: JobObject = { ...cached, metadata: { ...cached.metadata } };
    if (cached.metadata.uid) {
      const status = this.#statusWrites.current(cached.metadata.uid, cached.status);
      if (status !== undefined) job.status = status;
    }
    const ns = job.metadata.namespace!;
    // The finalizer must be on the job before anything outside Kubernetes (its NATS buckets) is
    // made; what Kubernetes holds is the garbage collector's by owner reference. So a new job's
    // finalizer goes on while its ConfigMap and Secrets are created, not one round trip before.
    const finalizer = job.metadata.finalizers?.includes(FINALIZER)
      ? undefined
      : this.#o.client
          .patch<JobObject>(resourcePath(Resources.federatedJobs, ns, job.metadata.name), {
            metadata: { finalizers: [...(job.metadata.finalizers ?? []), FINALIZER], resourceVersion: job.metadata.resourceVersion },
          })
          .then((patched) => {
            this.#own.wrote('federatedjobs', patched);
            // Go on with the API server's answer (its resourceVersion), keeping the spec parsed here.
            job.metadata = patched.metadata;
          });
    // Awaited on every path below; this only keeps a path that fails first from leaving it unhandled.
    finalizer?.catch(() => {});
    const status = (job.status ?? {}) as FederatedJobStatus;
    const parsed = FederatedJobSpec.safeParse(job.spec);
    if (!parsed.success) {
      await finalizer;
      // The CRD's schema and rules refuse what zod refuses; this is for an older CRD left installed.
      const message = describeIssues(parsed.error, ['spec']).join('; ');
      await this.#writeStatus(job, 'Failed', { problem: { reason: 'InvalidSpec', message } });
      return undefined;
    }
    job.spec = parsed.data;
    // What the CRD cannot say because `consort run` allows it: sites apart need the classes listed.
    const apart = status.phase === undefined || status.phase === 'Pending' ? separateProcessesProblem(parsed.data) : undefined;
    if (apart) {
      await finalizer;
      await this.#writeStatus(job, 'Failed', { problem: { reason: 'InvalidSpec', message: apart } });
      return undefined;
    }
    // The cache may not have our own terminal status write back yet: remember it, or a reconcile
    // in between would start the finished job again.
    const finished = this.#finished.get(key);
    // A job that has ended stays ended whatever its generation: the CRD lets only spec.suspend
    // change, and setting it used to rewrite the phase to Suspended (conditions and report lost),
    // clearing it again then trained the job a second time over its finished model.
    const ended = TERMINAL.includes(status.phase as JobPhase);
    const terminal = ended || (finished !== undefined && finished.uid === job.metadata.uid && finished.generation === job.metadata.generation);
    if (terminal) {
      await finalizer;
      if (ended && status.observedGeneration !== job.metadata.generation) {
        void this.#events.record(
          job,
          'Normal',
          'SuspendIgnored',
          `the job has ended (${status.phase}): spec.suspend changes nothing; create a new job to train again`,
        );
        // Seen: the event once per change, and observedGeneration tells kubectl wait and scripts so.
        await this.#observed(job);
      }
      // Our terminal status write may have failed (API server away): write it from what we kept.
      if (finished && status.phase !== finished.phase) {
        await this.#writeStatus(job, finished.phase, { progress: finished.progress, ...(finished.problem ? { problem: finished.problem } : {}) });
      }
      await this.#stopRun(key);
      await this.#deleteWorkers(job);
      const done = (job.status ?? {}) as FederatedJobStatus;
      if (!finished && done.phase) {
        // A job that ended before this operator started: its figures from its status.
        this.#o.jobMetrics?.update(ns, job.metadata.name, { ...emptySnapshot(done.phase, job.spec), round: done.round ?? 0 });
      }
      return undefined;
    }

    let run = this.runs.get(key);
    if (run && run.uid !== job.metadata.uid) {
      await this.#stopRun(key);
      run = undefined;
    }
    const placement = job.spec.coordinator.placement;
    if (run && run.placement !== placement) {
      await this.#stopRun(key);
      run = undefined;
    }

    if (job.spec.suspend) {
      await finalizer;
      if (run && (run.progress.state === 'joining' || run.progress.state === 'running') && placement === 'operator') {
        run.requestPause();
        await this.#writeStatus(job, status.phase === 'Pending' ? 'Pending' : 'Running', {});
        return undefined; // the run re-queues the job when it pauses
      }
      // The run's last progress, kept for the status: stopping the run forgets it.
      const progress = run?.progress;
      await this.#stopRun(key);
      await this.#deleteWorkers(job);
      const after = Math.max(progress?.round ?? 0, status.round ?? 0);
      if (status.phase !== 'Suspended') void this.#events.record(job, 'Normal', 'Suspended', `suspended after round ${after}`);
      await this.#writeStatus(job, 'Suspended', progress ? { progress } : {});
      return undefined;
    }

    // Independent objects, created together rather than one round trip after another: a Pod
    // whose Secret is not there yet waits for it (the kubelet retries the mount).
    const [, creds] = await Promise.all([this.#ensureConfig(job), this.#ensureCredentials(job), finalizer, this.#ensurePods(key, job, status)]);
    for (const site of job.spec.sites) if (site.remote) this.#assign(key, job, site.name, creds.sites[site.name]);

    if (!run || run.progress.state === 'paused' || run.progress.state === 'stopped') {
      if (run) await this.#stopRun(key);
      const withUid = job as unknown as FederatedJob & { metadata: { uid: string } };
      const ctx = {
        nc: this.#o.nc,
        log: this.#log,
        // A round's figures alone wait a moment for the next ones: one status write a second at
        // most for a job of many fast rounds, while a change of state is acted on at once.
        onChange: (what: 'state' | 'progress') => (what === 'state' ? this.queue.add(key) : this.queue.addAfter(key, PROGRESS_WRITE_INTERVAL_MS)),
        refused: () => this.#refusals.get(key) ?? new Map<string, string>(),
      };
      run = placement === 'operator' ? new InOperatorRun(withUid, creds.keys.sites, ctx) : new PodRun(withUid, ctx);
      this.runs.set(key, run);
      if (status.phase === undefined || status.phase === 'Pending')
        void this.#events.record(job, 'Normal', 'Started', `round loop started (${placement === 'operator' ? 'in the operator' : 'in a coordinator Pod'})`);
      else void this.#events.record(job, 'Normal', 'Resumed', `round loop resumed from its checkpoint after round ${status.round ?? 0}`);
    }

    const s = run.progress.state;
    // A worker that refuses its input (exit status 2) would crash-loop while the job waits for it.
    const badInput = s === 'succeeded' || s === 'failed' ? undefined : workerInputFailure(this.#workerPods(job));
    if (badInput) {
      const problem = { reason: 'WorkerInvalidInput', message: badInput };
      this.#finished.set(key, { uid: job.metadata.uid!, generation: job.metadata.generation ?? 0, phase: 'Failed', progress: run.progress, problem });
      await this.#writeStatus(job, 'Failed', { problem });
      void this.#events.record(job, 'Warning', 'Failed', badInput);
      await this.#stopRun(key);
      await this.#deleteWorkers(job);
      return undefined;
    }
    if (s === 'succeeded' || s === 'failed') {
      this.#finished.set(key, {
        uid: job.metadata.uid!,
        generation: job.metadata.generation ?? 0,
        phase: s === 'succeeded' ? 'Succeeded' : 'Failed',
        progress: run.progress,
        ...(s === 'failed' ? { problem: { reason: 'CoordinatorFailed', message: run.progress.error ?? 'the round loop failed' } } : {}),
      });
    }
    if (s === 'succeeded') {
      await this.#writeStatus(job, 'Succeeded', {});
      void this.#events.record(
        job,
        'Normal',
        'Succeeded',
        `completed ${run.progress.round} rounds; accuracy ${run.progress.records.at(-1)?.globalAccuracy.toFixed(4) ?? 'n/a'}`,
      );
      await this.#stopRun(key);
      await this.#deleteWorkers(job);
      return undefined;
    }
    if (s === 'failed') {
      await this.#writeStatus(job, 'Failed', { problem: { reason: 'CoordinatorFailed', message: run.progress.error ?? 'the round loop failed' } });
      void this.#events.record(job, 'Warning', 'Failed', run.progress.error ?? 'the round loop failed');
      await this.#stopRun(key);
      await this.#deleteWorkers(job);
      return undefined;
    }
    // A resumed loop waiting for its sites to rejoin is still a running job, not a pending one.
    const phase: JobPhase = s === 'running' || status.phase === 'Running' ? 'Running' : 'Pending';
    if (phase === 'Running' && status.phase !== 'Running')
      void this.#events.record(job, 'Normal', 'Running', `rounds are running (round ${run.progress.round + 1} of ${job.spec.rounds})`);
    await this.#writeStatus(job, phase, {});
    return undefined;
  }

  /** Worker Pods: one per site of this cluster, recreated when gone or failed; and the coordinator's, with placement "pod". */
  async #ensurePods(key: string, job: JobObject, status: FederatedJobStatus): Promise<void> {
    const ns = job.metadata.namespace!;
    await Promise.all(
      job.spec.sites.map(async (site) => {
        if (site.remote) return;
        const name = names.workerPod(job.metadata.name, site.name);
        const pod = this.#owned(this.pods, ns, name);
        if (pod && !pod.metadata.deletionTimestamp && podPhase(pod) === 'Failed') {
          await this.#deletePod(ns, name);
          this.#bumpRestart(key, site.name);
          void this.#events.record(job, 'Warning', 'WorkerFailed', `worker of site ${site.name} failed; recreating it`);
          return;
        }
        if (!pod) {
          const created = await this.#createIfAbsent(Resources.pods, ns, workerPod(job, site, this.#o.pods));
          // A Pod gone while the job runs was lost (deleted, evicted): count it; not so after a suspension.
          if (created && status.phase === 'Running') this.#bumpRestart(key, site.name);
        }
      }),
    );
    if (job.spec.coordinator.placement === 'pod') {
      const name = names.coordinatorPod(job.metadata.name);
      const pod = this.#owned(this.pods, ns, name);
      if (pod && !pod.metadata.deletionTimestamp && podPhase(pod) === 'Failed') await this.#deletePod(ns, name);
      else if (!pod) await this.#createIfAbsent(Resources.pods, ns, coordinatorPod(job, this.#o.pods));
    }
  }

  #bumpRestart(key: string, site: string): void {
    const m = this.#restarts.get(key) ?? new Map<string, number>();
    m.set(site, (m.get(site) ?? 0) + 1);
    this.#restarts.set(key, m);
  }

  /** The job's worker Pods by site, those the cache holds. */
  #workerPods(job: JobObject): Map<string, KubeObject> {
    const pods = new Map<string, KubeObject>();
    for (const site of job.spec.sites) {
      const p = this.#owned(this.pods, job.metadata.namespace!, names.workerPod(job.metadata.name, site.name));
      if (p) pods.set(site.name, p);
    }
    return pods;
  }

  /** Only status.observedGeneration moves to the job's generation (an ended job's status is otherwise kept as it is). */
  async #observed(job: JobObject): Promise<void> {
    try {
      await this.#o.client.patch(resourcePath(Resources.federatedJobs, job.metadata.namespace, job.metadata.name, 'status'), {
        status: { observedGeneration: job.metadata.generation ?? 0 },
      });
      this.statusWrites++;
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  async #writeStatus(job: JobObject, phase: JobPhase, extra: { problem?: { reason: string; message: string }; progress?: RunProgress }): Promise<void> {
    const key = keyOf(job);
    const pods = this.#workerPods(job);
    const progress = extra.progress ?? this.runs.get(key)?.progress;
    const next = desiredStatus({
      job,
      phase,
      ...(progress ? { progress } : {}),
      pods,
      refusals: this.#refusals.get(key) ?? new Map(),
      unanswered: new Set(job.spec.sites.filter((s) => s.remote && typeof this.#assignments.get(assignmentId(job, s.name)) === 'number').map((s) => s.name)),
      restarts: this.#restarts.get(key) ?? new Map(),
      ...(extra.problem ? { problem: extra.problem } : {}),
      now: new Date(),
    });
    this.#o.jobMetrics?.update(job.metadata.namespace!, job.metadata.name, {
      ...emptySnapshot(phase, job.spec),
      ...progress,
      phase,
      round: next.round,
      refused: this.#refusals.get(key)?.size ?? 0,
    });
    if (sameJson(job.status ?? {}, next)) return;
    try {
      const patched = await this.#o.client.patch<JobObject>(resourcePath(Resources.federatedJobs, job.metadata.namespace, job.metadata.name, 'status'), {
        status: next,
      });
      if (job.metadata.uid) this.#statusWrites.wrote(job.metadata.uid, patched?.metadata?.resourceVersion, next);
      this.statusWrites++;
    } catch (err) {
      if (isNotFound(err)) return;
      throw err;
    }
  }

  async #ensureConfig(job: JobObject): Promise<void> {
    const ns = job.metadata.namespace!;
    if (this.#owned(this.configMaps, ns, names.jobConfig(job.metadata.name))) return;
    await this.#createIfAbsent(Resources.configMaps, ns, jobConfigMap(job));
  }

  /**
   * The job's NATS credentials, minted once and kept in Secrets: a restarted operator finds them
   * there. Returns the keys the coordinator trusts, and each site's credentials file.
   */
  async #ensureCredentials(job: JobObject): Promise<{ keys: JobKeys; sites: Record<string, string | undefined> }> {
    const ns = job.metadata.namespace!;
    const jobName = job.metadata.name;
    const uid = job.metadata.uid!;
    const sites = job.spec.sites.map((s) => s.name);
    const read = (s: KubeObject): StoredCredentials => ({
      seeds: JSON.parse(decode(s, 'seeds.json') ?? '{}') as Record<string, string>,
      keys: JSON.parse(decode(s, 'keys.json') ?? 'null') as JobKeys,
    });
    const cached = this.#owned(this.secrets, ns, names.jobSecret(jobName));
    if (cached) this.#minted.delete(uid); // the cache has caught up with what this process made
    // What this process made a moment ago counts as stored: the cache may not show it yet.
    let stored = cached ? read(cached) : this.#minted.get(uid);
    const siteSecret = (s: string) => this.#owned(this.secrets, ns, names.siteSecret(jobName, s));
    const missingSites = sites.filter((s) => !siteSecret(s));
    if (stored?.keys && missingSites.length === 0) {
      return { keys: stored.keys, sites: Object.fromEntries(sites.map((s) => [s, decode(siteSecret(s), 'site.creds')])) };
    }
    const expiresAt = new Date(Date.now() + (this.#o.credentialsTtlMs ?? 90 * 24 * 3600_000));
    // Minted again with the same seeds: the keys (which the coordinator checks signatures with) stay.
    const mint = (seeds: Record<string, string>) => mintJobCreds(this.#o.signer, jobKey(job.metadata), sites, { expiresAt, seeds });
    let creds = await mint(stored?.seeds ?? {});
    const createSite = (s: string) =>
      this.#createIfAbsent(
        Resources.secrets,
        ns,
        secret(job, names.siteSecret(jobName, s), 'site', { 'site.creds': creds.sites[s]!.creds }, { [LABELS.site]: s }),
      );
    if (!stored) {
      // The job's Secret first, its sites' after: a site's credentials must come from the seeds
      // the job keeps (made together, a failure of the one could leave the others minted from
      // seeds nobody kept). Unless it exists after all (made a moment ago by an operator before
      // this one, not in the cache yet): then its keys are the job's, and the sites' are minted from its seeds.
      const seeds = { _coordinator: creds.coordinator.seed, ...Object.fromEntries(Object.entries(creds.sites).map(([s, u]) => [s, u.seed])) };
      const created = await this.#createIfAbsent(
        Resources.secrets,
        ns,
        secret(job, names.jobSecret(jobName), 'coordinator', {
          'keys.json': JSON.stringify(creds.keys),
          'coordinator.creds': creds.coordinator.creds,
          'seeds.json': JSON.stringify(seeds),
        }),
      );
      if (created) {
        stored = { seeds, keys: creds.keys };
        this.#minted.set(uid, stored);
      } else {
        stored = read(await this.#o.client.get(resourcePath(Resources.secrets, ns, names.jobSecret(jobName))));
        creds = await mint(stored.seeds);
      }
    }
    await Promise.all(missingSites.map(createSite));
    return {
      keys: stored.keys!,
      sites: Object.fromEntries(sites.map((s) => [s, missingSites.includes(s) ? creds.sites[s]!.creds : decode(siteSecret(s), 'site.creds')])),
    };
  }

  async #createIfAbsent(resource: { version: string; plural: string }, ns: string, body: KubeObject): Promise<boolean> {
    try {
      this.#own.wrote(resource.plural, await this.#o.client.create(resourcePath(resource, ns), body));
      return true;
    } catch (err) {
      if (isConflict(err) || (err as { reason?: string }).reason === 'AlreadyExists') return false;
      throw err;
    }
  }

  async #deletePod(ns: string, name: string): Promise<void> {
    try {
      await this.#o.client.delete(resourcePath(Resources.pods, ns, name));
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  async #deleteWorkers(job: JobObject): Promise<void> {
    const ns = job.metadata.namespace!;
    const mine = this.pods
      .list()
      .filter((p) => p.metadata.namespace === ns && p.metadata.labels?.[LABELS.job] === job.metadata.name && !p.metadata.deletionTimestamp);
    if (mine.length === 0) return;
    if (mine.length === 1) return await this.#deletePod(ns, mine[0]!.metadata.name);
    // All of them in one request (a job of many sites would be as many requests otherwise).
    await this.#o.client.delete(resourcePath(Resources.pods, ns), {
      labelSelector: `${LABELS.managedBy}=${MANAGED_BY},${LABELS.job}=${job.metadata.name}`,
    });
  }

  async #stopRun(key: string): Promise<void> {
    const run = this.runs.get(key);
    if (!run) return;
    this.runs.delete(key);
    await run.stop();
  }

  /** Cleanup outside Kubernetes (the job's NATS buckets), then the finalizer goes; Pods and Secrets follow by owner reference. */
  async #finalize(key: string, job: JobObject): Promise<{ requeueAfterMs?: number } | undefined> {
    await this.#stopRun(key);
    if (!job.metadata.finalizers?.includes(FINALIZER)) return undefined;
    const jk = jobKey(job.metadata);
    const b = buckets(jk);
    const names_ = [b.models, b.state, ...job.spec.sites.map((s) => b.updates(s.name))];
    const since = Date.now() - Date.parse(job.metadata.deletionTimestamp!);
    try {
      const objm = new Objm(this.#o.nc);
      for (const n of names_) {
        // Gone already is done; any other failure (NATS away) is not.
        const store = await objm.open(n).catch((err: unknown) => {
          if (/not found/i.test((err as Error).message)) return undefined;
          throw err;
        });
        if (store) await store.destroy();
      }
    } catch (err) {
      if (since < (this.#o.cleanupTimeoutMs ?? 60_000)) throw err; // retried with backoff
      await this.#events.record(
        job,
        'Warning',
        'CleanupIncomplete',
        `could not delete the job's NATS buckets (${(err as Error).message}); giving up so that deletion is not blocked`,
      );
    }
    const finalizers = (job.metadata.finalizers ?? []).filter((f) => f !== FINALIZER);
    // Gone already (a reconcile before this one removed the finalizer): said once, by that one.
    let gone = false;
    try {
      await this.#o.client.patch(resourcePath(Resources.federatedJobs, job.metadata.namespace, job.metadata.name), {
        metadata: { finalizers, resourceVersion: job.metadata.resourceVersion },
      });
    } catch (err) {
      if (!isNotFound(err)) throw err;
      gone = true;
    }
    this.#restarts.delete(key);
    this.#refusals.delete(key);
    this.#finished.delete(key);
    this.#minted.delete(job.metadata.uid!);
    this.#events.forget(job.metadata.uid!);
    if (!gone) this.#log(`${key}: deleted; its NATS buckets are removed`);
    return undefined;
  }

  /**
   * Asks a remote site's agent to run the job (site mode), once per job uid and site, in the
   * background: an answer re-queues the job; no answer (agent not running yet) is asked again.
   */
  #assign(key: string, job: JobObject, site: string, creds: string | undefined): void {
    const uid = job.metadata.uid!;
    const id = assignmentId(job, site);
    const state = this.#assignments.get(id);
    if (state === 'asking' || state === 'accepted' || state === 'refused') return;
    if (state !== undefined && Date.now() < state) {
      // Not answered lately: asked again at that time. Armed again here, because a reconcile that
      // comes sooner (a status write, a watch event) cancels the queue's delayed add: a late agent
      // used to be asked never again.
      this.queue.addAfter(key, state - Date.now());
      return;
    }
    if (!creds) return; // not minted yet: the next reconcile asks
    this.#assignments.set(id, 'asking');
    const assignment: Assignment = {
      type: 'assignment',
      protocol: PROTOCOL_VERSION,
      site,
      job: { namespace: job.metadata.namespace!, name: job.metadata.name, uid },
      spec: job.spec,
      creds,
      natsUrl: this.#o.pods.natsUrl,
    };
    void (async () => {
      try {
        const msg = await this.#o.nc.request(assignmentSubject(site), encodeJson(assignment), { timeout: 5000 });
        const r = AssignmentReply.safeParse(decodeJson(msg.data));
        if (!r.success || r.data.uid !== uid) throw new Error(`site ${site}: an answer that is not an assignment reply`);
        if (r.data.accepted) {
          this.#assignments.set(id, 'accepted');
          this.#refusals.get(key)?.delete(site);
          void this.#events.record(job, 'Normal', 'SiteAccepted', `site ${site} accepted the job; its worker runs in its own cluster`);
        } else {
          this.#assignments.set(id, 'refused');
          const m = this.#refusals.get(key) ?? new Map<string, string>();
          m.set(site, `${r.data.reason ?? 'refused'} [${r.data.code ?? 'CONSORT_P_REFUSED'}]`);
          this.#refusals.set(key, m);
          void this.#events.record(job, 'Warning', 'SiteRefused', `site ${site} refused the job: ${r.data.reason} [${r.data.code}]`);
        }
        this.queue.add(key);
      } catch (err) {
        const first = this.#assignments.get(id) === 'asking' && !this.#unanswered.has(id);
        this.#unanswered.add(id);
        this.#assignments.set(id, Date.now() + 5000);
        if (first) this.#log(`${key}: site ${site}'s agent does not answer its assignment (${(err as Error).message}); asking again every 5 s`);
        this.queue.addAfter(key, 5000);
      }
    })();
  }
}

/** A site's assignment of a job, asked again when the spec changes: a new spec may pass a policy the old one failed. */
function assignmentId(job: JobObject, site: string): string {
  return `${job.metadata.uid}/${job.metadata.generation ?? 0}/${site}`;
}
