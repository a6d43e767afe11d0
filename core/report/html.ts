// report.html: one self-contained file that opens offline. Plots are inline SVG rendered here,
// so nothing loads from a URL and no script runs in the reader's browser.
import { participationNote } from './participation.ts';
import { noBetterThanMajority } from './no-better.ts';
import type { DataQuality } from '../data/quality.ts';
import type { RunReport } from './run-report.ts';
import { finalAccuracySpec, globalCurvesSpec, renderSvg, siteCurvesSpec } from './charts.ts';
import { describeStop, escapeHtml, formatCount, formatDuration, formatNumber, formatPercent, formatPoints, nonZeroEntries, siteOrder, sum } from './format.ts';

const LABEL_COLOURS = ['#4c78a8', '#f58518', '#54a24b', '#e45756', '#72b7b2', '#eeca3b', '#b279a2', '#ff9da6', '#9d755d', '#bab0ac'];

export async function renderReportHtml(report: RunReport): Promise<string> {
  const a = globalCurvesSpec(report);
  const b = siteCurvesSpec(report);
  const [svgA, svgB, svgC] = await Promise.all([
    a ? renderSvg(a, 'plot-global') : undefined,
    b ? renderSvg(b, 'plot-sites') : undefined,
    renderSvg(finalAccuracySpec(report), 'plot-final'),
  ]);
  const title = `${report.job} — Consort run report`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="consort">
<title>${escapeHtml(title)}</title>
<style>${CSS}</style>
</head>
<body>
<main>
${header(report)}
${cards(report)}
<section>
<h2>Summary</h2>
${summaryTable(report)}
</section>
<section>
<h2>Training</h2>
${
  svgA && svgB
    ? `${figure(svgA, 'Global model per round. Accuracy and test loss are sample-weighted over the evaluating sites\u2019 test splits; the training loss is the mean the training sites reported.')}
${figure(svgB, 'Accuracy of the global model on each site\u2019s own test split, per evaluated round.')}`
    : '<p class="note">No evaluated rounds were recorded.</p>'
}
</section>
<section>
<h2>Per site</h2>
${figure(svgC!, finalCaption(report))}
${perSiteTable(report)}
</section>
<section>
<h2>Data quality</h2>
<p class="note">${qualityNote(report)}</p>
${qualityTable(report)}
</section>
<footer>report.json format <code>${escapeHtml(report.format)}</code> · rendered by consort</footer>
</main>
</body>
</html>
`;
}

function header(report: RunReport): string {
  const where = report.namespace ? `namespace <b>${escapeHtml(report.namespace)}</b> · ` : '';
  return `<header>
<p class="eyebrow">Consort · federated learning run report</p>
<h1>${escapeHtml(report.job)}</h1>
<p class="sub">${where}started ${escapeHtml(report.startedAt)} · ran ${escapeHtml(formatDuration(report.durationMs))} · ${report.sites.length} sites · ${escapeHtml(report.strategy)}</p>
</header>`;
}

function cards(report: RunReport): string {
  const f = report.final;
  const items: [string, string, string?][] = [
    ['Final accuracy', formatPercent(f.accuracy), 'global model, weighted over test splits'],
    ['Final loss', formatNumber(f.loss), 'mean cross-entropy'],
  ];
  if (f.auc !== undefined) items.push(['Final AUC', formatNumber(f.auc, 3)]);
  if (f.siteAloneMean !== undefined)
    items.push(['vs site alone', formatPoints(f.accuracy - f.siteAloneMean), `site-alone mean ${formatPercent(f.siteAloneMean)}`]);
  if (f.pooled !== undefined) items.push(['vs pooled', formatPoints(f.accuracy - f.pooled), `pooled baseline ${formatPercent(f.pooled)}`]);
  items.push(['Rounds', String(f.rounds), describeStop(report)]);
  const cells = items
    .map(
      ([label, value, hint]) =>
        `<div class="card"><div class="label">${escapeHtml(label)}</div><div class="value">${escapeHtml(value)}</div>${hint ? `<div class="hint">${escapeHtml(hint)}</div>` : ''}</div>`,
    )
    .join('\n');
  return `<section class="cards">\n${cells}\n</section>`;
}

function summaryTable(report: RunReport): string {
  const f = report.final;
  const m = report.model;
  const rows: [string, string][] = [
    ['Job', escapeHtml(report.namespace ? `${report.namespace}/${report.job}` : report.job)],
    ['Seed', escapeHtml(report.seed)],
    ['Backend', `<b>${escapeHtml(report.backend)}</b> — ${escapeHtml(report.backendReason)}`],
    ['Strategy', escapeHtml(report.strategy)],
    [
      'Model',
      `${escapeHtml(m.type)} · input [${escapeHtml(m.inputShape.join(', '))}] · ${m.classes.length} classes: ${m.classes.map((c) => `<code>${escapeHtml(c)}</code>`).join(' ')}`,
    ],
    ['Parameters', escapeHtml(formatCount(m.parameters))],
    ['Rounds', `${f.rounds} completed, ${report.rounds.length} evaluated`],
    ['Stopped by', `<b>${escapeHtml(f.stoppedBy)}</b> — ${escapeHtml(describeStop(report))}`],
    ['Started', escapeHtml(report.startedAt)],
    ['Duration', escapeHtml(formatDuration(report.durationMs))],
    ['Final accuracy', escapeHtml(formatPercent(f.accuracy, 2))],
    ['Final loss', escapeHtml(formatNumber(f.loss))],
    ...(f.auc === undefined ? [] : [['Final AUC', escapeHtml(formatNumber(f.auc, 4))] as [string, string]]),
    ['Site-alone mean', f.siteAloneMean === undefined ? '— <span class="muted">(run with --baselines)</span>' : escapeHtml(formatPercent(f.siteAloneMean, 2))],
    ['Pooled baseline', f.pooled === undefined ? '— <span class="muted">(run with --baselines)</span>' : escapeHtml(formatPercent(f.pooled, 2))],
    [
      'Model SHA-256',
      `<code class="hash">${escapeHtml(f.modelSha256)}</code> <span class="muted">(of the weights as little-endian float32, not of a file)</span>`,
    ],
  ];
  return `<table class="kv">\n${rows.map(([k, v]) => `<tr><th scope="row">${escapeHtml(k)}</th><td>${v}</td></tr>`).join('\n')}\n</table>`;
}

function finalCaption(report: RunReport): string {
  const parts = ['Accuracy of the final global model on each site\u2019s test split'];
  if (report.final.siteAlone) parts.push('beside a model the site trained alone on its own data');
  const refs = ['the global (sample-weighted) accuracy'];
  if (report.final.siteAloneMean !== undefined) refs.push('the site-alone mean');
  if (report.final.pooled !== undefined) refs.push('a model trained on all data pooled');
  return `${parts.join(', ')}. Vertical rules: ${refs.join(', ')}.`;
}

function figure(svg: string, caption: string): string {
  return `<figure>\n${svg}\n<figcaption>${escapeHtml(caption)}</figcaption>\n</figure>`;
}

function perSiteTable(report: RunReport): string {
  const f = report.final;
  const sites = siteOrder(report).filter((s) => f.perSite[s] !== undefined);
  const hasAuc = f.auc !== undefined || sites.some((s) => f.perSite[s]?.auc !== undefined);
  const alone = f.siteAlone;
  const accuracies = sites.map((s) => f.perSite[s]?.accuracy ?? 0);
  const best = Math.max(...accuracies);
  const worst = Math.min(...accuracies);

  const head = ['Site', 'Test samples', 'Accuracy', 'Loss'];
  if (hasAuc) head.push('AUC');
  if (alone) head.push('Site alone', 'Federated − alone');
  const body = sites.map((s) => {
    const m = f.perSite[s]!;
    const mark = m.accuracy === best ? ' class="best"' : m.accuracy === worst ? ' class="worst"' : '';
    const cells = [
      `<th scope="row">${escapeHtml(s)}</th>`,
      `<td class="num">${escapeHtml(formatCount(m.samples))}</td>`,
      `<td class="num"${mark}>${escapeHtml(formatPercent(m.accuracy, 2))}</td>`,
      `<td class="num">${escapeHtml(formatNumber(m.loss))}</td>`,
    ];
    if (hasAuc) cells.push(`<td class="num">${escapeHtml(formatNumber(m.auc, 4))}</td>`);
    if (alone) {
      const a = alone[s];
      const diff = a === undefined ? undefined : m.accuracy - a;
      const cls = diff === undefined ? '' : diff >= 0 ? ' gain' : ' loss';
      cells.push(`<td class="num">${escapeHtml(formatPercent(a, 2))}</td>`, `<td class="num${cls}">${escapeHtml(formatPoints(diff))}</td>`);
    }
    return `<tr>${cells.join('')}</tr>`;
  });

  const total = sum(sites.map((s) => f.perSite[s]?.samples ?? 0));
  const foot = [
    '<th scope="row">Global (sample-weighted)</th>',
    `<td class="num">${escapeHtml(formatCount(total))}</td>`,
    `<td class="num">${escapeHtml(formatPercent(f.accuracy, 2))}</td>`,
    `<td class="num">${escapeHtml(formatNumber(f.loss))}</td>`,
  ];
  if (hasAuc) foot.push(`<td class="num">${escapeHtml(formatNumber(f.auc, 4))}</td>`);
  if (alone) {
    const diff = f.siteAloneMean === undefined ? undefined : f.accuracy - f.siteAloneMean;
    foot.push(`<td class="num">${escapeHtml(formatPercent(f.siteAloneMean, 2))}</td>`, `<td class="num">${escapeHtml(formatPoints(diff))}</td>`);
  }
  const warning = noBetterThanMajority(report);
  const sp = f.accuracySpread;
  const spread = `Accuracy spread over sites: min ${formatPercent(sp.min, 2)} · max ${formatPercent(sp.max, 2)} · range ${formatPoints(sp.max - sp.min).replace(/^[+±]/, '')} · std ${(sp.std * 100).toFixed(2)} pp`;
  const missing = f.missing ?? [];
  const notScored =
    missing.length > 0
      ? `\n<p class="warning"><strong>Not scored:</strong> ${escapeHtml(missing.map((m) => `${m.site} (${m.reason})`).join(', '))}: the figures above leave ${missing.length === 1 ? 'it' : 'them'} out.</p>`
      : '';
  const took = participationNote(report);
  const participation = took ? `\n<p class="spread">Rounds: ${escapeHtml(took)}.</p>` : '';
  return `<table class="grid">
<thead><tr>${head.map((h, i) => `<th scope="col"${i > 0 ? ' class="num"' : ''}>${escapeHtml(h)}</th>`).join('')}</tr></thead>
<tbody>
${body.join('\n')}
</tbody>
<tfoot><tr>${foot.join('')}</tr></tfoot>
</table>
<p class="spread">${escapeHtml(spread)}</p>${participation}${notScored}${warning ? `\n<p class="warning"><strong>Warning:</strong> ${escapeHtml(warning)}.</p>` : ''}`;
}

function labelColours(report: RunReport): Map<string, string> {
  const labels = [...report.model.classes];
  for (const s of report.sites) for (const l of Object.keys(s.quality.labels)) if (!labels.includes(l)) labels.push(l);
  return new Map(labels.map((l, i) => [l, LABEL_COLOURS[i % LABEL_COLOURS.length] as string]));
}

function countList(entries: [string, number][], total?: number): string {
  if (entries.length === 0) return '<span class="muted">none</span>';
  const items = entries.map(([name, n]) => {
    const share = total ? ` <span class="muted">(${escapeHtml(formatPercent(n / total))})</span>` : '';
    return `<li><span class="count">${escapeHtml(formatCount(n))}</span> ${escapeHtml(name)}${share}</li>`;
  });
  return `<ul class="counts">${items.join('')}</ul>`;
}

function labelCell(q: DataQuality, colours: Map<string, string>): string {
  const entries = Object.entries(q.labels).filter(([, n]) => n > 0);
  const total = sum(entries.map(([, n]) => n));
  if (total === 0) return '<span class="muted">none</span>';
  const ordered = [...colours.keys()].filter((l) => (q.labels[l] ?? 0) > 0).map((l) => [l, q.labels[l] ?? 0] as [string, number]);
  const bar = ordered
    .map(([l, n]) => `<span style="width:${((n / total) * 100).toFixed(2)}%;background:${colours.get(l)}" title="${escapeHtml(l)}: ${n}"></span>`)
    .join('');
  const legend = ordered
    .map(
      ([l, n]) =>
        `<li><i style="background:${colours.get(l)}"></i>${escapeHtml(l)} <span class="count">${escapeHtml(formatCount(n))}</span> <span class="muted">${escapeHtml(formatPercent(n / total, 0))}</span></li>`,
    )
    .join('');
  return `<div class="stack">${bar}</div><ul class="labels">${legend}</ul>`;
}

function qualityTable(report: RunReport): string {
  const colours = labelColours(report);
  const rows = report.sites.map(({ site, quality: q }) => {
    const rejected = nonZeroEntries(q.rowsRejected);
    const missing = nonZeroEntries(q.missing);
    const rejectedTotal = sum(rejected.map(([, n]) => n));
    const flag = rejected.length > 0 || missing.length > 0 ? ' class="flag"' : '';
    return `<tr${flag}>
<th scope="row">${escapeHtml(site)}</th>
<td class="num">${escapeHtml(formatCount(q.trainSamples))}</td>
<td class="num">${escapeHtml(formatCount(q.testSamples))}</td>
<td class="num">${escapeHtml(formatCount(q.rowsUsed))}</td>
<td>${rejectedTotal > 0 ? `<b>${escapeHtml(formatCount(rejectedTotal))}</b>` : ''}${countList(rejected)}</td>
<td>${countList(missing)}</td>
<td>${labelCell(q, colours)}</td>
</tr>`;
  });
  return `<table class="grid quality">
<thead><tr><th scope="col">Site</th><th scope="col" class="num">Train</th><th scope="col" class="num">Test</th><th scope="col" class="num">Rows used</th><th scope="col">Rows rejected, by reason</th><th scope="col">Missing values, by column</th><th scope="col">Labels (train + test)</th></tr></thead>
<tbody>
${rows.join('\n')}
</tbody>
</table>`;
}

const CSS = `
:root { --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --soft: #f9fafb; --accent: #4c78a8; --warn: #fff7ed; --warn-line: #f59e0b; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: #f3f4f6; color: var(--ink); font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 32px 40px; background: #fff; min-height: 100vh; }
header { border-bottom: 3px solid var(--accent); padding-bottom: 12px; margin-bottom: 20px; }
.eyebrow { margin: 0; text-transform: uppercase; letter-spacing: .08em; font-size: 11px; color: var(--muted); }
h1 { margin: 2px 0 4px; font-size: 26px; line-height: 1.2; word-break: break-word; }
h2 { font-size: 18px; margin: 32px 0 12px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.sub { margin: 0; color: var(--muted); }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { flex: 1 1 150px; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: var(--soft); }
.card .label { font-size: 12px; color: var(--muted); }
.card .value { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .hint { font-size: 12px; color: var(--muted); }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; vertical-align: top; padding: 6px 10px; border-bottom: 1px solid var(--line); }
thead th { font-size: 12px; color: var(--muted); font-weight: 600; border-bottom: 2px solid var(--line); white-space: nowrap; }
tbody th { font-weight: 600; word-break: break-word; }
tfoot th, tfoot td { border-top: 2px solid var(--line); font-weight: 600; background: var(--soft); }
.num { text-align: right; white-space: nowrap; }
table.kv th { width: 180px; color: var(--muted); font-weight: 500; }
table.grid tbody tr:nth-child(even) { background: #fcfcfd; }
td.best { color: #15803d; font-weight: 600; }
td.worst { color: #b91c1c; font-weight: 600; }
td.gain { color: #15803d; }
td.loss { color: #b91c1c; }
tr.flag > th:first-child { box-shadow: inset 3px 0 0 var(--warn-line); }
tr.flag { background: var(--warn) !important; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; background: #f3f4f6; padding: 1px 4px; border-radius: 3px; }
code.hash { word-break: break-all; }
.muted { color: var(--muted); }
.note, figcaption, .spread, footer { color: var(--muted); font-size: 13px; }
.warning { border-left: 3px solid #b3261e; padding: 4px 10px; color: #b3261e; }
figure { margin: 0 0 24px; }
figure svg { display: block; max-width: 100%; height: auto; }
figcaption { margin-top: 4px; }
ul.counts, ul.labels { list-style: none; margin: 0; padding: 0; }
ul.counts li, ul.labels li { white-space: nowrap; }
.count { font-weight: 600; }
.stack { display: flex; height: 10px; width: 160px; border-radius: 2px; overflow: hidden; margin: 4px 0; background: var(--line); }
.stack span { display: block; height: 100%; }
ul.labels i { display: inline-block; width: 9px; height: 9px; border-radius: 2px; margin-right: 5px; vertical-align: baseline; }
footer { margin-top: 36px; padding-top: 10px; border-top: 1px solid var(--line); }
@media print { body { background: #fff; } main { padding: 0; max-width: none; } section { break-inside: avoid-page; } }
`;

/** What the data-quality counts are, and what a missing value became: it depends on how the inputs were scaled. */
function qualityNote(report: RunReport): string {
  if (report.model.inputScaler && report.model.inputScalerFrom === 'reference')
    return 'Counts only: no row or value left any site. The inputs were scaled by fixed reference values, the same at every site; rejected rows were not used.';
  if (report.model.inputScaler)
    return 'Counts only: no row or value left any site (each column\u2019s mean and variance did, pooled into one scaling). Missing values took the federation\u2019s mean; rejected rows were not used.';
  if (report.model.features)
    return 'Counts only: no row or value left any site. The inputs were not scaled; a missing value took the column\u2019s mean over that site\u2019s training rows; rejected rows were not used.';
  return 'Counts only: no row or value left any site. Rejected files were not used.';
}
