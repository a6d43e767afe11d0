// Number and text formatting shared by the HTML report and the model card, so both say the
// same thing the same way.
import type { RunReport } from './run-report.ts';

const HTML_ESCAPES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
};

/** Safe in element content and in quoted attribute values. Everything from the job goes through it. */
export function escapeHtml(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (ch) => HTML_ESCAPES[ch] ?? ch);
}

/**
 * For one markdown table cell or inline run: backslash-escapes the punctuation that CommonMark
 * or GFM would read as markup (a `|` would split the cell, a `<b>` would render as HTML).
 */
export function escapeMarkdown(value: unknown): string {
  return (
    String(value)
      .replace(/[\\`*_[\]<>|#~!]/g, (ch) => `\\${ch}`)
      // Every line break and control character, a lone CR too: CommonMark breaks a line at one,
      // and the text after it (a column name's "<img onerror=...>") was read as raw HTML.
      // biome-ignore lint/suspicious/noControlCharactersInRegex: the control characters are the point
      .replace(/[\u0000-\u001f\u007f\u2028\u2029]+/g, ' ')
  );
}

/** A fraction in [0, 1] as a percentage: 0.8734 → "87.3%". */
export function formatPercent(fraction: number | undefined, digits = 1): string {
  if (fraction === undefined) return '—';
  return `${(fraction * 100).toFixed(digits)}%`;
}

/** A signed difference of fractions in percentage points: 0.021 → "+2.1 pp". */
export function formatPoints(diff: number | undefined, digits = 1): string {
  if (diff === undefined) return '—';
  const pp = diff * 100;
  const text = Math.abs(pp).toFixed(digits);
  const sign = Number(text) === 0 ? '±' : pp > 0 ? '+' : '−';
  return `${sign}${text} pp`;
}

/** Losses and AUCs, fixed decimals so that table columns line up. */
export function formatNumber(value: number | undefined, decimals = 4): string {
  if (value === undefined) return '—';
  const abs = Math.abs(value);
  if (value !== 0 && (abs >= 1e6 || abs < 10 ** -decimals)) return value.toExponential(decimals - 1);
  return value.toFixed(decimals);
}

export function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const total = Math.round(s);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = total % 60;
  return h > 0 ? `${h} h ${m} min ${sec} s` : `${m} min ${sec} s`;
}

export function describeStop(report: RunReport): string {
  const s = report.settings;
  const target = s?.stopping?.target;
  const metric = target?.metric ?? 'accuracy';
  switch (report.final.stoppedBy) {
    case 'rounds':
      return `ran all configured rounds${s?.rounds !== undefined ? ` (${s.rounds})` : ''}`;
    case 'target':
      return target ? `reached the target: ${metric} ${metric === 'loss' ? '<=' : '>='} ${target.value}` : 'reached the target metric';
    case 'patience':
      return s?.stopping?.patience !== undefined
        ? `stopped early: ${metric} did not improve in ${s.stopping.patience} evaluation${s.stopping.patience === 1 ? '' : 's'} (patience)${s.rounds !== undefined ? `, of ${s.rounds} rounds asked for` : ''}`
        : 'stopped early: no improvement within the patience window';
  }
}

/** The model's architecture, as the job gave it: "hidden [16, 8], relu, dropout 0.3"; undefined when the report does not say. */
export function describeArchitecture(report: RunReport): string | undefined {
  const m = report.settings?.model;
  if (!m) return undefined;
  switch (m.type) {
    case 'logistic':
      return 'one dense softmax layer';
    case 'mlp':
      return `hidden layers [${m.hidden.join(', ')}], ${m.activation}${m.dropout > 0 ? `, dropout ${m.dropout}` : ''}`;
    case 'cnn':
      return `conv blocks of [${m.filters.join(', ')}] filters, kernel ${m.kernelSize}, dense ${m.dense}`;
    case 'layers':
      return `the Layers model file ${m.path}`;
  }
}

/** Non-zero entries of a count record, largest first, ties by name. */
export function nonZeroEntries(counts: Record<string, number>): [string, number][] {
  return Object.entries(counts)
    .filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

export function sum(values: Iterable<number>): number {
  let total = 0;
  for (const v of values) total += v;
  return total;
}

/** Site names in report order: the declared sites, then any that only appear in metrics. */
export function siteOrder(report: RunReport): string[] {
  const names = report.sites.map((s) => s.site);
  const seen = new Set(names);
  for (const name of Object.keys(report.final.perSite)) {
    if (!seen.has(name)) {
      seen.add(name);
      names.push(name);
    }
  }
  return names;
}
