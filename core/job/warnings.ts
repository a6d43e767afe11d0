// What a valid job asks that cannot happen as written: said before it runs (consort run, the
// coordinator's log), not refused, since the job still trains; a user who set the rule expects
// it to act.
import type { FeatureMoments } from '../data/moments.ts';
import { gigabytes, hiddenParameters, trainingBytes } from '../model/size.ts';
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
  const { fraction, minSites } = spec.sampling;
  const asked = fraction !== undefined ? Math.ceil(fraction * spec.sites.length) : undefined;
  if (asked !== undefined && asked < minSites && minSites <= spec.sites.length) {
    out.push(
      `sampling.fraction ${fraction} of ${spec.sites.length} sites asks ${asked} a round, fewer than sampling.minSites ${minSites}: each round asks ${minSites} sites instead (raise fraction to ${minSites / spec.sites.length}, or lower minSites, to say so)`,
    );
  }
  // FedProx's term pulls the weights back by learningRate x mu of their distance a step (plain
  // and momentum SGD): at 1 it overshoots the global model, past 2 further each step.
  if (spec.strategy.name === 'fedprox' && spec.training.optimizer !== 'adam') {
    const pull = spec.strategy.mu * spec.training.learningRate;
    if (pull >= 1) {
      out.push(
        `strategy.mu ${spec.strategy.mu} with training.learningRate ${spec.training.learningRate}: each step pulls the weights back by learningRate x mu = ${pull} times their distance from the global model, which overshoots it from 1 on (training diverges): keep it well below 1`,
      );
    }
  }
  // SCAFFOLD adds c - c_i to every local gradient, constant through a round. Adam divides each
  // coordinate's step by that coordinate's running gradient magnitude, so wherever the data's
  // gradient is small the correction alone is taken at a full step: the hospital example
  // collapses under it at learning rates where FedAvg with Adam trains. SGD (SCAFFOLD's own) and
  // momentum scale the correction as they scale the gradient.
  if (spec.strategy.name === 'scaffold' && spec.training.optimizer === 'adam') {
    out.push(
      `strategy scaffold with training.optimizer adam: Adam scales each coordinate's step by its own gradient's magnitude, so SCAFFOLD's correction (c - c_i, the same every step of a round) is taken at full step size wherever the gradient is small, and training can collapse at learning rates where fedavg with adam trains: use training.optimizer sgd (SCAFFOLD's own) or momentum, or a far lower training.learningRate (${spec.training.learningRate} now)`,
    );
  }
  // A floor on an mlp's size whatever the data: between its hidden layers alone.
  const hidden = hiddenParameters(spec.model);
  if (hidden >= LARGE_MODEL_PARAMETERS) {
    out.push(
      `spec.model.hidden [${spec.model.type === 'mlp' ? spec.model.hidden.join(', ') : ''}] has at least ${hidden.toLocaleString('en-US')} parameters between its hidden layers alone (${gigabytes(4 * hidden)} of weights); training needs about ${gigabytes(trainingBytes(hidden))} at each site: check the units`,
    );
  }
  return out;
}

/** From this many parameters (4 GB of weights) validate says how large a model is. */
const LARGE_MODEL_PARAMETERS = 1e9;

/**
 * What the sites' data says against the job, once their label counts are known: a class (of
 * spec.classes, or a class folder) that no site has (its output unit is never a right answer, and
 * no figure can show it is missing), and a class only test splits have (no site trains on it, so
 * every test example of it is scored wrong). Sites that have not said their counts (over NATS, not
 * yet joined) are left out; the second needs every counted site's train counts.
 */
export function dataWarnings(
  classes: readonly string[],
  sites: ReadonlyArray<{
    /** The site's name, to say which spells a class how. */
    site?: string;
    labels?: Readonly<Record<string, number>> | undefined;
    trainLabels?: Readonly<Record<string, number>> | undefined;
  }>,
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
  if (none.length > 0) {
    const names = none.map((c) => `"${c}"`).join(', ');
    const them = none.length === 1 ? 'it' : 'them';
    warnings.push(
      listed
        ? `spec.classes lists ${names}, which no site's data has (${counted.length} site${counted.length === 1 ? '' : 's'} counted): the model keeps an output for ${them} that no example trains; check the spelling, or leave ${them} out`
        : // Gathered from the data: a class folder with no image in it.
          `class${none.length === 1 ? '' : 'es'} ${names} ${none.length === 1 ? 'has' : 'have'} no example at any site (an empty class folder?): the model keeps an output for ${them} that no example trains`,
    );
  }
  warnings.push(...spellingWarnings(classes, counted));
  return warnings;
}

/**
 * stopping.target on auc, against sites whose test split has one class: such a site ranks nothing
 * and has no AUC, so the global AUC and the target are over the other sites; with none left, the
 * target can never be reached. Needs the sites' label and train label counts (the test split's
 * are the difference); sites that have not said them are left out.
 */
export function aucTargetWarnings(
  spec: Pick<FederatedJobSpec, 'stopping'>,
  sites: ReadonlyArray<{ site: string; labels?: Readonly<Record<string, number>> | undefined; trainLabels?: Readonly<Record<string, number>> | undefined }>,
): string[] {
  if (spec.stopping.target?.metric !== 'auc') return [];
  const counted = sites.filter((s) => s.labels !== undefined && s.trainLabels !== undefined);
  const oneClass = counted.flatMap((s) => {
    const test = Object.entries(s.labels!).filter(([c, n]) => n - (s.trainLabels![c] ?? 0) > 0);
    return test.length < 2 ? [`${s.site} (${test.length === 0 ? 'no test examples' : `only ${JSON.stringify(test[0]![0])}`})`] : [];
  });
  if (oneClass.length === 0) return [];
  if (oneClass.length === counted.length && counted.length === sites.length)
    return [`stopping.target on auc can never be reached: no site's test split has two classes (${oneClass.join(', ')}), so no AUC is measured`];
  return [
    `stopping.target on auc: the test split of ${oneClass.join(', ')} has one class, which no AUC ranks: the global AUC, and the target, are over the other sites`,
  ];
}

/** A class as people mean it: "Yes", "yes" and " YES" are one (NFKC, case, runs of spaces, _ and -). */
function meaning(c: string): string {
  return c
    .normalize('NFKC')
    .toLowerCase()
    .replace(/[\s_-]+/g, ' ')
    .trim();
}

/**
 * Sites that write one class two ways ("Yes" at one, "yes" at another; 1/0 at one, True/False at
 * another): the model silently gets an output for each spelling, each learnt from part of the
 * data. Said when spellings differ only in case or spacing, and when a site's labels are none of
 * the other sites' (the same classes, written otherwise, or a split of the data worth knowing of).
 */
function spellingWarnings(
  classes: readonly string[],
  counted: ReadonlyArray<{ site?: string; labels?: Readonly<Record<string, number>> | undefined }>,
): string[] {
  const warnings: string[] = [];
  const has = (s: (typeof counted)[number], c: string) => (s.labels?.[c] ?? 0) > 0;
  const whose = (c: string) => {
    const at = counted.filter((s) => has(s, c));
    const named = at.flatMap((s) => (s.site !== undefined ? [s.site] : []));
    return named.length === at.length ? `site${at.length === 1 ? '' : 's'} ${named.join(', ')}` : `${at.length} site${at.length === 1 ? '' : 's'}`;
  };
  const spellings = new Map<string, string[]>();
  for (const c of classes) if (counted.some((s) => has(s, c))) spellings.set(meaning(c), [...(spellings.get(meaning(c)) ?? []), c]);
  const respelt = new Set<string>();
  for (const group of spellings.values()) {
    if (group.length < 2) continue;
    for (const c of group) respelt.add(c);
    warnings.push(
      `classes ${group.map((c) => `${JSON.stringify(c)} (${whose(c)})`).join(', ')} differ only in case or spacing: the model learns them as ${group.length} different classes; write the labels alike at every site`,
    );
  }
  if (counted.length < 2) return warnings;
  // Of two sites apart, one is named (the other is "the other sites").
  const said = new Set<number>();
  for (const [i, s] of counted.entries()) {
    const own = classes.filter((c) => has(s, c));
    if (said.has(i) || own.length < 2 || own.every((c) => respelt.has(c))) continue;
    const others = counted.filter((_, j) => j !== i);
    if (own.some((c) => others.some((o) => has(o, c)))) continue;
    const theirs = classes.filter((c) => others.some((o) => has(o, c)));
    // Against sites of one class between them (label skew), not a question of spelling.
    if (theirs.length < 2) continue;
    if (counted.length === 2) said.add(1 - i);
    const who = s.site !== undefined ? `site ${s.site}'s labels` : `one site's labels`;
    warnings.push(
      `${who} (${own.map((c) => JSON.stringify(c)).join(', ')}) are none of the other sites' (${theirs.map((c) => JSON.stringify(c)).join(', ')}): each of these classes is learnt from one site's data alone; if they mean the same, write them alike at every site`,
    );
  }
  return warnings;
}

/** How far apart one site's column may be from the other sites' before it is said to be on another scale. */
const SCALE_FACTOR = 10;

function median(values: number[]): number {
  const v = [...values].sort((a, b) => a - b);
  return v.length % 2 === 1 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
}

/** Whether two columns' (mean, sd) are on different scales (SCALE_FACTOR apart). */
function apart(a: { mean: number; sd: number }, b: { mean: number; sd: number }): boolean {
  const spread = Math.max(a.sd, b.sd);
  if (!(spread > 0)) return false;
  // A column constant at one site (no smoker there) is judged by its mean alone.
  const ratio = a.sd > 0 && b.sd > 0 && (a.sd >= SCALE_FACTOR * b.sd || b.sd >= SCALE_FACTOR * a.sd);
  return Math.abs(a.mean - b.mean) >= SCALE_FACTOR * spread || ratio;
}

const fmt = (v: number) => (Math.abs(v) >= 1e5 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : String(Number(v.toPrecision(4))));

/**
 * Tabular columns a site measures on another scale than the others (grams against kilograms,
 * °F against °C, a column of IDs among measurements): the pooled scaling then squeezes the other
 * sites' values together and the model learns the site, not the feature. Judged from the moments
 * the sites already send (no value leaves a site): against the median of the sites' means and of
 * their standard deviations (one odd site cannot hide itself by moving them), a site whose mean
 * is SCALE_FACTOR standard deviations away, or whose standard deviation is SCALE_FACTOR times
 * larger or smaller (both varying). Two sites cannot say which of them is odd: then one warning names both. A
 * column with fewer than two values at a site, or constant at every site, is not judged.
 */
export function scaleWarnings(
  sites: ReadonlyArray<{ site: string; moments?: FeatureMoments | undefined; features?: readonly string[] | undefined }>,
): string[] {
  const withMoments = sites.filter((s): s is typeof s & { moments: FeatureMoments } => s.moments !== undefined);
  if (withMoments.length < 2) return [];
  const names = withMoments.find((s) => s.features)?.features;
  // Sites whose columns differ are refused, naming the difference: their moments are not comparable by position.
  if (withMoments.some((s) => s.features && s.features.join('\u0000') !== names!.join('\u0000'))) return [];
  const d = withMoments[0]!.moments.count.length;
  if (withMoments.some((s) => s.moments.count.length !== d)) return [];
  const out: string[] = [];
  const advice =
    'other units, or another column under that name? The pooled scaling puts every site on one scale, so the model would learn which site a row comes from; convert it at the site, or leave the column out (data.featureColumns)';
  for (let j = 0; j < d; j++) {
    const column = names?.[j] !== undefined ? `column "${names[j]}"` : `feature ${j + 1}`;
    const judged = withMoments
      .filter((s) => s.moments.count[j]! >= 2)
      .map((s) => ({ site: s.site, mean: s.moments.mean[j]!, sd: Math.sqrt(s.moments.m2[j]! / s.moments.count[j]!) }));
    if (judged.length < 2) continue;
    if (judged.length === 2) {
      const [a, b] = judged as [(typeof judged)[0], (typeof judged)[0]];
      if (apart(a, b))
        out.push(
          `${column} differs in scale between site "${a.site}" (mean ${fmt(a.mean)}, sd ${fmt(a.sd)}) and site "${b.site}" (mean ${fmt(b.mean)}, sd ${fmt(b.sd)}): ${advice}`,
        );
      continue;
    }
    const reference = { mean: median(judged.map((s) => s.mean)), sd: median(judged.map((s) => s.sd)) };
    for (const s of judged) {
      if (!apart(s, reference)) continue;
      out.push(
        `${column} at site "${s.site}" looks on another scale than at the other sites (mean ${fmt(s.mean)}, sd ${fmt(s.sd)}; the sites' median: mean ${fmt(reference.mean)}, sd ${fmt(reference.sd)}): ${advice}`,
      );
    }
  }
  return out;
}
