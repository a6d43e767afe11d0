// The report's plots: vega-lite specs built from a RunReport, compiled to vega and rendered to
// static SVG in Node. No canvas: vega then estimates text widths (0.8 em per character), which
// overestimates, so labels get room to spare rather than overlap.
import * as vega from 'vega';
import { compile, type Config, type TopLevelSpec } from 'vega-lite';
import type { RunReport } from './run-report.ts';
import { siteOrder } from './format.ts';

export const CHART_FONT = 'Helvetica, Arial, sans-serif';
/** Plot area width that fits the page's content column next to axes and legends. */
const FULL_WIDTH = 820;

// Tableau 10 then its light partners: distinguishable and readable on white.
const TABLEAU10 = ['#4c78a8', '#f58518', '#e45756', '#72b7b2', '#54a24b', '#eeca3b', '#b279a2', '#ff9da6', '#9d755d', '#bab0ac'];
const TABLEAU20 = [
  '#4c78a8',
  '#9ecae9',
  '#f58518',
  '#ffbf79',
  '#54a24b',
  '#88d27a',
  '#b79a20',
  '#f2cf5b',
  '#439894',
  '#83bcb6',
  '#e45756',
  '#ff9d98',
  '#79706e',
  '#bab0ac',
  '#d67195',
  '#fcbfd2',
  '#b279a2',
  '#d6a5c9',
  '#9e765f',
  '#d8b5a5',
];
const INK = '#1f2937';
const GLOBAL_COLOUR = '#111827';

/** Above this many sites, per-site lines become a min–max band. */
export const MAX_SITE_LINES = 20;
/** Above this many sites, per-site bars become a histogram. */
export const MAX_SITE_BARS = 60;

const CONFIG: Config = {
  font: CHART_FONT,
  background: 'white',
  padding: 8,
  view: { stroke: '#d1d5db' },
  axis: {
    labelFontSize: 11,
    titleFontSize: 12,
    titleFontWeight: 'normal',
    labelColor: '#374151',
    titleColor: '#374151',
    gridColor: '#eceff3',
    domainColor: '#9ca3af',
    tickColor: '#9ca3af',
  },
  legend: { labelFontSize: 11, titleFontSize: 12, titleFontWeight: 'normal', labelLimit: 400, titleColor: '#374151', labelColor: '#374151' },
  title: { fontSize: 13, fontWeight: 'bold', anchor: 'start', color: INK, offset: 8 },
  concat: { spacing: 48 },
  line: { strokeWidth: 2 },
  point: { size: 22, filled: true },
};

/** Compiles a vega-lite spec and renders it to a standalone SVG string. */
export async function renderSvg(spec: TopLevelSpec, idPrefix: string): Promise<string> {
  const { spec: vgSpec } = compile({ ...spec, config: CONFIG } as TopLevelSpec);
  const view = new vega.View(vega.parse(vgSpec), { renderer: 'none', logLevel: vega.Error });
  try {
    return localiseIds(await view.toSVG(), idPrefix);
  } finally {
    view.finalize();
  }
}

/**
 * vega numbers clip paths and gradients with process-wide counters. Several SVGs share one HTML
 * document, so give each its own prefix; numbering from zero also makes the same report render
 * to the same bytes however many were rendered before it.
 */
function localiseIds(svg: string, prefix: string): string {
  const ids = new Map<string, string>();
  const out = svg.replace(/(\sid=")([^"]+)"/g, (_m, head: string, id: string) => {
    const local = `${prefix}-${ids.size}`;
    ids.set(id, local);
    return `${head}${local}"`;
  });
  const rename = (id: string) => ids.get(id) ?? id;
  return out.replace(/url\(#([^)]+)\)/g, (_m, id: string) => `url(#${rename(id)})`).replace(/href="#([^"]+)"/g, (_m, id: string) => `href="#${rename(id)}"`);
}

function roundAxis(report: RunReport) {
  const rounds = report.rounds.map((r) => r.round);
  const first = Math.min(...rounds);
  const last = Math.max(...rounds);
  return {
    field: 'round',
    type: 'quantitative' as const,
    title: 'round',
    scale: { domain: [first, Math.max(last, first + 1)], nice: false },
    axis: { format: 'd', tickMinStep: 1 },
  };
}

/** A percent axis format fine enough that neighbouring ticks never read the same. */
function percentFormat(values: number[]): string {
  const span = Math.max(...values) - Math.min(...values);
  return span < 0.04 ? '.1%' : '.0%';
}

function showPoints(report: RunReport): boolean {
  return report.rounds.length <= 40;
}

/** (a) Global accuracy, loss and, when reported, AUC per round: one panel each. */
export function globalCurvesSpec(report: RunReport): TopLevelSpec | undefined {
  if (report.rounds.length === 0) return undefined;
  const x = roundAxis(report);
  const point = showPoints(report);
  const hasAuc = report.rounds.some((r) => r.globalAuc !== undefined);
  const panels = hasAuc ? 3 : 2;
  const width = Math.floor((FULL_WIDTH - (panels - 1) * 60) / panels);
  const height = 220;

  const accuracy = report.rounds.map((r) => ({ round: r.round, value: r.globalAccuracy }));
  const loss: { round: number; series: string; value: number }[] = [];
  for (const r of report.rounds) {
    loss.push({ round: r.round, series: 'global test loss', value: r.globalLoss });
    loss.push({ round: r.round, series: 'mean local training loss', value: r.fitLoss });
    if (r.trainLoss !== undefined) loss.push({ round: r.round, series: 'global train loss', value: r.trainLoss });
  }
  const lossSeries = [...new Set(loss.map((d) => d.series))];

  const hconcat: object[] = [
    {
      title: 'Global accuracy',
      width,
      height,
      data: { values: accuracy },
      mark: { type: 'line', point, color: '#4c78a8' },
      encoding: {
        x,
        y: {
          field: 'value',
          type: 'quantitative',
          title: 'accuracy',
          scale: { zero: false },
          axis: { format: percentFormat(accuracy.map((d) => d.value)) },
        },
      },
    },
    {
      title: 'Loss (cross-entropy)',
      width,
      height,
      data: { values: loss },
      mark: { type: 'line', point },
      encoding: {
        x,
        y: { field: 'value', type: 'quantitative', title: 'loss', scale: { zero: false } },
        color: {
          field: 'series',
          type: 'nominal',
          title: null,
          scale: { domain: lossSeries, range: ['#e45756', '#9ca3af', '#f58518'] },
          legend: { orient: 'bottom', direction: 'vertical', symbolType: 'stroke', symbolStrokeWidth: 2 },
        },
        strokeDash: {
          field: 'series',
          type: 'nominal',
          scale: {
            domain: lossSeries,
            range: [
              [1, 0],
              [5, 3],
              [2, 2],
            ],
          },
          legend: { orient: 'bottom', direction: 'vertical', title: null, symbolType: 'stroke', symbolStrokeWidth: 2 },
        },
      },
    },
  ];
  if (hasAuc) {
    const auc = report.rounds.flatMap((r) => (r.globalAuc === undefined ? [] : [{ round: r.round, value: r.globalAuc }]));
    hconcat.push({
      title: 'Global AUC',
      width,
      height,
      data: { values: auc },
      mark: { type: 'line', point, color: '#54a24b' },
      encoding: {
        x,
        y: { field: 'value', type: 'quantitative', title: 'ROC AUC', scale: { zero: false }, axis: { format: '.2f' } },
      },
    });
  }
  return { hconcat, resolve: { scale: { color: 'independent', strokeDash: 'independent' } } } as TopLevelSpec;
}

/** (b) Each site's accuracy per round, the global curve on top; a min–max band for many sites. */
export function siteCurvesSpec(report: RunReport): TopLevelSpec | undefined {
  if (report.rounds.length === 0) return undefined;
  const x = roundAxis(report);
  const point = showPoints(report);
  const sites = siteOrder(report);
  const global = report.rounds.map((r) => ({ round: r.round, series: 'global (weighted)', value: r.globalAccuracy }));
  const all = report.rounds.flatMap((r) => [r.globalAccuracy, r.accuracySpread.min, r.accuracySpread.max]);
  const y = {
    field: 'value',
    type: 'quantitative' as const,
    title: 'accuracy (site test split)',
    scale: { zero: false },
    axis: { format: percentFormat(all) },
  };

  if (sites.length > MAX_SITE_LINES) {
    const band = report.rounds.map((r) => ({ round: r.round, min: r.accuracySpread.min, max: r.accuracySpread.max }));
    return {
      title: `Per-site accuracy per round: range over ${sites.length} sites`,
      width: FULL_WIDTH,
      height: 260,
      layer: [
        {
          data: { values: band },
          mark: { type: 'area', opacity: 1 },
          encoding: {
            x,
            y: { ...y, field: 'min' },
            y2: { field: 'max' },
            color: {
              datum: 'sites: min–max',
              type: 'nominal',
              title: null,
              scale: { domain: ['sites: min–max', 'global (weighted)'], range: ['#c6dbef', GLOBAL_COLOUR] },
              legend: { orient: 'bottom', direction: 'horizontal', symbolType: 'square' },
            },
          },
        },
        {
          data: { values: global },
          mark: { type: 'line', point },
          encoding: { x, y, color: { datum: 'global (weighted)', type: 'nominal' } },
        },
      ],
      resolve: { scale: { color: 'shared' } },
      encoding: {},
    } as unknown as TopLevelSpec;
  }

  const rows: { round: number; series: string; kind: string; value: number }[] = [];
  for (const r of report.rounds) {
    for (const s of r.sites) rows.push({ round: r.round, series: s.site, kind: 'site', value: s.accuracy });
  }
  for (const g of global) rows.push({ ...g, kind: 'global' });
  const palette = sites.length <= 10 ? TABLEAU10 : TABLEAU20;
  const domain = [...sites, 'global (weighted)'];
  const range = [...sites.map((_, i) => palette[i % palette.length] as string), GLOBAL_COLOUR];
  return {
    title: 'Per-site accuracy per round',
    width: FULL_WIDTH,
    height: 280,
    data: { values: rows },
    mark: { type: 'line', point: point ? { size: 14 } : false },
    encoding: {
      x,
      y,
      color: {
        field: 'series',
        type: 'nominal',
        title: 'site',
        scale: { domain, range },
        legend: { orient: 'right', symbolType: 'stroke', symbolStrokeWidth: 3 },
      },
      strokeDash: {
        field: 'kind',
        type: 'nominal',
        scale: {
          domain: ['site', 'global'],
          range: [
            [1, 0],
            [6, 3],
          ],
        },
        legend: null,
      },
      strokeWidth: { field: 'kind', type: 'ordinal', scale: { domain: ['site', 'global'], range: [1.6, 2.8] }, legend: null },
      // Draw the global curve last, on top of the sites'.
      order: { field: 'kind', sort: 'descending' },
    },
  } as unknown as TopLevelSpec;
}

interface Reference {
  label: string;
  value: number;
  colour: string;
  dash: number[];
}

function references(report: RunReport): Reference[] {
  const pct = (v: number) => `${(v * 100).toFixed(1)}%`;
  const refs: Reference[] = [{ label: `global, federated ${pct(report.final.accuracy)}`, value: report.final.accuracy, colour: GLOBAL_COLOUR, dash: [1, 0] }];
  if (report.final.siteAloneMean !== undefined) {
    refs.push({ label: `site-alone mean ${pct(report.final.siteAloneMean)}`, value: report.final.siteAloneMean, colour: '#6b7280', dash: [4, 3] });
  }
  if (report.final.pooled !== undefined) {
    refs.push({ label: `pooled baseline ${pct(report.final.pooled)}`, value: report.final.pooled, colour: '#e45756', dash: [7, 3] });
  }
  return refs;
}

function referenceLayer(refs: Reference[]): object {
  return {
    data: { values: refs.map((r) => ({ ref: r.label, value: r.value })) },
    mark: { type: 'rule', strokeWidth: 2 },
    encoding: {
      x: { field: 'value', type: 'quantitative' },
      color: {
        field: 'ref',
        type: 'nominal',
        title: 'reference',
        scale: { domain: refs.map((r) => r.label), range: refs.map((r) => r.colour) },
        legend: { orient: 'bottom', direction: 'vertical', symbolType: 'stroke', symbolStrokeWidth: 2 },
      },
      strokeDash: {
        field: 'ref',
        type: 'nominal',
        title: 'reference',
        scale: { domain: refs.map((r) => r.label), range: refs.map((r) => r.dash) },
        legend: { orient: 'bottom', direction: 'vertical' },
      },
    },
  };
}

/** (c) Final accuracy per site, site-alone beside it when run, global and pooled as rules. */
export function finalAccuracySpec(report: RunReport): TopLevelSpec {
  const sites = siteOrder(report).filter((s) => report.final.perSite[s] !== undefined);
  const siteAlone = report.final.siteAlone;
  const refs = references(report);
  const accuracyAxis = { format: '.0%', title: 'accuracy (site test split)' };

  if (sites.length > MAX_SITE_BARS) {
    const values = sites.map((s) => ({ site: s, value: report.final.perSite[s]?.accuracy ?? 0 }));
    // Zoom to where the sites and references are, in 1-point bins on 5-point boundaries.
    const all = [...values.map((v) => v.value), ...refs.map((r) => r.value)];
    const lo = Math.max(0, Math.floor(Math.min(...all) * 20) / 20);
    const hi = Math.min(1, Math.max(lo + 0.05, Math.ceil(Math.max(...all) * 20) / 20));
    return {
      title: `Final accuracy: distribution over ${sites.length} sites`,
      width: FULL_WIDTH,
      height: 240,
      layer: [
        {
          data: { values },
          mark: { type: 'bar', color: '#4c78a8', opacity: 0.85 },
          encoding: {
            x: { field: 'value', type: 'quantitative', bin: { step: 0.01, extent: [lo, hi] }, scale: { domain: [lo, hi] }, axis: accuracyAxis },
            y: { aggregate: 'count', type: 'quantitative', title: 'sites' },
          },
        },
        referenceLayer(refs),
      ],
    } as unknown as TopLevelSpec;
  }

  const series = siteAlone ? ['federated model', 'site alone'] : ['federated model'];
  const bars: { site: string; series: string; value: number }[] = [];
  for (const s of sites) {
    bars.push({ site: s, series: 'federated model', value: report.final.perSite[s]?.accuracy ?? 0 });
    const alone = siteAlone?.[s];
    if (alone !== undefined) bars.push({ site: s, series: 'site alone', value: alone });
  }
  const y = { field: 'site', type: 'nominal', title: null, sort: sites, axis: { labelLimit: 400, labelPadding: 6 } };
  const yOffset = { field: 'series', type: 'nominal', scale: { domain: series, paddingInner: 0.1 } };
  const x = { field: 'value', type: 'quantitative', scale: { domain: [0, 1] }, axis: accuracyAxis };
  return {
    title: 'Final accuracy per site',
    width: FULL_WIDTH - 120,
    height: { step: 15 },
    layer: [
      {
        data: { values: bars },
        layer: [
          {
            mark: { type: 'bar', cornerRadiusEnd: 2 },
            encoding: {
              y,
              yOffset,
              x,
              color: {
                field: 'series',
                type: 'nominal',
                title: 'model',
                scale: { domain: series, range: ['#4c78a8', '#bab0ac'] },
                legend: { orient: 'bottom', direction: 'vertical' },
              },
            },
          },
          // Values inside the bar's start, where the reference rules (near the bar ends) cannot cross them.
          {
            transform: [{ filter: 'datum.value >= 0.15' }],
            mark: { type: 'text', align: 'left', dx: 5, fontSize: 10 },
            encoding: {
              y,
              yOffset,
              x: { datum: 0, type: 'quantitative' },
              text: { field: 'value', type: 'quantitative', format: '.1%' },
              // White reads on the dark federated bars, ink on the light site-alone ones.
              color: { condition: { test: "datum.series === 'site alone'", value: INK }, value: 'white' },
            },
          },
          {
            transform: [{ filter: 'datum.value < 0.15' }],
            mark: { type: 'text', align: 'left', dx: 4, fontSize: 10, color: INK },
            encoding: { y, yOffset, x, text: { field: 'value', type: 'quantitative', format: '.1%' } },
          },
        ],
      },
      referenceLayer(refs),
    ],
    resolve: { scale: { color: 'independent', strokeDash: 'independent' } },
  } as unknown as TopLevelSpec;
}
