// Which stored objects a job may drop, round by round. Every round leaves a global model in the
// models bucket and an update in each site's bucket; kept for ever, a 1 GB model with 10 sites
// would fill a terabyte in 100 rounds. Once round r's checkpoint is saved, the coordinator notes
// each bucket's next stream sequence (a "mark"), and purges every message below an older mark:
//
// - updates: in sync mode a late update is refused before it is read, so once round r is
//   checkpointed nothing in a site's bucket is needed (round r+1's tasks have not gone out yet:
//   everything there is of round r or before). In buffered mode an update of round k may still be
//   folded up to round k + maxStaleness: the marks lag maxStaleness + 1 rounds.
// - models: the mark of round r covers global/r (put while the checkpoint is written). Round r+1
//   still needs global/r (its fit tasks, and the undo of a stored aggregation begun in place), so
//   the purge uses the mark of round r - 1; in buffered mode, a site's late task may still read an
//   older model: maxStaleness + 1 rounds more.
//
// A purge by sequence drops whole objects (chunks and metadata) written before the mark, and
// whatever was cut short or refused with them. Marks live in memory only: a restarted coordinator
// starts noting again, and its first purges take what the one before left.
import type { AggregationSpec } from '../job/federated-job.ts';

export type BucketKind = 'models' | 'updates';

/** Rounds a bucket's mark is kept before everything below it may go. */
export function retentionLag(aggregation: Pick<AggregationSpec, 'mode' | 'maxStaleness'>, kind: BucketKind): number {
  const late = aggregation.mode === 'buffered' ? aggregation.maxStaleness + 1 : 0;
  return kind === 'models' ? late + 1 : late;
}

/** Per bucket, the marks noted after each checkpointed round; says below which sequence a bucket may be purged. */
export class RetentionMarks {
  private readonly lag: (kind: BucketKind) => number;
  private readonly marks = new Map<string, Array<{ round: number; seq: number }>>();
  /** Per bucket, the sequence below which it was last purged (never asked again). */
  private readonly purged = new Map<string, number>();

  constructor(aggregation: Pick<AggregationSpec, 'mode' | 'maxStaleness'>) {
    this.lag = (kind) => retentionLag(aggregation, kind);
  }

  /**
   * Notes that after round `round`'s checkpoint, `bucket`'s next message will have sequence
   * `next`. Returns the sequence below which the bucket may now be purged, or undefined when
   * nothing more may go.
   */
  note(bucket: string, kind: BucketKind, round: number, next: number): number | undefined {
    const list = this.marks.get(bucket) ?? [];
    this.marks.set(bucket, list);
    list.push({ round, seq: next });
    const upTo = round - this.lag(kind);
    let below: number | undefined;
    while (list.length > 0 && list[0]!.round <= upTo) below = list.shift()!.seq;
    if (below === undefined || below <= (this.purged.get(bucket) ?? 1)) return undefined;
    this.purged.set(bucket, below);
    return below;
  }
}
