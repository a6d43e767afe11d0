// Where the API finds a job's figures: the object from the controller's informer cache (so a
// request costs the API server nothing), the per-round history from the running round loop or,
// once the loop is gone (job done, operator restarted, a standby replica), from the checkpoint in
// the job's NATS state bucket; the final model from its models bucket. Buckets are named from the
// job's own namespace and name, never from its status, so no request reads another job's bucket.
import { InputScaler } from '../../core/data/moments.ts';
import { Objm, type ObjectResult, type ObjectStore } from '@nats-io/obj';
import type { NatsConnection } from '@nats-io/transport-node';
import { FederatedJobSpec } from '../../core/job/federated-job.ts';
import { FederatedJobStatus } from '../../core/job/federated-job-status.ts';
import { ParameterLayout } from '../../core/model/layout.ts';
import { buckets, jobKey, objectNames } from '../../core/protocol/subjects.ts';
import type { RoundRecord, RunReport } from '../../core/report/run-report.ts';
import { decodeSafetensors } from '../../core/tensor/safetensors.ts';
import type { JobRun } from '../controller/job-runs.ts';
import type { JobObject } from '../controller/manifests.ts';
import { decodeCheckpoint, type decodeCheckpointHeader, readCheckpointHeader, readRecordSegment, withArchivedRecords } from '../coordinator/checkpoint.ts';
import type { TransportState } from '../coordinator/nats-coordinator.ts';
import { OperatorError } from '../errors.ts';
import { assembleJobReport } from './job-report.ts';

export interface ModelDownload {
  /** Bytes of the safetensors file. */
  size: number;
  /** The Object Store's digest: "SHA-256=<base64url>". */
  digest: string;
  data: ReadableStream<Uint8Array>;
  /** Settles when the object has been read (rejects on a corrupt or interrupted read). */
  done: Promise<unknown>;
}

/** The API's view of the jobs. */
export interface JobSource {
  job(namespace: string, name: string): JobObject | undefined;
  /** Every evaluated round so far, oldest first. */
  history(job: JobObject): Promise<RoundRecord[]>;
  /** The final model, or undefined when the job has none (yet). */
  model(job: JobObject): Promise<ModelDownload | undefined>;
  /** The run's report, or undefined before the job succeeded. */
  report(job: JobObject): Promise<RunReport | undefined>;
}

export interface ClusterJobSourceOptions {
  /** The controller's FederatedJob cache. */
  jobs: { get(key: string): JobObject | undefined };
  /** The controller's round loops, by namespace/name. */
  runs: ReadonlyMap<string, JobRun>;
  nc: NatsConnection;
}

const unavailable = (what: string, err: unknown) =>
  new OperatorError('CONSORT_API_UNAVAILABLE', `cannot read ${what} from NATS: ${(err as Error).message}`, { cause: err });

/** Reads an object's first bytes only: enough for a checkpoint's header, without its model. */
export class ClusterJobSource implements JobSource {
  readonly #o: ClusterJobSourceOptions;
  readonly #objm: Objm;
  /** Reports of succeeded jobs (they never change), by uid; a few only. */
  readonly #reports = new Map<string, RunReport>();

  constructor(o: ClusterJobSourceOptions) {
    this.#o = o;
    this.#objm = new Objm(o.nc);
  }

  job(namespace: string, name: string): JobObject | undefined {
    return this.#o.jobs.get(`${namespace}/${name}`);
  }

  async history(job: JobObject): Promise<RoundRecord[]> {
    const run = this.#o.runs.get(`${job.metadata.namespace}/${job.metadata.name}`);
    if (run && run.uid === job.metadata.uid) {
      const { records, round } = run.progress;
      // A loop that started from round 0 has seen every round; one resumed from a checkpoint
      // only those since, so the checkpoint has the rest.
      const every = FederatedJobSpec.safeParse(job.spec).data?.evaluation.every ?? 1;
      if (round === 0 || (records.length > 0 && records[0]!.round <= every)) return [...records];
      const saved = await this.#checkpointHeader(job);
      const upTo = saved?.records.at(-1)?.round ?? 0;
      return [...(saved?.records ?? []), ...records.filter((r) => r.round > upTo)];
    }
    return (await this.#checkpointHeader(job))?.records ?? [];
  }

  async model(job: JobObject): Promise<ModelDownload | undefined> {
    const status = FederatedJobStatus.safeParse(job.status ?? {}).data;
    if (!status?.model) return undefined;
    const store = await this.#open(buckets(jobKey(job.metadata)).models);
    let r: ObjectResult | null;
    try {
      r = store ? await store.get(status.model.object) : null;
    } catch (err) {
      throw unavailable('the final model', err);
    }
    if (!r) return undefined;
    return { size: r.info.size, digest: r.info.digest, data: r.data, done: r.error };
  }

  async report(job: JobObject): Promise<RunReport | undefined> {
    const status = FederatedJobStatus.safeParse(job.status ?? {}).data;
    const spec = FederatedJobSpec.safeParse(job.spec).data;
    if (status?.phase !== 'Succeeded' || !status.model || !spec) return undefined;
    const uid = job.metadata.uid ?? '';
    const cached = this.#reports.get(uid);
    if (cached) return cached;
    const b = buckets(jobKey(job.metadata));
    const [state, models] = await Promise.all([this.#open(b.state), this.#open(b.models)]);
    let checkpointBytes: Uint8Array | null;
    let modelBytes: Uint8Array | null;
    try {
      [checkpointBytes, modelBytes] = await Promise.all([
        state ? state.getBlob(objectNames.checkpoint) : null,
        models ? models.getBlob(status.model.object) : null,
      ]);
    } catch (err) {
      throw unavailable("the job's checkpoint and model", err);
    }
    if (!checkpointBytes) return undefined;
    const checkpoint = await this.#withArchived(state!, decodeCheckpoint(checkpointBytes));
    const transport = checkpoint.transport as Partial<TransportState> | undefined;
    const model = modelBytes ? decodeSafetensors(modelBytes) : undefined;
    const layout = model?.layout ?? ParameterLayout.safeParse(transport?.layout).data ?? [{ name: 'weights', shape: [checkpoint.global.length] }];
    const report = assembleJobReport({
      metadata: {
        name: job.metadata.name,
        namespace: job.metadata.namespace!,
        ...(job.metadata.creationTimestamp ? { creationTimestamp: job.metadata.creationTimestamp } : {}),
      },
      spec,
      status,
      records: checkpoint.records,
      roundsCompleted: checkpoint.round,
      ...(checkpoint.stoppedBy ? { stoppedBy: checkpoint.stoppedBy } : {}),
      layout,
      weights: model?.values ?? checkpoint.global,
      ...(transport?.sites ? { sites: transport.sites } : {}),
      ...(InputScaler.safeParse(transport?.scaler).success ? { inputScaler: transport!.scaler! } : {}),
    });
    if (report) {
      while (this.#reports.size >= 16) this.#reports.delete(this.#reports.keys().next().value!);
      this.#reports.set(uid, report);
    }
    return report;
  }

  async #checkpointHeader(job: JobObject): Promise<ReturnType<typeof decodeCheckpointHeader> | undefined> {
    const state = await this.#open(buckets(jobKey(job.metadata)).state);
    if (!state) return undefined;
    try {
      const r = await state.get(objectNames.checkpoint);
      if (!r) return undefined;
      r.error.catch(() => {}); // a cancelled read may end in an error nobody waits for
      return await this.#withArchived(state, await readCheckpointHeader(r.data));
    } catch (err) {
      throw unavailable("the job's checkpoint", err);
    }
  }

  /** A checkpoint with the round records it keeps apart read back from the job's state bucket. */
  async #withArchived<T extends Parameters<typeof withArchivedRecords>[0]>(state: ObjectStore, c: T): Promise<T> {
    try {
      return await withArchivedRecords(c, (i) => readRecordSegment(state, i));
    } catch (err) {
      throw unavailable("the job's round records", err);
    }
  }

  /** A bucket, or undefined when it does not exist (not yet, or no more). */
  async #open(bucket: string): Promise<ObjectStore | undefined> {
    try {
      return await this.#objm.open(bucket);
    } catch (err) {
      if (/not found/i.test((err as Error).message)) return undefined;
      throw unavailable(`bucket ${bucket}`, err);
    }
  }
}
