// What only a site holds from one round to the next: a lossy codec's residual (top-k, int8 or
// fp16 error feedback: what its updates left unsent) and SCAFFOLD's client control variate c_i. Neither may leave the site (the
// residual is exactly what compression withheld, c_i is built from its gradients), so with
// `consort site --state DIR` they are kept on the site's own disk, and a restarted site process
// carries on where the old one stopped: the job still ends in an uninterrupted run's bytes.
//
// One file per round the site trained, `<dir>/<job>/<site>/after-round-<r>.safetensors`: the
// state after that round's update, written (temporary file, fsync, rename) before the update is
// announced, so that no update the coordinator counts is ever ahead of the state on disk. A task
// of round r starts from the newest state of a round before r: a site that restarts after
// writing round r's state but before its update was counted trains round r again from round
// r-1's state, and gives the same bytes. An update the coordinator refuses (late, say) takes its
// round's file with it (`drop`): the next round starts from the state before the refused one, as
// if that round had not been trained. The last two are kept (and none of a later round: a
// coordinator that resumed from an earlier checkpoint made it a round that did not happen). A
// file that is not this job's and site's state (another job, another model, damaged) is refused
// with a reason and left alone: the site starts over, as without --state.
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { decodeTensors, type NamedTensor, tensorsParts } from '../../core/tensor/safetensors.ts';

export const SITE_STATE_FORMAT = 'consort-site-state/1';

/** The state after one round: either part absent when the job has none (codec none, not SCAFFOLD). */
export interface SiteState {
  round: number;
  residual?: Float32Array;
  control?: Float32Array;
}

const Metadata = z
  .object({
    format: z.literal(SITE_STATE_FORMAT),
    job: z.string().min(1),
    site: z.string().min(1),
    round: z.string().regex(/^[1-9]\d{0,8}$/),
    parameters: z.string().regex(/^\d{1,12}$/),
  })
  .strict();

const FILE = /^after-round-([1-9]\d{0,8})\.safetensors$/;

export interface SiteStateIdentity {
  /** The job key (namespace_name). */
  job: string;
  site: string;
  /** The model's parameter count: a state of another model is not this job's. */
  parameters: number;
}

export class SiteStateStore {
  readonly dir: string;
  readonly #id: SiteStateIdentity;

  constructor(root: string, id: SiteStateIdentity) {
    this.#id = id;
    this.dir = join(root, id.job, id.site);
  }

  /** Rounds with a state file here, newest first. */
  rounds(): number[] {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return [];
    }
    return names
      .map((n) => FILE.exec(n)?.[1])
      .filter((r): r is string => r !== undefined)
      .map(Number)
      .sort((a, b) => b - a);
  }

  /**
   * The newest state of a round before `round` that is this site's, or undefined (none: start
   * over). A file that is not is named in `refused`, with the reason, and the next older is tried.
   */
  before(round: number, refused: (file: string, why: string) => void = () => {}): SiteState | undefined {
    for (const r of this.rounds()) {
      if (r >= round) continue;
      const file = this.#file(r);
      try {
        return this.#read(file, r);
      } catch (err) {
        refused(file, (err as Error).message);
      }
    }
    return undefined;
  }

  /** Writes the state after `state.round` durably, then drops all but it and the one before. */
  save(state: SiteState): void {
    mkdirSync(this.dir, { recursive: true });
    const tensors: NamedTensor[] = [];
    for (const [name, data] of [
      ['residual', state.residual],
      ['control', state.control],
    ] as const) {
      if (!data) continue;
      if (data.length !== this.#id.parameters) throw new RangeError(`site state: ${name} has ${data.length} values, the model ${this.#id.parameters}`);
      tensors.push({ name, dtype: 'F32', shape: [data.length], data });
    }
    const metadata: z.infer<typeof Metadata> = {
      format: SITE_STATE_FORMAT,
      job: this.#id.job,
      site: this.#id.site,
      round: String(state.round),
      parameters: String(this.#id.parameters),
    };
    const file = this.#file(state.round);
    const temporary = `${file}.${process.pid}.tmp`;
    const fd = openSync(temporary, 'w', 0o600);
    try {
      for (const part of tensorsParts(tensors, metadata)) {
        for (let at = 0; at < part.length; ) at += writeSync(fd, part, at);
      }
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, file);
    // The rename itself made durable: a crash now leaves the new file or the old set, never neither.
    this.#syncDir();
    // Kept: this round's and the newest before it (a retrained round starts from that one). A
    // later round's is of a timeline that did not happen (the coordinator resumed before it): gone too.
    const rounds = this.rounds();
    const previous = rounds.find((r) => r < state.round);
    for (const r of rounds) if (r !== state.round && r !== previous) rmSync(this.#file(r), { force: true });
  }

  /**
   * Forgets the state after `round` (its update was refused, or never sent): a task after it
   * starts from the one before, as it would had the round never been trained. Durable before it
   * returns; nothing when there is none.
   */
  drop(round: number): void {
    const file = this.#file(round);
    try {
      rmSync(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    this.#syncDir();
  }

  #syncDir(): void {
    const dirFd = openSync(this.dir, 'r');
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  }

  #file(round: number): string {
    return join(this.dir, `after-round-${round}.safetensors`);
  }

  #read(file: string, round: number): SiteState {
    const bytes = readFileSync(file);
    const maxBytes = 1024 + 2 * 4 * this.#id.parameters + 512;
    const { tensors, metadata } = decodeTensors(bytes, { maxBytes, maxTensors: 2 });
    const meta = Metadata.safeParse(metadata);
    if (!meta.success) {
      const issue = meta.error.issues[0]!;
      throw new Error(`not a Consort site state (${issue.path.join('.') || 'metadata'}: ${issue.message})`);
    }
    const m = meta.data;
    if (m.job !== this.#id.job) throw new Error(`the state of job ${m.job}, not ${this.#id.job}`);
    if (m.site !== this.#id.site) throw new Error(`the state of site ${m.site}, not ${this.#id.site}`);
    if (Number(m.round) !== round) throw new Error(`says round ${m.round} in a file named for round ${round}`);
    if (Number(m.parameters) !== this.#id.parameters) throw new Error(`a model of ${m.parameters} parameters, this job's has ${this.#id.parameters}`);
    const state: SiteState = { round };
    for (const t of tensors.values()) {
      if ((t.name !== 'residual' && t.name !== 'control') || t.dtype !== 'F32' || t.data.length !== this.#id.parameters) {
        throw new Error(`tensor ${t.name} (${t.dtype} [${t.shape.join(', ')}]) is not a residual or control variate of this model`);
      }
      state[t.name] = t.data as Float32Array;
    }
    return state;
  }
}
