// The RunReport of a job the operator ran, from what outlives its round loop: the checkpoint
// (every evaluated round, how it stopped, what the sites said of themselves when they joined)
// and the final model. Assembled by the same code as `consort run`'s report.json.
import type { InputScaler } from '../../core/data/moments.ts';
import type { FederatedJob, FederatedJobSpec } from '../../core/job/federated-job.ts';
import type { FederatedJobStatus } from '../../core/job/federated-job-status.ts';
import type { ParameterLayout } from '../../core/model/layout.ts';
import { assembleRunReport } from '../../core/report/assemble.ts';
import type { RoundRecord, RunReport } from '../../core/report/run-report.ts';
import type { JoinedSite } from '../coordinator/nats-coordinator.ts';

export interface JobReportFacts {
  metadata: { name: string; namespace: string; creationTimestamp?: string };
  spec: FederatedJobSpec;
  status: FederatedJobStatus;
  records: RoundRecord[];
  roundsCompleted: number;
  stoppedBy?: RunReport['final']['stoppedBy'];
  layout: ParameterLayout;
  weights: Float32Array;
  /** What each site said of itself when it joined (absent from a checkpoint of an older operator). */
  sites?: Record<string, JoinedSite>;
  /** The federation's input scaling, from the checkpoint. */
  inputScaler?: InputScaler;
  now?: Date;
}

export function assembleJobReport(f: JobReportFacts): RunReport | undefined {
  const last = f.records.at(-1);
  if (!last) return undefined;
  const joined = f.sites ?? {};
  const first = f.spec.sites.map((s) => joined[s.name]).find((s) => s !== undefined);
  const now = f.now ?? new Date();
  const started = new Date(f.status.startTime ?? f.metadata.creationTimestamp ?? now.toISOString());
  const ended = f.status.completionTime ? new Date(f.status.completionTime) : now;
  const job: FederatedJob = {
    apiVersion: 'consort.dev/v1alpha1',
    kind: 'FederatedJob',
    metadata: { name: f.metadata.name, namespace: f.metadata.namespace },
    spec: f.spec,
  };
  return assembleRunReport({
    job,
    layout: f.layout,
    classes: f.spec.classes ?? first?.labels ?? [],
    sampleShape: first?.sampleShape ?? [],
    ...(first?.features ? { features: first.features } : {}),
    ...(f.inputScaler ? { inputScaler: f.inputScaler } : {}),
    initialWeights: first?.initialSha256 ? 'model file' : 'seeded',
    backend: first?.backend ?? { name: 'unknown', reason: 'no site reported its backend' },
    startedAt: started,
    durationMs: Math.max(0, ended.getTime() - started.getTime()),
    sites: f.spec.sites.flatMap((s) => {
      const q = joined[s.name]?.quality;
      return q ? [{ site: s.name, quality: q }] : [];
    }),
    result: {
      global: f.weights,
      rounds: f.records,
      roundsCompleted: f.roundsCompleted,
      stoppedBy: f.stoppedBy ?? 'rounds',
      // The last evaluated round's scores: the coordinator's final evaluation whenever that round
      // was scored by every site (always, unless spec.evaluation samples the evaluators).
      final: last.sites,
    },
  });
}
