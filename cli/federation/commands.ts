// `consort coordinator` and `consort site`: the two processes of a job over NATS. Flags are
// checked with zod; each process stops cleanly on SIGINT/SIGTERM.
import { accessSync, constants, mkdirSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import { allowWideSimd } from '../../core/aggregation/wide-simd.ts';
import { coarseInputsWarning } from '../../core/data/moments.ts';
import { describeIssues } from '../../core/job/issues.ts';
import { assembleRunReport } from '../../core/report/assemble.ts';
import { runNatsCoordinator } from '../../operator/coordinator/nats-coordinator.ts';
import { exportLayersModel } from '../../worker/site-worker.ts';
import { buildModel } from '../../worker/model.ts';
import { LocalTrainer } from '../../worker/trainer.ts';
import { COORDINATOR_FAILPOINTS_ENV, CoordinatorFailpoints, FAILPOINTS_ENV, Failpoints } from '../../worker/nats/failpoints.ts';
import { runSite } from '../../worker/nats/site-runner.ts';
import { CliError, fileProblem } from '../errors.ts';
import { OperatorError } from '../../operator/errors.ts';
import { EPHEMERAL_NATS_ENV } from '../nats/server.ts';
import { reportFailure } from '../failure.ts';
import { readJobFile, withOverrides } from '../job-file.ts';
import { TrustedKeys } from '../nats/config.ts';
import { connectWhenUp, nkeySeedOf, readSeed, sayConnectionChanges, watchPermissions } from '../nats/connect.ts';
import { publicKeyOf } from '../../core/protocol/signing.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { checkOutputDir, writeOutputs } from '../run/outputs.ts';
import { summaryTable } from '../run/command.ts';
import { intFlag, invalidFlags, natsUrlFlag } from '../flags.ts';

const seconds = z
  .string()
  .regex(/^\d+(\.\d+)?$/, 'must be a number of seconds')
  .transform(Number);

export const CoordinatorFlags = z
  .object({
    nats: natsUrlFlag,
    creds: z.string().min(1),
    keys: z.string().min(1),
    out: z.string().min(1).optional(),
    seed: intFlag(0, 2 ** 31 - 1).optional(),
    rounds: intFlag(1, 100_000).optional(),
    joinTimeout: seconds.optional(),
    quiet: z.boolean().default(false),
  })
  .strict();

export const SiteFlags = z
  .object({
    job: z.string().min(1),
    site: z.string().min(1),
    nats: natsUrlFlag,
    creds: z.string().min(1),
    backend: z.enum(['auto', 'tensorflow-gpu', 'tensorflow', 'wasm', 'cpu']).default('auto'),
    seed: intFlag(0, 2 ** 31 - 1).optional(),
    dataDir: z.string().min(1).optional(),
    state: z.string().min(1).optional(),
    quiet: z.boolean().default(false),
  })
  .strict();

function parseFlags<T extends z.ZodType>(schema: T, raw: Record<string, unknown>): z.infer<T> {
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw invalidFlags(parsed.error);
  return parsed.data;
}

function readKeys(path: string): TrustedKeys {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new CliError('CONSORT_CLI_CREDENTIALS', `${path}: ${fileProblem(err)}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CliError('CONSORT_CLI_CREDENTIALS', `${path}: not JSON: ${(err as Error).message}`);
  }
  const keys = TrustedKeys.safeParse(value);
  if (!keys.success) throw new CliError('CONSORT_CLI_CREDENTIALS', `${path}: not a keys file of consort nats-config`, { details: describeIssues(keys.error) });
  return keys.data;
}

/**
 * An AbortSignal that fires on SIGINT/SIGTERM (once), so both processes stop cleanly, or when
 * `also` aborts. Aborted by a signal, its reason is the signal's name.
 */
function stopSignal(also?: AbortController): AbortSignal {
  const ctl = also ?? new AbortController();
  process.once('SIGINT', () => ctl.abort('SIGINT'));
  process.once('SIGTERM', () => ctl.abort('SIGTERM'));
  return ctl.signal;
}

/** 128 + the signal's number, as a shell reports a process a signal ended. */
const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };

/** Failures after which the same coordinator, started again, resumes the job from its last checkpoint. */
const RESUMABLE_FAILURES = new Set<string>(['CONSORT_C_ABORTED', 'CONSORT_C_QUORUM', 'CONSORT_C_DEADLINE', 'CONSORT_C_EVALUATION', 'CONSORT_C_SITE_FAILED']);

const logTo = (quiet: boolean) => (line: string) => {
  if (!quiet) process.stderr.write(`${new Date().toISOString()} ${line}\n`);
};

export async function coordinatorCommand(jobPath: string, raw: Record<string, unknown>): Promise<number> {
  // A coordinator process trains nothing: 256-bit folds where the CPU has them (wide-simd.ts).
  allowWideSimd();
  try {
    const flags = parseFlags(CoordinatorFlags, raw);
    const failpoints = CoordinatorFailpoints.safeParse(process.env[COORDINATOR_FAILPOINTS_ENV] ?? '');
    if (!failpoints.success) {
      throw new CliError('CONSORT_CLI_USAGE', `${COORDINATOR_FAILPOINTS_ENV}: invalid`, { details: describeIssues(failpoints.error) });
    }
    const job = withOverrides(readJobFile(jobPath), flags);
    const keys = readKeys(flags.keys);
    const outDir = resolve(flags.out ?? `out/${job.metadata.name}`);
    checkOutputDir(outDir);
    const missing = job.spec.sites.map((s) => s.name).filter((s) => !keys.sites[s]);
    if (missing.length > 0) throw new CliError('CONSORT_CLI_CREDENTIALS', `${flags.keys} has no key for site(s) ${missing.join(', ')}`);
    // A keys.json of another nats-config would make every site's signature look forged: the
    // coordinator's own seed (an NKey file, as nats-config writes beside keys.json) must be the key it names.
    const own = nkeySeedOf(flags.creds);
    const ownKey = own !== undefined ? publicKeyOf(own) : undefined;
    const asSite = Object.entries(keys.sites).find(([, k]) => k === ownKey)?.[0];
    if (asSite !== undefined) {
      throw new CliError('CONSORT_CLI_CREDENTIALS', `--creds: ${flags.creds} holds site "${asSite}"'s key, not the coordinator's: use coordinator.nk`);
    }
    if (own !== undefined && ownKey !== keys.coordinator) {
      throw new CliError(
        'CONSORT_CLI_CREDENTIALS',
        `${flags.keys} and ${flags.creds} come from different nats-config runs (its coordinator key is ${keys.coordinator.slice(0, 12)}…, the credentials' is ${publicKeyOf(own).slice(0, 12)}…): every site would be refused as forged; use the keys.json written beside coordinator.nk`,
      );
    }
    const log = logTo(flags.quiet);
    const nc = await connectWhenUp(flags.nats, flags.creds, COORDINATOR_USER, log);
    const stop = new AbortController();
    const permissions = watchPermissions(nc, stop, log);
    sayConnectionChanges(nc, log);
    const startedAt = new Date();
    const t0 = performance.now();
    /** The last round checkpointed by this run: a failure after it says that a rerun resumes from there. */
    let checkpointed = 0;
    try {
      const result = await runNatsCoordinator({
        job,
        nc,
        siteKeys: keys.sites,
        log,
        joinTimeoutMs: (flags.joinTimeout ?? job.spec.coordinator.joinTimeoutSeconds) * 1000,
        signal: stopSignal(stop),
        // An operator watching this loop (a coordinator Pod) reads its metrics from the status replies.
        tally: true,
        events: {
          // A site the round went on without, at its deadline (other failures are logged where they are seen).
          siteFailed: (round, f) => {
            if (f.code === 'CONSORT_C_DEADLINE') log(`round ${round}: site "${f.site}" left out: ${f.reason || 'no answer before the round deadline'}`);
          },
          roundFinished: (r, round) => {
            checkpointed = round;
            log(
              r
                ? `round ${round}: loss ${r.globalLoss.toFixed(4)} accuracy ${r.globalAccuracy.toFixed(4)} (${participation(r.participants)})`
                : `round ${round} done`,
            );
          },
        },
      });
      if (failpoints.data.includes('stop-before-outputs')) {
        log('coordinator: failpoint: stopped before writing its outputs');
        process.kill(process.pid, 'SIGSTOP');
      }
      const first = Object.values(result.sites)[0];
      const classes = job.spec.classes ?? first?.labels ?? [];
      const sampleShape = first?.sampleShape ?? [];
      const backend = first?.backend ?? { name: 'unknown', reason: 'no site reported its backend' };
      const durationMs = performance.now() - t0;
      // The TF.js format needs the model's topology: build it here (no data, no training).
      const built = await buildModel(job.spec.model, sampleShape, classes.length, dirname(resolve(jobPath)));
      const tfjsModel = await exportLayersModel(new LocalTrainer(built), result.global, result.inputScaler);
      const coarse = coarseInputsWarning(tfjsModel.coarseColumns, result.inputScaler, first?.features);
      if (coarse) log(`warning: ${coarse}`);
      const report = assembleRunReport({
        job,
        layout: result.layout,
        classes,
        sampleShape,
        ...(first?.features ? { features: first.features } : {}),
        ...(result.inputScaler ? { inputScaler: result.inputScaler, tfjsTakesRawInputs: tfjsModel.takesRawInputs === true } : {}),
        initialWeights: result.initialWeights,
        backend,
        startedAt,
        durationMs,
        ...(result.resumedFrom > 0 ? { resumedAfterRound: result.resumedFrom } : {}),
        sites: job.spec.sites.flatMap((s) => {
          const q = result.sites[s.name]?.quality;
          return q ? [{ site: s.name, quality: q }] : [];
        }),
        result,
      });
      const files = await writeOutputs(outDir, { report, layout: result.layout, weights: result.global, tfjsModel });
      const rejected = Object.entries(result.rejections).filter(([, n]) => n > 0);
      // The result, not a log line: printed with --quiet too (as `consort run` prints it).
      process.stdout.write(summaryTable(report));
      process.stdout.write(
        `${rejected.length ? `rejected messages: ${rejected.map(([c, n]) => `${c} ${n}`).join(', ')}\n` : ''}wrote ${files.length} files to ${outDir}\n`,
      );
      return 0;
    } catch (err) {
      const violation = permissions.violation();
      if (violation) throw violation;
      // Stopped (Ctrl-C) or failed mid-job: the rounds done are not lost, and the user should know.
      if (err instanceof OperatorError && RESUMABLE_FAILURES.has(err.code) && checkpointed > 0 && !process.env[EPHEMERAL_NATS_ENV]) {
        throw new OperatorError(
          err.code,
          `${err.message} (the checkpoint after round ${checkpointed} is kept: this coordinator, started again with the same job file, goes on from there)`,
          { cause: err },
        );
      }
      throw err;
    } finally {
      await nc.drain().catch(() => nc.close());
    }
  } catch (err) {
    return reportFailure(err);
  }
}

/** A folder this process can write in (made if missing), or a CliError naming the flag. */
function writableDir(path: string, flag: string): string {
  const dir = resolve(path);
  try {
    mkdirSync(dir, { recursive: true });
    accessSync(dir, constants.W_OK);
  } catch (err) {
    throw new CliError('CONSORT_CLI_OUTPUT', `${flag}: ${dir}: ${fileProblem(err)}`);
  }
  return dir;
}

export async function siteCommand(raw: Record<string, unknown>): Promise<number> {
  try {
    const flags = parseFlags(SiteFlags, raw);
    const failpoints = Failpoints.safeParse(process.env[FAILPOINTS_ENV] ?? '');
    if (!failpoints.success) {
      throw new CliError('CONSORT_CLI_USAGE', `${FAILPOINTS_ENV}: invalid`, { details: describeIssues(failpoints.error) });
    }
    const job = withOverrides(readJobFile(flags.job), flags);
    if (!job.spec.sites.some((s) => s.name === flags.site)) {
      throw new CliError(
        'CONSORT_CLI_USAGE',
        `--site: "${flags.site}" is not a site of ${job.metadata.name} (${job.spec.sites.map((s) => s.name).join(', ')})`,
      );
    }
    const stateDir = flags.state === undefined ? undefined : writableDir(flags.state, '--state');
    // The seed signs updates; the file logs in (a .creds file carries the site's JWT too).
    const seed = readSeed(flags.creds);
    const log = logTo(flags.quiet);
    const nc = await connectWhenUp(flags.nats, flags.creds, flags.site, log);
    const stop = new AbortController();
    const permissions = watchPermissions(nc, stop, log);
    sayConnectionChanges(nc, log);
    try {
      const summary = await runSite({
        failpoints: failpoints.data,
        job,
        site: flags.site,
        nc,
        seed,
        baseDir: resolve(flags.dataDir ?? dirname(resolve(flags.job))),
        backend: flags.backend,
        ...(stateDir ? { stateDir } : {}),
        log,
        signal: stopSignal(stop),
      });
      const violation = permissions.violation();
      if (violation) throw violation;
      const counts = `${summary.fits} updates, ${summary.evaluations} evaluations, ${summary.rejected} refused`;
      // Stopped by Ctrl-C or SIGTERM, not by the job's end: not a success.
      const signal = stop.signal.aborted ? String(stop.signal.reason) : undefined;
      if (signal && SIGNAL_EXIT[signal]) {
        log(`site ${summary.site}: stopped by ${signal} before the job ended (${counts})`);
        return SIGNAL_EXIT[signal];
      }
      log(`site ${summary.site}: done (${counts})`);
      return 0;
    } catch (err) {
      throw permissions.violation() ?? err;
    } finally {
      await nc.drain().catch(() => nc.close());
    }
  } catch (err) {
    return reportFailure(err);
  }
}

/** "3 sites", or "3 sites, 1 late update" when a buffered round folded an update of an earlier round (listed as site@rN). */
function participation(participants: readonly string[]): string {
  const sites = new Set(participants.map((p) => p.split('@')[0]!)).size;
  const late = participants.filter((p) => p.includes('@')).length;
  return `${sites} site${sites === 1 ? '' : 's'}${late > 0 ? `, ${late} late update${late === 1 ? '' : 's'}` : ''}`;
}
