// Whether a run learned anything: a classifier that scores no better than always answering the
// most common class has not, whatever else its report says (a learning rate that diverged, labels
// that carry no signal, classes too imbalanced for the loss). Flower and FLARE report the number
// and leave the reading to the user; Consort says it, in the summary and the model card.
import type { RunReport } from './run-report.ts';

/**
 * The most common class, and the share of the test examples a model always answering it scores:
 * the training splits' majority, over the test splits, where the sites report their train counts
 * (what a model that learned only the class balance would answer, where its accuracy is
 * measured); else the majority over every example, train and test (reports of earlier versions).
 */
export function majorityClass(report: Pick<RunReport, 'sites'>): { label: string; share: number; of: 'test' | 'all' } | undefined {
  const byTrain = report.sites.every(({ quality }) => quality.trainLabels !== undefined);
  const total = new Map<string, number>();
  const train = new Map<string, number>();
  for (const { quality } of report.sites) {
    for (const [label, n] of Object.entries(quality.labels)) total.set(label, (total.get(label) ?? 0) + n);
    if (byTrain) for (const [label, n] of Object.entries(quality.trainLabels!)) train.set(label, (train.get(label) ?? 0) + n);
  }
  // Where the accuracy is measured: the test examples (all minus train), or every example.
  const measured = byTrain ? new Map([...total].map(([label, n]) => [label, n - (train.get(label) ?? 0)])) : total;
  const majorityOf = byTrain ? train : total;
  const all = [...measured.values()].reduce((a, b) => a + b, 0);
  if (all === 0 || majorityOf.size === 0) return undefined;
  const [label] = [...majorityOf.entries()].reduce((best, e) => (e[1] > best[1] ? e : best));
  return { label, share: (measured.get(label) ?? 0) / all, of: byTrain ? 'test' : 'all' };
}

/** A warning when the final model scores no better than the majority class; undefined when it does better. */
export function noBetterThanMajority(report: Pick<RunReport, 'sites' | 'final'>): string | undefined {
  const m = majorityClass(report);
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  // A constant answer ranks nothing: its AUC is 0.5, whatever its accuracy on a test split a little
  // more lopsided than the sites' data as a whole.
  const auc = report.final.auc;
  if (auc !== undefined && auc <= 0.501) {
    return `the federated model's AUC is ${auc.toFixed(3)}: it ranks the examples no better than chance, whatever its accuracy (${pct(report.final.accuracy)}): it has not learned the task (check the learning rate, the labels and the classes)`;
  }
  if (!m || report.final.accuracy > m.share) return undefined;
  return (
    `the federated model scores ${pct(report.final.accuracy)}, no better than always answering ${JSON.stringify(m.label)} ` +
    `(${pct(m.share)} of the sites' ${m.of === 'test' ? 'test ' : ''}examples): it has not learned the task (check the learning rate, the labels and the classes)`
  );
}
