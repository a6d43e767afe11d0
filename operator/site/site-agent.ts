// Site mode: a hospital's own operator. It answers the site's assignments (core/protocol/
// assignment.ts) under the local policy and, for an accepted job, runs the site's worker Pod in
// this cluster with the credentials the assignment carried. It never coordinates and holds no
// data of other sites; every assignment is schema-checked, and a bad one is refused and counted.
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { Assignment, type AssignmentReply, assignmentSubject } from '../../core/protocol/assignment.ts';
import { checkPolicy, type SitePolicy } from '../../core/job/site-policy.ts';
import { describeIssues } from '../../core/job/issues.ts';
import { decodeJson, encodeJson } from '../../core/protocol/wire.ts';
import { isConflict, type KubeClient, type KubeObject, resourcePath, Resources } from '../kube/client.ts';
import { jobConfigMap, type JobObject, LABELS, names, secret, workerPod } from '../controller/manifests.ts';

export interface SiteAgentOptions {
  site: string;
  nc: NatsConnection;
  client: KubeClient;
  /** Where this site's worker Pods run. */
  namespace: string;
  policy: SitePolicy;
  log: (line: string) => void;
  /** How often to look for jobs whose worker here has finished (tests: shorter). */
  sweepMs?: number;
}

/** How often the agent looks for workers that have finished, to remove what it made for their jobs. */
const SWEEP_MS = 10_000;

export const JOB_UID_LABEL = 'consort.dev/job-uid';

export class SiteAgent {
  readonly #o: SiteAgentOptions;
  #sub: Subscription | undefined;
  /** Assignments answered, by outcome (accepted, or the refusal code): the agent's counters. */
  readonly answered = new Map<string, number>();
  #queue: Promise<void> = Promise.resolve();
  #sweeper: ReturnType<typeof setInterval> | undefined;
  /** Why the last sweep failed (said once per reason). */
  #sweepProblem: string | undefined;

  constructor(o: SiteAgentOptions) {
    this.#o = o;
  }

  start(): void {
    this.#sub = this.#o.nc.subscribe(assignmentSubject(this.#o.site), {
      callback: (_err, msg) => {
        // One at a time: two deliveries of the same assignment must not race to create its Pod.
        this.#queue = this.#queue.then(() => this.#handle(msg)).catch((err: unknown) => this.#o.log(`assignment: ${(err as Error).message}`));
      },
    });
    this.#o.log(`site agent for "${this.#o.site}" listening on ${assignmentSubject(this.#o.site)}`);
    this.#sweeper = setInterval(() => {
      this.#queue = this.#queue.then(() => this.#sweep());
    }, this.#o.sweepMs ?? SWEEP_MS);
  }

  async stop(): Promise<void> {
    this.#sub?.unsubscribe();
    clearInterval(this.#sweeper);
    await this.#queue;
  }

  /**
   * A job whose worker here has succeeded is over for this site: its Pod, its credentials Secret
   * and its ConfigMap go (by the job's uid label). They used to stay in the hospital's cluster
   * for good, NATS credentials included. A failed worker is left for its logs to be read.
   */
  async #sweep(): Promise<void> {
    const ns = this.#o.namespace;
    try {
      const pods = await this.#o.client.get<{ items: KubeObject[] }>(resourcePath(Resources.pods, ns), { labelSelector: JOB_UID_LABEL });
      const done = new Set(
        pods.items.flatMap((p) => ((p.status as { phase?: string } | undefined)?.phase === 'Succeeded' ? [p.metadata.labels?.[JOB_UID_LABEL] ?? ''] : [])),
      );
      for (const uid of done) {
        if (!/^[A-Za-z0-9-]{1,63}$/.test(uid)) continue;
        const selector = { labelSelector: `${JOB_UID_LABEL}=${uid}` };
        for (const r of [Resources.pods, Resources.secrets, Resources.configMaps]) await this.#o.client.delete(resourcePath(r, ns), selector);
        this.#o.log(`job ${uid} finished here: its worker Pod, credentials and config removed from namespace ${ns}`);
      }
      this.#sweepProblem = undefined;
    } catch (err) {
      const why = (err as Error).message;
      if (why !== this.#sweepProblem) this.#o.log(`cannot clean up finished jobs in namespace ${ns}: ${why}`);
      this.#sweepProblem = why;
    }
  }

  #count(outcome: string): void {
    this.answered.set(outcome, (this.answered.get(outcome) ?? 0) + 1);
  }

  async #handle(msg: Msg): Promise<void> {
    const { site, log } = this.#o;
    const reply = (r: Omit<AssignmentReply, 'type' | 'site'>) => {
      this.#count(r.accepted ? 'accepted' : (r.code ?? 'refused'));
      if (msg.reply) msg.respond(encodeJson({ type: 'assignment-reply', site, ...r } satisfies AssignmentReply));
    };
    const parsed = Assignment.safeParse(decodeJson(msg.data));
    if (!parsed.success) {
      const why = describeIssues(parsed.error).slice(0, 3).join('; ');
      log(`refused a malformed assignment: ${why}`);
      return reply({ uid: 'unknown', accepted: false, code: 'CONSORT_P_MALFORMED', reason: `malformed assignment: ${why}` });
    }
    const a = parsed.data;
    const id = `${a.job.namespace}/${a.job.name}`;
    if (a.site !== site)
      return reply({ uid: a.job.uid, accepted: false, code: 'CONSORT_P_NOT_A_SITE', reason: `assignment for "${a.site}" reached site "${site}"` });
    const decision = checkPolicy(this.#o.policy, site, a.job, a.spec);
    if (!decision.accepted) {
      log(`refused ${id}: ${decision.reason} [${decision.code}]`);
      return reply({ uid: a.job.uid, accepted: false, code: decision.code, reason: decision.reason });
    }
    await this.#launch(a);
    log(`accepted ${id}; its worker runs here`);
    reply({ uid: a.job.uid, accepted: true });
  }

  async #launch(a: Assignment): Promise<void> {
    const ns = this.#o.namespace;
    const job: JobObject = {
      apiVersion: 'consort.dev/v1alpha1',
      kind: 'FederatedJob',
      metadata: { name: a.job.name, namespace: a.job.namespace, uid: a.job.uid },
      spec: a.spec,
    };
    const site = a.spec.sites.find((s) => s.name === this.#o.site)!;
    // Here the job is not a Kubernetes object: no owner reference; the job's uid labels what it owns.
    const local = (o: KubeObject): KubeObject => {
      const { ownerReferences: _drop, ...metadata } = o.metadata;
      return { ...o, metadata: { ...metadata, namespace: ns, labels: { ...metadata.labels, [JOB_UID_LABEL]: a.job.uid } } };
    };
    const objects: [string, KubeObject][] = [
      [resourcePath(Resources.configMaps, ns), local(jobConfigMap(job))],
      [
        resourcePath(Resources.secrets, ns),
        local(secret(job, names.siteSecret(a.job.name, site.name), 'site', { 'site.creds': a.creds }, { [LABELS.site]: site.name })),
      ],
      [resourcePath(Resources.pods, ns), local(workerPod(job, { ...site, remote: false }, { natsUrl: a.natsUrl }))],
    ];
    for (const [path, body] of objects) {
      try {
        await this.#o.client.create(path, body);
      } catch (err) {
        if (!isConflict(err)) throw err;
      }
    }
  }
}
