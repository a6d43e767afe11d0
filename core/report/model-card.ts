// MODEL_CARD.md: what the trained model is, how it was trained, how well it does where, and
// what it must not be used for. Written for a reader who never sees report.json.
import { participationNote } from './participation.ts';
import { noBetterThanMajority } from './no-better.ts';
import type { RunReport } from './run-report.ts';
import {
  describeArchitecture,
  describeStop,
  escapeMarkdown as md,
  formatCount,
  formatDuration,
  formatNumber,
  formatPercent,
  formatPoints,
  nonZeroEntries,
  siteOrder,
  sum,
} from './format.ts';

export interface ModelCardOptions {
  /** The weights file, as the reader will find it next to the card. */
  weightsFile: string;
  /** Every file that makes up the saved model (topology, weights). */
  modelFiles: string[];
}

/** Inline code when the text can be a code span (no backtick, no cell-splitting pipe); escaped text otherwise. */
function code(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: a control character (a lone CR) ends a code span's line
  return /[`|\u0000-\u001f\u007f\u2028\u2029]/.test(text) ? md(text) : `\`${text}\``;
}

function table(head: string[], rows: string[][], numeric: boolean[]): string {
  const align = numeric.map((n) => (n ? '---:' : '---'));
  return [head, align, ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n');
}

export function renderModelCard(report: RunReport, opts: ModelCardOptions): string {
  const f = report.final;
  const m = report.model;
  const sites = siteOrder(report);
  const quality = new Map(report.sites.map((s) => [s.site, s.quality]));
  const hasAuc = f.auc !== undefined || Object.values(f.perSite).some((s) => s.auc !== undefined);
  const out: string[] = [];

  out.push(`# Model card: ${md(report.job)}`, '');
  out.push(
    `A classifier (model type ${md(m.type)}) trained by federated learning with Consort across ${sites.length} site${sites.length === 1 ? '' : 's'}: ` +
      `each site trained on its own data, and only model updates and aggregate counts${m.inputScaler && m.inputScalerFrom !== 'reference' ? " (and each feature's mean and variance over a site's training rows)" : ''} left a site.`,
    '',
  );

  out.push('## Task', '');
  const architecture = describeArchitecture(report);
  out.push(`- **Model:** ${md(m.type)}${architecture ? ` (${md(architecture)})` : ''}, ${formatCount(m.parameters)} parameters (float32 weights)`);
  out.push(`- **Input shape:** [${m.inputShape.join(', ')}] (per example)`);
  // Images (the only inputs of three dimensions): what worker/data/image-folder.ts made of the files.
  if (m.inputShape.length === 3) {
    const [h, w, c] = m.inputShape;
    out.push(
      `- **Images:** ${h} × ${w} (height × width), ${c === 1 ? 'grayscale (0.299 R + 0.587 G + 0.114 B)' : 'RGB'}, resized bilinearly with half-pixel centres (TF's \`resizeBilinear\` with \`halfPixelCenters\`), values divided by 255 into [0, 1], rows first (NHWC): both exported models take them so`,
    );
  }
  if (m.features) {
    const scaler = m.inputScaler;
    out.push(
      scaler
        ? m.inputScalerFrom === 'reference'
          ? `- **Features** (in input order), each given to the model as (x − mean) / std with fixed reference values, the same at every site (not fitted on any site's data; a missing value is the mean, 0 once scaled):`
          : `- **Features** (in input order), each given to the model as (x − mean) / std with the federation's mean and standard deviation (pooled from every site's training split; a missing value is the mean, 0 once scaled):`
        : `- **Features** (in input order), given to the model as they are, unscaled${m.initialWeights === 'model file' ? " (the model file's weights were trained on raw values)" : ''}; a missing value is the column's mean over that site's training rows: ${m.features.map(code).join(', ')}`,
    );
    if (scaler) {
      out.push('', '  | feature | mean | std |', '  |---|---|---|');
      m.features.forEach((f, j) => out.push(`  | ${code(f)} | ${scaler.mean[j]} | ${scaler.std[j]} |`));
      out.push('');
      out.push(
        m.tfjsTakesRawInputs
          ? '- **Inputs of the exported models:** `tfjs/model.json` takes the raw values (this scaling is folded into its first layer; give the mean for a missing value); `model.safetensors` holds the weights as trained, which take the scaled values'
          : '- **Inputs of the exported models:** both take the scaled values: apply this scaling first',
      );
    }
  }
  if (m.initialWeights === 'model file') out.push('- **Starting weights:** those of the model file (a pre-trained model), fine-tuned by the federation');
  out.push(`- **Classes** (${m.classes.length}, in output index order): ${m.classes.map((c, i) => `${i} = ${code(c)}`).join(', ')}`);
  out.push('- **Output:** the probability of each class (`tfjs/model.json` ends in softmax)');
  out.push('');

  out.push('## Training', '');
  if (report.namespace) out.push(`- **Job:** ${md(report.namespace)}/${md(report.job)}`);
  const s = report.settings;
  const params = (o: Record<string, unknown>) =>
    Object.entries(o)
      .filter(([k]) => k !== 'name')
      .map(([k, v]) => `${k} ${String(v)}`)
      .join(', ');
  out.push(`- **Strategy:** ${md(report.strategy)}${s && params(s.strategy) ? ` (${md(params(s.strategy))})` : ''}`);
  if (s) {
    const t = s.training;
    out.push(
      `- **Local training:** ${t.epochs} epoch${t.epochs === 1 ? '' : 's'} a round, batches of ${t.batchSize}, ${md(t.optimizer)} at learning rate ${t.learningRate}; updates sent ${s.compression.codec === 'none' ? 'uncompressed' : `as ${md(s.compression.codec)}${s.compression.codec === 'topk' ? ` (top ${s.compression.topkFraction * 100}%)` : ''}`}, aggregated ${md(s.aggregation.mode)}`,
    );
  }
  out.push(`- **Rounds completed:** ${f.rounds}, stopped by **${f.stoppedBy}**: ${describeStop(report)}`);
  const took = participationNote(report);
  if (took) out.push(`- **Rounds taken part in:** ${md(took)} (a site not sampled, late, or down leaves a round without its update)`);
  const e = s?.evaluation;
  if (e)
    out.push(
      `- **Evaluation:** every ${e.every === 1 ? 'round' : `${e.every} rounds`} (and the last), by ${e.fraction === 1 ? 'every site' : `${e.fraction * 100}% of the sites`}${e.trainLoss ? ', with the train loss' : ''}`,
    );
  out.push(`- **Seed:** ${report.seed}`);
  out.push(`- **Backend:** ${md(report.backend)} (${md(report.backendReason)})`);
  out.push(`- **Started:** ${md(report.startedAt)}, ran ${formatDuration(report.durationMs)}`);
  out.push('');

  out.push('## Sites', '');
  out.push(
    table(
      ['Site', 'Train samples', 'Test samples', 'Rows rejected', 'Missing values'],
      sites.map((s) => {
        const q = quality.get(s);
        if (!q) return [md(s), '—', String(f.perSite[s]?.samples ?? '—'), '—', '—'];
        return [md(s), String(q.trainSamples), String(q.testSamples), String(sum(Object.values(q.rowsRejected))), String(sum(Object.values(q.missing)))];
      }),
      [false, true, true, true, true],
    ),
    '',
  );

  out.push('## Evaluation', '');
  const testTotal = sum(Object.values(f.perSite).map((s) => s.samples));
  const globalParts = [`accuracy **${formatPercent(f.accuracy, 2)}**`, `loss ${formatNumber(f.loss)}`];
  if (f.auc !== undefined) {
    const scored = Object.keys(f.perSite).length;
    const unranked = Object.entries(f.perSite).flatMap(([site, m]) => (m.auc === undefined ? [site] : []));
    const notes = [
      ...(report.model.classes.length > 2 ? ['each class against the rest, averaged over the classes'] : []),
      ...(unranked.length > 0
        ? [
            `over ${scored - unranked.length} of ${scored} sites: ${unranked.map(md).join(', ')} ${unranked.length === 1 ? 'has a test split' : 'have test splits'} of one class, which no AUC ranks`,
          ]
        : []),
    ];
    globalParts.push(`AUC ${formatNumber(f.auc)}${notes.length > 0 ? ` (${notes.join('; ')})` : ''}`);
  }
  const missing = f.missing ?? [];
  out.push(
    `Final global model, on the sites' held-out test splits (${testTotal} examples; figures are sample-weighted over sites, loss is mean categorical cross-entropy): ${globalParts.join(', ')}.${missing.length > 0 ? ` **Not scored:** ${missing.map((m) => `${md(m.site)} (${md(m.reason)})`).join(', ')}: these figures leave ${missing.length === 1 ? 'it' : 'them'} out.` : ''}`,
    '',
  );
  const warning = noBetterThanMajority(report);
  if (warning) out.push(`**Warning:** ${warning}.`, '');
  const sp = f.accuracySpread;
  out.push(
    `Spread of per-site accuracy: min ${formatPercent(sp.min, 2)}, max ${formatPercent(sp.max, 2)}, standard deviation ${(sp.std * 100).toFixed(2)} percentage points.`,
    '',
  );
  const head = ['Site', 'Test samples', 'Accuracy', 'Loss'];
  if (hasAuc) head.push('AUC');
  if (f.siteAlone) head.push('Site alone');
  const rows = sites.flatMap((s) => {
    const r = f.perSite[s];
    if (!r) return [];
    const row = [md(s), String(r.samples), formatPercent(r.accuracy, 2), formatNumber(r.loss)];
    if (hasAuc) row.push(formatNumber(r.auc));
    if (f.siteAlone) row.push(formatPercent(f.siteAlone[s], 2));
    return [row];
  });
  out.push(
    table(
      head,
      rows,
      head.map((_, i) => i > 0),
    ),
    '',
  );

  out.push('## Baselines', '');
  if (f.siteAloneMean === undefined && f.pooled === undefined && !f.siteAlone) {
    out.push('Not run (`consort run --baselines` trains them).', '');
  } else {
    if (f.siteAloneMean !== undefined) {
      out.push(
        `- **Site alone:** each site trained only on its own data, scored on its own test split: sample-weighted mean ${formatPercent(f.siteAloneMean, 2)} (federated ${formatPoints(f.accuracy - f.siteAloneMean)}).`,
      );
    }
    if (f.pooled !== undefined) {
      out.push(
        `- **Pooled:** one model trained on all sites' data together, which federated learning exists to avoid: ${formatPercent(f.pooled, 2)} (federated ${formatPoints(f.accuracy - f.pooled)}).`,
      );
    }
    out.push('');
  }

  out.push('## Files', '');
  out.push(`- **Weights:** ${code(opts.weightsFile)}`);
  // report.json hashes the weights themselves, not a file format's bytes around them.
  out.push(`- **SHA-256 of the weights** (little-endian float32 values in layout order, not of the file): \`${f.modelSha256}\``);
  if (opts.modelFiles.length > 0) out.push(`- **Model files:** ${opts.modelFiles.map(code).join(', ')}`);
  out.push('');

  out.push('## Data quality', '');
  const notes = report.sites.flatMap(({ site, quality: q }) => {
    const rejected = nonZeroEntries(q.rowsRejected);
    const missing = nonZeroEntries(q.missing);
    if (rejected.length === 0 && missing.length === 0) return [];
    const parts: string[] = [];
    if (rejected.length > 0) {
      const total = sum(rejected.map(([, n]) => n));
      parts.push(`${total} row${total === 1 ? '' : 's'} rejected (${rejected.map(([r, n]) => `${n} ${md(r)}`).join('; ')})`);
    }
    if (missing.length > 0) {
      const fill = report.model.inputScaler
        ? report.model.inputScalerFrom === 'reference'
          ? 'the reference mean'
          : "the federation's mean"
        : "the column's mean over this site's training rows";
      parts.push(`missing values filled with ${fill} (${missing.map(([c, n]) => `${md(c)}: ${n}`).join(', ')})`);
    }
    return [`- **${md(site)}:** ${parts.join('; ')}.`];
  });
  out.push(...(notes.length > 0 ? notes : ['No site rejected rows or had missing values.']), '');

  out.push('## Intended use and limitations', '');
  out.push(
    '- Intended for evaluation and research on populations like those of the participating sites; it is not a validated clinical or decision-making tool.',
    "- Performance is measured on each site's held-out split of its own data. It may not carry over to other sites, later data or different collection procedures; check it on local data before any use.",
    '- Per-site results differ (see the spread above): the global figure can hide sites where the model does poorly.',
    "- Training was federated, so no one inspected all the data: biases in any site's data or labels pass into the model unseen.",
    '- Results are reproducible for the same seed and backend; other backends may differ in the last bits.',
    '',
  );
  return out.join('\n');
}
