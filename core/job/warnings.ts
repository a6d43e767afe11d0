// What a valid job asks that cannot happen as written: said before it runs (consort run, the
// coordinator's log), not refused, since the job still trains; a user who set the rule expects
// it to act.
import type { FederatedJobSpec } from './federated-job.ts';

export function jobWarnings(spec: FederatedJobSpec): string[] {
  const out: string[] = [];
  const { rounds, evaluation, stopping } = spec;
  // Evaluations: every evaluation.every rounds, and the last round always.
  const evaluations = Math.floor(rounds / evaluation.every) + (rounds % evaluation.every === 0 ? 0 : 1);
  if (stopping.patience !== undefined && evaluations <= stopping.patience) {
    out.push(
      `stopping.patience ${stopping.patience} cannot stop the job: ${rounds} rounds evaluated every ${evaluation.every} give ${evaluations} evaluation${evaluations === 1 ? '' : 's'}, and patience needs ${stopping.patience + 1} (the first sets the best)`,
    );
  }
  if (stopping.target && evaluations === 1 && rounds > 1) {
    out.push(`stopping.target can only be checked after the last round: evaluation.every ${evaluation.every} leaves one evaluation in ${rounds} rounds`);
  }
  return out;
}
