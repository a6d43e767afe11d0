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

/**
 * What the sites' data says against the job, once their label counts are known: a class (of
 * spec.classes, or a class folder) that no site has (its output unit is never a right answer, and
 * no figure can show it is missing), and a class only test splits have (no site trains on it, so
 * every test example of it is scored wrong). Sites that have not said their counts (over NATS, not
 * yet joined) are left out; the second needs every counted site's train counts.
 */
export function dataWarnings(
  classes: readonly string[],
  sites: ReadonlyArray<{ labels?: Readonly<Record<string, number>> | undefined; trainLabels?: Readonly<Record<string, number>> | undefined }>,
  /** The classes are spec.classes (else gathered from the sites' labels and class folders). */
  listed = true,
): string[] {
  const counted = sites.filter((s) => s.labels !== undefined);
  if (counted.length === 0) return [];
  const none = classes.filter((c) => counted.every((s) => (s.labels![c] ?? 0) === 0));
  const testOnly = counted.every((s) => s.trainLabels !== undefined)
    ? classes.filter((c) => !none.includes(c) && counted.every((s) => (s.trainLabels![c] ?? 0) === 0))
    : [];
  const warnings: string[] = [];
  if (testOnly.length > 0) {
    const examples = testOnly.map((c) => `"${c}" (${counted.reduce((n, s) => n + (s.labels![c] ?? 0), 0)})`).join(', ');
    warnings.push(
      `class${testOnly.length === 1 ? '' : 'es'} ${examples} ${testOnly.length === 1 ? 'is' : 'are'} only in test data: no site trains on ${testOnly.length === 1 ? 'it' : 'them'}, so every such test example is scored wrong; move some into a train split, or check the spelling of the test labels or folders`,
    );
  }
  if (none.length === 0) return warnings;
  const names = none.map((c) => `"${c}"`).join(', ');
  if (!listed) {
    // Gathered from the data: a class folder with no image in it.
    return [
      ...warnings,
      `class${none.length === 1 ? '' : 'es'} ${names} ${none.length === 1 ? 'has' : 'have'} no example at any site (an empty class folder?): the model keeps an output for ${none.length === 1 ? 'it' : 'them'} that no example trains`,
    ];
  }
  return [
    ...warnings,
    `spec.classes lists ${names}, which no site's data has (${counted.length} site${counted.length === 1 ? '' : 's'} counted): the model keeps an output for ${none.length === 1 ? 'it' : 'them'} that no example trains; check the spelling, or leave ${none.length === 1 ? 'it' : 'them'} out`,
  ];
}
