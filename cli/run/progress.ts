// What a person sees while `consort run` trains: a bar for the rounds and one for the sites of
// the current round, with the global loss and accuracy. Without a terminal (CI, pipes) it
// prints one plain line per round instead.
import cliProgress from 'cli-progress';
import type { RoundRecord } from '../../core/report/run-report.ts';
import type { RoundEvents } from '../../operator/coordinator/round-coordinator.ts';

export interface Progress extends RoundEvents {
  phase(what: string): void;
  stop(): void;
}

const fmt = (x: number | undefined, digits = 4) => (x === undefined || Number.isNaN(x) ? '  -   ' : x.toFixed(digits));

export function createProgress(opts: { rounds: number; stream: NodeJS.WriteStream; quiet: boolean; evaluateEvery?: number }): Progress {
  const { stream } = opts;
  if (opts.quiet) return { phase() {}, stop() {} };
  if (!stream.isTTY) {
    return {
      phase: (what) => stream.write(`${what}\n`),
      siteFailed: (round, f) => stream.write(`round ${round}: site ${f.site} failed: ${f.reason}\n`),
      roundFinished: (r, round) =>
        stream.write(
          r
            ? `round ${r.round}/${opts.rounds}  loss ${fmt(r.globalLoss)}  accuracy ${fmt(r.globalAccuracy)}  sites ${r.participants.length}  ${Math.round(r.durationMs)} ms\n`
            : `round ${round}/${opts.rounds}  trained; not evaluated (${opts.evaluateEvery && opts.evaluateEvery > 1 ? `every ${opts.evaluateEvery} rounds, and the last` : 'no evaluation this round'})\n`,
        ),
      stop() {},
    };
  }
  const multi = new cliProgress.MultiBar(
    {
      stream,
      clearOnComplete: false,
      hideCursor: true,
      format: '{label} |{bar}| {value}/{total} {unit}  {metrics}',
      barsize: 30,
      autopadding: true,
    },
    cliProgress.Presets.shades_classic,
  );
  let last: RoundRecord | undefined;
  const metrics = () => (last ? `loss ${fmt(last.globalLoss)}  accuracy ${fmt(last.globalAccuracy)}` : '');
  const rounds = multi.create(opts.rounds, 0, { label: 'rounds', unit: 'rounds', metrics: '' });
  let sites: cliProgress.SingleBar | undefined;
  return {
    phase: (what) => multi.log(`${what}\n`),
    roundStarted(round, names) {
      if (!sites) sites = multi.create(names.length, 0, { label: `round ${round}`, unit: 'sites', metrics: '' });
      else sites.start(names.length, 0, { label: `round ${round}`, unit: 'sites', metrics: '' });
    },
    siteAnswered() {
      sites?.increment();
    },
    siteFailed(round, f) {
      multi.log(`round ${round}: site ${f.site} failed: ${f.reason}\n`);
    },
    roundFinished(r, round) {
      if (r) last = r;
      rounds.update(round, { metrics: metrics() });
    },
    stop() {
      multi.stop();
    },
  };
}
