// Failpoints: a site process that freezes itself (SIGSTOP) at an exact point of the protocol, for
// the crash and hostile-input tests. A test that SIGSTOPs a site from outside, on seeing one of its
// messages go by, races the federation (a round starts milliseconds after the one before, and a
// loaded machine can leave the test's own process waiting longer than that); a site that stops
// itself right after acknowledging a task cannot have answered it. The same idea as etcd's gofail.
// Off unless CONSORT_FAILPOINTS is set; the process goes on where it stopped on SIGCONT. A `fail`
// point makes the task itself throw instead (a training that fails), as a broken model would. A
// `hold` point keeps the process running (it still says hello, so the coordinator keeps it in the
// job) but holds its answer until SIGCONT: an update late for its round, from a live site.
import { z } from 'zod';

/**
 * `stop-after-ack:<fit|evaluate>:<round>`, `stop-before-answer:fit:<round>` (its update written,
 * and its state kept, but not announced), `hold-before-answer:fit:<round>` (the same, running,
 * until SIGCONT) or `fail:<fit|evaluate>:<round>`, comma-separated; each fires once.
 */
export const FAILPOINTS_ENV = 'CONSORT_FAILPOINTS';

const Point = z
  .string()
  .trim()
  .regex(
    /^((stop-after-ack|fail):(fit|evaluate)|(stop|hold)-before-answer:fit):[1-9]\d{0,8}$/,
    'expected stop-after-ack:<fit|evaluate>:<round>, stop-before-answer:fit:<round>, hold-before-answer:fit:<round> or fail:<fit|evaluate>:<round>, e.g. stop-after-ack:fit:3',
  )
  .transform((s) => {
    const [action, task, round] = s.split(':');
    const as =
      action === 'fail'
        ? { action: 'fail' as const }
        : action === 'stop-before-answer'
          ? { action: 'before-answer' as const }
          : action === 'hold-before-answer'
            ? { action: 'hold-before-answer' as const }
            : {};
    return { ...as, task: task as 'fit' | 'evaluate', round: Number(round) };
  });

export const Failpoints = z
  .string()
  .transform((s) => s.split(',').filter((p) => p.trim() !== ''))
  .pipe(z.array(Point).max(64));
export type Failpoint = z.output<typeof Point>;

/**
 * The coordinator's points, in a variable of their own (`consort run --nats` gives its processes
 * one environment): `stop-before-outputs` stops `consort coordinator` once the job is over (its
 * final model stored, the sites told) and before it writes --out.
 */
export const COORDINATOR_FAILPOINTS_ENV = 'CONSORT_COORDINATOR_FAILPOINTS';

export const CoordinatorFailpoints = z
  .string()
  .transform((s) =>
    s
      .split(',')
      .map((p) => p.trim())
      .filter((p) => p !== ''),
  )
  .pipe(z.array(z.literal('stop-before-outputs', { error: 'expected stop-before-outputs (the only point of the coordinator)' })).max(1));

/** Which failpoints are still armed; `hit` disarms the one a task matches and says whether it fired. */
export class ArmedFailpoints {
  readonly #points: Failpoint[];

  constructor(points: readonly Failpoint[]) {
    this.#points = [...points];
  }

  /** Whether a stop point of this task fires (and disarms it). */
  hit(task: { type: 'fit' | 'evaluate'; round: number }): boolean {
    return this.#take(task, undefined);
  }

  /** Whether a fail point of this task fires (and disarms it). */
  fails(task: { type: 'fit' | 'evaluate'; round: number }): boolean {
    return this.#take(task, 'fail');
  }

  /** Whether a stop point before this task's answer fires (and disarms it). */
  beforeAnswer(task: { type: 'fit' | 'evaluate'; round: number }): boolean {
    return this.#take(task, 'before-answer');
  }

  /** Whether a hold point before this task's answer fires (and disarms it). */
  holdsAnswer(task: { type: 'fit' | 'evaluate'; round: number }): boolean {
    return this.#take(task, 'hold-before-answer');
  }

  #take(task: { type: 'fit' | 'evaluate'; round: number }, action: Failpoint['action']): boolean {
    const i = this.#points.findIndex((p) => p.task === task.type && p.round === task.round && p.action === action);
    if (i < 0) return false;
    this.#points.splice(i, 1);
    return true;
  }
}
