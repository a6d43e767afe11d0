// Scores of a classifier's predicted probabilities against the true labels, computed the same
// way at every site so that the global numbers are comparable sample-weighted means.

export interface ClassificationScores {
  /** Mean categorical cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7] (as Keras does). */
  loss: number;
  /** Share of examples whose most probable class (the first, on ties) is the label. */
  accuracy: number;
  /**
   * ROC AUC: of the class-1 probability for two classes; for more, the mean over the classes of
   * each one's against the rest (one-vs-rest, macro: sklearn's roc_auc_score(multi_class='ovr')),
   * over the classes that have both examples and non-examples here; undefined when none has.
   */
  auc?: number;
}

const EPSILON = 1e-7;

/** probs: row-major [examples x numClasses]; labels: class indices. */
export function evaluateProbabilities(probs: Float32Array, numClasses: number, labels: Int32Array): ClassificationScores {
  const n = labels.length;
  if (!Number.isSafeInteger(numClasses) || numClasses < 2) throw new RangeError(`evaluateProbabilities: numClasses must be >= 2, got ${numClasses}`);
  if (probs.length !== n * numClasses) {
    throw new RangeError(`evaluateProbabilities: ${probs.length} probabilities for ${n} labels x ${numClasses} classes`);
  }
  if (n === 0) throw new RangeError('evaluateProbabilities: no examples');
  let lossSum = 0;
  let correct = 0;
  for (let e = 0; e < n; e++) {
    const label = labels[e]!;
    if (label < 0 || label >= numClasses) throw new RangeError(`evaluateProbabilities: label ${label} of example ${e} is not a class index`);
    const row = e * numClasses;
    let best = 0;
    for (let k = 1; k < numClasses; k++) if (probs[row + k]! > probs[row + best]!) best = k;
    if (best === label) correct++;
    const p = Math.min(Math.max(probs[row + label]!, EPSILON), 1 - EPSILON);
    lossSum -= Math.log(p);
  }
  const scores: ClassificationScores = { loss: lossSum / n, accuracy: correct / n };
  if (numClasses === 2) {
    const positive = new Float64Array(n);
    for (let e = 0; e < n; e++) positive[e] = probs[e * 2 + 1]!;
    const auc = rocAuc(positive, labels);
    if (auc !== undefined) scores.auc = auc;
  } else {
    const score = new Float64Array(n);
    const isClass = new Int32Array(n);
    let sum = 0;
    let classes = 0;
    for (let k = 0; k < numClasses; k++) {
      for (let e = 0; e < n; e++) {
        score[e] = probs[e * numClasses + k]!;
        isClass[e] = labels[e] === k ? 1 : 0;
      }
      const auc = rocAuc(score, isClass);
      if (auc === undefined) continue;
      sum += auc;
      classes++;
    }
    if (classes > 0) scores.auc = sum / classes;
  }
  return scores;
}

/**
 * ROC AUC by Mann–Whitney: (R1 - n1(n1+1)/2) / (n1 n0), with R1 the rank sum of the positives
 * and tied scores given their average rank. undefined when either class is absent.
 */
export function rocAuc(scores: Float64Array, labels: Int32Array): number | undefined {
  const n = scores.length;
  if (labels.length !== n) throw new RangeError('rocAuc: scores and labels differ in length');
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[a]! - scores[b]!);
  let positives = 0;
  let rankSum = 0;
  for (let i = 0; i < n; ) {
    let j = i;
    while (j + 1 < n && scores[order[j + 1]!] === scores[order[i]!]) j++;
    const averageRank = (i + j + 2) / 2; // ranks are 1-based: i+1 .. j+1
    for (let k = i; k <= j; k++) {
      if (labels[order[k]!] === 1) {
        positives++;
        rankSum += averageRank;
      }
    }
    i = j + 1;
  }
  const negatives = n - positives;
  if (positives === 0 || negatives === 0) return undefined;
  return (rankSum - (positives * (positives + 1)) / 2) / (positives * negatives);
}
