// The job's status as a pure function of what the reconciler observed (its Pods, its run's
// progress, site refusals), and the rule that a condition's lastTransitionTime moves only when
// its status does, so that writing the same observation twice changes nothing and the operator
// writes status only when something really changed.
import type { Condition, FederatedJobStatus, JobPhase, SiteStatus } from '../../core/job/federated-job-status.ts';
import type { KubeObject } from '../kube/client.ts';
import type { RunProgress } from './job-runs.ts';
import type { JobObject } from './manifests.ts';

export interface Observation {
  job: JobObject;
  phase: JobPhase;
  progress?: RunProgress;
  /** Worker Pods by site name. */
  pods: Map<string, KubeObject>;
  /** Sites whose own operator refused the job, with the reason. */
  refusals: Map<string, string>;
  /** Remote sites whose agent has not answered the job's assignment yet. */
  unanswered?: ReadonlySet<string>;
  /** Worker Pods recreated per site. */
  restarts: Map<string, number>;
  /** Why the job failed or is not starting, if it did or is not. */
  problem?: { reason: string; message: string };
  now: Date;
}

const podPhase = (p: KubeObject | undefined) => (p?.status as { phase?: string } | undefined)?.phase;

const UNANSWERED_HINT = "is consort operator --mode site running for it, on the job's NATS server? it is asked again every 5 s";
const UNANSWERED = `its site agent has not answered the job's assignment (${UNANSWERED_HINT})`;

/** A worker Pod that failed, or whose container ended in failure (now or before its last restart). */
function podFailed(p: KubeObject | undefined): boolean {
  if (!p) return false;
  if (podPhase(p) === 'Failed') return true;
  type Terminated = { terminated?: { exitCode?: number } };
  const statuses = (p.status as { containerStatuses?: Array<{ state?: Terminated; lastState?: Terminated }> } | undefined)?.containerStatuses ?? [];
  return statuses.some((c) => (c.state?.terminated?.exitCode ?? 0) !== 0 || (c.lastState?.terminated?.exitCode ?? 0) !== 0);
}

function siteStatuses(o: Observation): SiteStatus[] {
  const prev = new Map(((o.job.status?.sites as SiteStatus[] | undefined) ?? []).map((s) => [s.name, s]));
  return o.job.spec.sites.map((site) => {
    const pod = o.pods.get(site.name);
    const refused = o.refusals.get(site.name);
    const lastRound = o.progress?.siteLastRound[site.name] ?? prev.get(site.name)?.lastRound;
    let state: SiteStatus['state'] = 'Pending';
    let message: string | undefined;
    if (refused) {
      state = 'Refused';
      message = refused;
    } else if (o.phase === 'Succeeded') state = 'Succeeded';
    else if (o.phase === 'Failed') {
      // The site the failure names, or whose worker failed, failed; the others were stopped with
      // the job (they used to stay "Running", the job "5/5 ready", with no Pod left).
      const named = o.problem?.message.startsWith(`site ${site.name}:`) ?? false;
      state = named || (!site.remote && podFailed(pod)) ? 'Failed' : 'Stopped';
      if (named) message = o.problem!.message;
    } else if (site.remote) {
      state = o.progress?.joined.includes(site.name) ? 'Running' : 'Pending';
      if (o.unanswered?.has(site.name)) message = UNANSWERED;
    } else if (podPhase(pod) === 'Running') state = 'Running';
    else if (podPhase(pod) === 'Failed') state = 'Failed';
    return {
      name: site.name,
      state,
      ...(pod && !site.remote ? { pod: pod.metadata.name } : {}),
      restarts: o.restarts.get(site.name) ?? prev.get(site.name)?.restarts ?? 0,
      ...(lastRound !== undefined ? { lastRound } : {}),
      ...(message ? { message } : {}),
    };
  });
}

export function desiredStatus(o: Observation): FederatedJobStatus {
  const old = (o.job.status ?? {}) as FederatedJobStatus;
  // Rounds only go forward: a resumed run reports 0 until it has read its checkpoint.
  const round = Math.max(o.progress?.round ?? 0, old.round ?? 0);
  const sites = siteStatuses(o);
  const ready = sites.filter((s) => s.state === 'Running' || s.state === 'Succeeded').length;
  const last = o.progress?.records.at(-1);
  const gen = o.job.metadata.generation ?? 0;
  const t = o.now.toISOString().replace(/\.\d+Z$/, 'Z');
  const cond = (type: string, status: boolean, reason: string, message: string): Condition => ({
    type,
    status: status ? 'True' : 'False',
    reason,
    message,
    lastTransitionTime: t,
    observedGeneration: gen,
  });
  const conditions: Condition[] = [];
  const p = o.phase;
  conditions.push(
    cond(
      'Ready',
      p === 'Running' && ready === sites.length,
      p === 'Running' ? (ready === sites.length ? 'AllSitesRunning' : 'SitesStarting') : p,
      p === 'Running' || p === 'Pending'
        ? `${ready} of ${sites.length} sites running`
        : p === 'Suspended'
          ? 'suspended: no site runs until spec.suspend is false'
          : `the job ${p === 'Succeeded' ? 'succeeded' : 'failed'}: no site runs any more`,
    ),
  );
  conditions.push(
    cond(
      'Progressing',
      p === 'Pending' || p === 'Running',
      p === 'Running' ? 'RoundsRunning' : p === 'Pending' ? 'Starting' : p,
      p === 'Running'
        ? `round ${round} of ${o.job.spec.rounds} completed`
        : p === 'Pending'
          ? 'creating credentials and Pods; waiting for the sites to join'
          : p === 'Suspended'
            ? 'suspended: no round runs until spec.suspend is false'
            : `the job ${p === 'Succeeded' ? 'succeeded' : 'failed'}: no more rounds run`,
    ),
  );
  conditions.push(
    cond(
      'Suspended',
      p === 'Suspended',
      p === 'Suspended' ? 'SuspendedBySpec' : 'NotSuspended',
      p === 'Suspended' ? 'paused after a round; set spec.suspend to false to resume' : 'not suspended',
    ),
  );
  const refusals = [...o.refusals].map(([s, why]) => `${s}: ${why}`);
  const silent = [...(o.unanswered ?? [])].filter((s) => !o.refusals.has(s));
  conditions.push(
    cond(
      'SitesAccepted',
      refusals.length === 0 && silent.length === 0,
      refusals.length > 0 ? 'SiteRefused' : silent.length > 0 ? 'AwaitingSiteAgents' : 'AllSitesAccepted',
      [
        ...(refusals.length > 0 ? [`refused by ${refusals.join('; ')}`] : []),
        ...(silent.length > 0 ? [`no answer yet from the site agent of ${silent.join(', ')} (${UNANSWERED_HINT})`] : []),
      ].join('; ') || 'no site refused the job',
    ),
  );
  if (p === 'Succeeded') {
    // An early stop says which rule stopped it, in its reason and its message.
    const by = o.progress?.stoppedBy;
    const target = o.job.spec.stopping.target;
    const [reason, why] =
      by === 'target' && target
        ? ['TargetReached', `, stopped early: spec.stopping.target (${target.metric} ${target.metric === 'loss' ? '<=' : '>='} ${target.value}) reached`]
        : by === 'patience'
          ? ['PatienceExhausted', `, stopped early: no improvement in ${o.job.spec.stopping.patience} evaluations (spec.stopping.patience)`]
          : ['RoundsCompleted', ''];
    conditions.push(
      cond(
        'Succeeded',
        true,
        reason,
        `completed ${round} of ${o.job.spec.rounds} rounds${why}; the model is in ${o.progress?.model?.bucket ?? old.model?.bucket}`,
      ),
    );
  }
  if (p === 'Failed') conditions.push(cond('Failed', true, o.problem?.reason ?? 'Failed', o.problem?.message ?? 'the job failed'));
  const model = o.progress?.model ?? old.model;
  return {
    phase: p,
    observedGeneration: gen,
    round,
    rounds: o.job.spec.rounds,
    ...(last
      ? { accuracy: round4(last.globalAccuracy), loss: round4(last.globalLoss) }
      : old.accuracy !== undefined
        ? { accuracy: old.accuracy, loss: old.loss }
        : {}),
    ...(last?.globalAuc !== undefined ? { auc: round4(last.globalAuc) } : old.auc !== undefined ? { auc: old.auc } : {}),
    sitesReady: `${ready}/${sites.length}`,
    sites,
    ...(model ? { model } : {}),
    // When the rounds began: a job refused before any round (its spec, a worker's input) never started.
    ...(old.startTime ? { startTime: old.startTime } : p === 'Running' || round > 0 ? { startTime: t } : {}),
    ...(old.completionTime ? { completionTime: old.completionTime } : p === 'Succeeded' || p === 'Failed' ? { completionTime: t } : {}),
    conditions: keepTransitionTimes(old.conditions ?? [], conditions),
  };
}

const round4 = (x: number) => Math.round(x * 1e4) / 1e4;

/** A condition whose status did not change keeps its lastTransitionTime. */
export function keepTransitionTimes(old: Condition[], next: Condition[]): Condition[] {
  const before = new Map(old.map((c) => [c.type, c]));
  return next.map((c) => {
    const b = before.get(c.type);
    return b && b.status === c.status ? { ...c, lastTransitionTime: b.lastTransitionTime } : c;
  });
}

/** Deep equality of two JSON values (status as read back vs. as computed). */
export function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    return a.length === bb.length && a.every((x, i) => sameJson(x, bb[i]));
  }
  const ka = Object.keys(a).filter((k) => (a as Record<string, unknown>)[k] !== undefined);
  const kb = Object.keys(b).filter((k) => (b as Record<string, unknown>)[k] !== undefined);
  return ka.length === kb.length && ka.every((k) => sameJson((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

/** The exit status `consort site` gives bad input (its data, its model, the job): restarting cannot help. */
const BAD_INPUT_EXIT = 2;

interface TerminatedState {
  exitCode?: number;
  message?: string;
}

/**
 * Why the job cannot go on because a site's worker refuses its input, or undefined: a worker
 * container that exited with status 2 (its last lines, which FallbackToLogsOnError keeps, name
 * the problem). With restartPolicy OnFailure it would otherwise crash-loop while the job waits.
 */
export function workerInputFailure(pods: ReadonlyMap<string, KubeObject>): string | undefined {
  for (const [site, pod] of pods) {
    const statuses = (
      pod.status as
        | { containerStatuses?: Array<{ name: string; state?: { terminated?: TerminatedState }; lastState?: { terminated?: TerminatedState } }> }
        | undefined
    )?.containerStatuses;
    const worker = statuses?.find((c) => c.name === 'worker');
    const ended = [worker?.state?.terminated, worker?.lastState?.terminated].find((t) => t?.exitCode === BAD_INPUT_EXIT);
    if (!ended) continue;
    const said = (ended.message ?? '')
      .split('\n')
      .filter((l) => l.startsWith('consort: '))
      .at(-1)
      ?.slice('consort: '.length);
    return `site ${site}: its worker ${pod.metadata.name} stops on bad input (exit status ${BAD_INPUT_EXIT}), which restarting cannot mend: ${said ?? `see kubectl logs ${pod.metadata.name}`}`;
  }
  return undefined;
}
