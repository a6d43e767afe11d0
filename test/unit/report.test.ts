import { summaryTable } from '../../cli/run/command.ts';
import { majorityClass } from '../../core/report/no-better.ts';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { escapeHtml, escapeMarkdown, formatDuration, formatNumber, formatPercent, formatPoints } from '../../core/report/format.ts';
import { renderReportHtml } from '../../core/report/html.ts';
import { renderModelCard } from '../../core/report/model-card.ts';
import { RunReport } from '../../core/report/run-report.ts';
import { fiveHospitals, MARKUP_REASON, manySites, threeSitesPlain } from '../fixtures/report/run-reports.ts';

const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts');
const CARD_FILES = { weightsFile: 'weights.bin', modelFiles: ['model.json', 'weights.bin'] };

function count(haystack: string, needle: string): number {
  return haystack.split(needle).length - 1;
}

/** Every URL in the document once the SVG namespace declarations are taken out. */
function externalUrls(html: string): string[] {
  const withoutXmlns = html.replace(/\sxmlns(?::\w+)?="[^"]*"/g, '');
  return withoutXmlns.match(/(?:https?:)?\/\/[a-z0-9.-]+\.[a-z]{2,}[^\s"'<>)]*/gi) ?? [];
}

function expectSelfContained(html: string): void {
  expect(html).not.toMatch(/<script/i);
  expect(html).not.toMatch(/<link\b/i);
  expect(html).not.toMatch(/@import/i);
  expect(html).not.toMatch(/\b(?:src|href)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:|\/\/)/i);
  expect(html).not.toMatch(/url\(\s*["']?(?!#)/i);
  expect(externalUrls(html)).toEqual([]);
}

describe('report formatting', () => {
  it('escapes HTML and markdown', () => {
    expect(escapeHtml(`<a href="x">'&'</a>`)).toBe('&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;');
    expect(escapeMarkdown('a|b <i>*c*</i>')).toBe('a\\|b \\<i\\>\\*c\\*\\</i\\>');
    // A lone CR is a line break to CommonMark: what followed it was read as raw HTML.
    expect(escapeMarkdown('x\r<img src=x onerror=alert(1)>')).toBe('x \\<img src=x onerror=alert(1)\\>');
    expect(escapeMarkdown('a\r\nb\u2028c\td')).toBe('a b c d');
  });

  it('keeps a column name with a lone CR out of a code span in the card (its HTML was live)', () => {
    const r = threeSitesPlain();
    r.model = { ...r.model, inputShape: [1], features: ['x\r<img src=x onerror=alert(1)>'], inputScaler: { mean: [0], std: [1] } };
    const card = renderModelCard(r, CARD_FILES);
    expect(card).toContain('x \\<img src=x onerror=alert(1)\\>');
    expect(card).not.toMatch(/(^|[^\\])<img/m);
    expect(card).not.toContain('\r');
  });

  it('formats fractions, differences, losses and durations', () => {
    expect(formatPercent(0.8734)).toBe('87.3%');
    expect(formatPercent(undefined)).toBe('—');
    expect(formatPoints(0.021)).toBe('+2.1 pp');
    expect(formatPoints(-0.015)).toBe('−1.5 pp');
    expect(formatNumber(0.26)).toBe('0.2600');
    expect(formatDuration(850)).toBe('850 ms');
    expect(formatDuration(192_000)).toBe('3 min 12 s');
  });
});

describe('report fixtures', () => {
  it('are valid report.json documents', () => {
    for (const report of [fiveHospitals(), threeSitesPlain(), manySites(30)]) {
      expect(RunReport.parse(JSON.parse(JSON.stringify(report)))).toEqual(report);
    }
  });
});

describe('renderReportHtml', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('renders the five-hospital run into one self-contained page with three plots', async () => {
    const warn = vi.spyOn(console, 'warn');
    const report = RunReport.parse(fiveHospitals());
    const html = await renderReportHtml(report);
    // vega-lite warns on specs it had to second-guess.
    expect(warn).not.toHaveBeenCalled();
    await mkdir(ARTIFACTS, { recursive: true });
    await writeFile(join(ARTIFACTS, 'report-fixture.html'), html);

    expect(html.startsWith('<!doctype html>')).toBe(true);
    expect(count(html, '<svg')).toBeGreaterThanOrEqual(3);
    expectSelfContained(html);
    // No empty plots: each has its marks.
    expect(count(html, 'role-mark')).toBeGreaterThan(10);
    for (const s of report.sites) expect(html).toContain(s.site);
    expect(html).toContain(report.final.modelSha256);
    expect(html).toContain('Pooled baseline');
    expect(html).toContain('Site-alone mean');
    expect(html).toContain('wasm');
    // Site names reach the SVG legends and axes as text.
    expect(html).toMatch(/<text[^>]*>st-mary<\/text>/);
  });

  it('escapes text that came from the job', async () => {
    const html = await renderReportHtml(fiveHospitals());
    expect(html).not.toContain(MARKUP_REASON);
    expect(html).toContain(escapeHtml(MARKUP_REASON));
    expect(html).toContain('non-numeric value in &lt;b&gt;lactate&lt;/b&gt;');

    const hostile = fiveHospitals();
    const evil = '<img src=x onerror=alert(1)>';
    const old = 'lakeview';
    hostile.sites = hostile.sites.map((s) => (s.site === old ? { ...s, site: evil } : s));
    for (const r of hostile.rounds) r.sites = r.sites.map((m) => (m.site === old ? { ...m, site: evil } : m));
    const { [old]: lake, ...rest } = hostile.final.perSite;
    hostile.final.perSite = { ...rest, [evil]: lake! };
    hostile.final.siteAlone = { ...hostile.final.siteAlone, [evil]: 0.7 };
    hostile.job = 'job"><script>x</script>';
    hostile.model.classes = ['no sepsis', 'sepsis & "shock"'];
    const out = await renderReportHtml(RunReport.parse(hostile));
    expect(out).not.toContain('<img');
    expect(out).not.toContain('<script');
    expect(out).toContain('&lt;img src=x onerror=alert(1)&gt;');
    expect(out).toContain('sepsis &amp; &quot;shock&quot;');
  });

  it('renders a run without baselines and without AUC', async () => {
    const report = RunReport.parse(threeSitesPlain());
    const html = await renderReportHtml(report);
    expect(count(html, '<svg')).toBe(3);
    expectSelfContained(html);
    expect(html).not.toContain('Global AUC');
    expect(html).not.toContain('vs pooled');
    expect(html).toContain('run with --baselines');
    expect(html).toContain('patience');
  });

  it('switches to a band and a histogram for many sites', async () => {
    for (const n of [30, 80]) {
      const html = await renderReportHtml(RunReport.parse(manySites(n)));
      expect(count(html, '<svg')).toBe(3);
      expectSelfContained(html);
      expect(html).toContain(`range over ${n} sites`);
    }
  });

  it('renders the same report to the same bytes', async () => {
    const a = await renderReportHtml(fiveHospitals());
    const b = await renderReportHtml(fiveHospitals());
    expect(b).toBe(a);
    // Each plot owns its clip-path ids: no id is defined twice in the document.
    const ids = [...a.matchAll(/\sid="([^"]+)"/g)].map((m) => m[1]);
    expect(new Set(ids).size).toBe(ids.length);
  });
});

describe('renderModelCard', () => {
  it('describes the model, the sites and their numbers', async () => {
    const report = RunReport.parse(fiveHospitals());
    const card = renderModelCard(report, CARD_FILES);
    await mkdir(ARTIFACTS, { recursive: true });
    await writeFile(join(ARTIFACTS, 'report-fixture.md'), card);

    expect(card).toContain(report.final.modelSha256);
    expect(card).toContain('`weights.bin`');
    expect(card).toContain('`model.json`');
    for (const { site, quality } of report.sites) {
      const row = card.split('\n').find((l) => l.startsWith(`| ${escapeMarkdown(site)} | ${quality.trainSamples} | ${quality.testSamples} |`));
      expect(row, site).toBeDefined();
    }
    expect(card).toContain('stopped by **rounds**');
    expect(card).toContain('**Seed:** 42');
    expect(card).toContain('**Backend:** wasm');
    expect(card).toContain('[12]');
    expect(card).toContain('**Pooled:**');
    // Data-quality notes name the site with rejected rows, markup escaped.
    expect(card).toMatch(/st-mary.*5 rows rejected/);
    expect(card).toContain('non-numeric value in \\<b\\>lactate\\</b\\>');
    expect(card).not.toContain('<b>');
    expect(card).toContain('lakeview');
    expect(card).toMatch(/Intended use/);
  });

  it('says when baselines were not run and leaves out AUC', () => {
    const card = renderModelCard(RunReport.parse(threeSitesPlain()), CARD_FILES);
    expect(card).toContain('Not run');
    expect(card).not.toContain('AUC');
    expect(card).toContain('No site rejected rows or had missing values.');
    expect(card).toContain('stopped by **patience**');
  });

  it('says how images become inputs, and how tabular inputs are scaled and which export takes raw values', () => {
    const images = threeSitesPlain();
    images.model = { ...images.model, inputShape: [16, 24, 1] };
    const card = renderModelCard(images, CARD_FILES);
    expect(card).toContain('- **Images:** 16 × 24 (height × width), grayscale');
    expect(card).toContain('values divided by 255 into [0, 1]');
    expect(renderModelCard(threeSitesPlain(), CARD_FILES)).not.toContain('**Images:**');

    const tabular = threeSitesPlain();
    tabular.model = { ...tabular.model, inputShape: [2], features: ['age', 'hr'], inputScaler: { mean: [50, 80], std: [10, 12] }, tfjsTakesRawInputs: true };
    const scaled = renderModelCard(tabular, CARD_FILES);
    expect(scaled).toContain('  | `hr` | 80 | 12 |');
    expect(scaled).toContain('`tfjs/model.json` takes the raw values');
    expect(scaled).toContain("each feature's mean and variance over a site's training rows");
  });

  it('says that a pre-trained model took its inputs unscaled, and what a missing value became, in the card and the page', async () => {
    const pretrained = threeSitesPlain();
    pretrained.model = { ...pretrained.model, inputShape: [2], features: ['age', 'hr'], initialWeights: 'model file' };
    const site = pretrained.sites[0]!;
    site.quality = { ...site.quality, missing: { hr: 4 } };
    const card = renderModelCard(pretrained, CARD_FILES);
    expect(card).toContain("given to the model as they are, unscaled (the model file's weights were trained on raw values)");
    expect(card).toContain("missing values filled with the column's mean over this site's training rows (hr: 4)");
    expect(card).not.toMatch(/scales them|the scaling's mean/);
    const html = await renderReportHtml(RunReport.parse(pretrained));
    expect(html).toContain('The inputs were not scaled; a missing value took the column\u2019s mean over that site\u2019s training rows');
    const scaled = threeSitesPlain();
    scaled.model = { ...scaled.model, inputShape: [2], features: ['age', 'hr'], inputScaler: { mean: [50, 80], std: [10, 12] } };
    scaled.sites[0]!.quality = { ...scaled.sites[0]!.quality, missing: { hr: 4 } };
    expect(renderModelCard(scaled, CARD_FILES)).toContain("missing values filled with the federation's mean (hr: 4)");
    expect(await renderReportHtml(RunReport.parse(scaled))).toContain('Missing values took the federation\u2019s mean');
  });

  it("gives the strategy's parameters and the local training", () => {
    const card = renderModelCard(fiveHospitals(), CARD_FILES);
    expect(card).toContain('- **Strategy:** fedprox (mu 0.01, serverLearningRate 1)');
    expect(card).toContain('- **Local training:** 2 epochs a round, batches of 32, sgd at learning rate 0.1; updates sent uncompressed, aggregated sync');
  });

  it('gives the architecture, the evaluation and the stopping rule the job asked for, where the report has them', async () => {
    const r = fiveHospitals();
    r.settings = {
      ...r.settings!,
      model: { type: 'mlp', hidden: [16, 8], activation: 'relu', dropout: 0.3 },
      rounds: 30,
      evaluation: { every: 3, fraction: 1, trainLoss: false },
      stopping: { target: { metric: 'loss', value: 0.45 }, patience: 1 },
    };
    r.final = { ...r.final, stoppedBy: 'patience' };
    const card = renderModelCard(RunReport.parse(r), CARD_FILES);
    // Brackets escaped for Markdown.
    expect(card).toMatch(/- \*\*Model:\*\* mlp \(hidden layers \\\[16, 8\\\], relu, dropout 0\.3\), [\d,]+ parameters/);
    expect(card).toContain('stopped by **patience**: stopped early: loss did not improve in 1 evaluation (patience), of 30 rounds asked for');
    expect(card).toContain('- **Evaluation:** every 3 rounds (and the last), by every site');
    r.final = { ...r.final, stoppedBy: 'target' };
    expect(renderModelCard(RunReport.parse(r), CARD_FILES)).toContain('stopped by **target**: reached the target: loss <= 0.45');
    expect(await renderReportHtml(RunReport.parse(r))).toContain('reached the target: loss &lt;= 0.45');
    // An earlier report, without them, reads as before.
    const before = fiveHospitals();
    expect(renderModelCard(RunReport.parse(before), CARD_FILES)).toMatch(/- \*\*Model:\*\* \w+, [\d,]+ parameters/);
  });

  it('names the sites that did not score the final model, in the summary and the card', () => {
    const r = threeSitesPlain();
    r.final = { ...r.final, missing: [{ site: 'far-away', reason: 'no answer' }] };
    expect(RunReport.parse(r).final.missing).toEqual([{ site: 'far-away', reason: 'no answer' }]);
    expect(summaryTable(r)).toContain('warning: site far-away did not score the final model (no answer): the figures above leave it out');
    expect(renderModelCard(r, CARD_FILES)).toContain('**Not scored:** far-away (no answer): these figures leave it out.');
    expect(summaryTable(threeSitesPlain())).not.toContain('did not score');
  });

  it('names, in the card and the page, a site that missed rounds and one that did not score the final model (the page said neither)', async () => {
    const r = threeSitesPlain();
    const [first, ...rest] = r.sites.map((s) => s.site);
    expect(r.rounds.length).toBeGreaterThan(1);
    // The first site's update is in round 1 only.
    r.rounds = r.rounds.map((round, i) => ({ ...round, participants: i === 0 ? [first!, ...rest] : [...rest] }));
    r.final = { ...r.final, missing: [{ site: first!, reason: 'no answer' }] };
    const html = await renderReportHtml(r);
    const card = renderModelCard(r, CARD_FILES);
    const took = `${first} took part in 1 of ${r.rounds.length} rounds; the other sites in every round`;
    expect(card).toContain(`- **Rounds taken part in:** ${took}`);
    expect(html).toContain(`Rounds: ${took}.`);
    expect(html).toContain(`<strong>Not scored:</strong> ${first} (no answer): the figures above leave it out.`);
    const plain = threeSitesPlain();
    expect(renderModelCard(plain, CARD_FILES)).not.toContain('Rounds taken part in');
    expect(await renderReportHtml(plain)).not.toMatch(/Rounds: |Not scored/);
    // A late update (site@rN) counts toward its site, once a round.
    r.rounds = r.rounds.map((round) => ({ ...round, participants: [...rest, `${first}@r1`] }));
    expect(renderModelCard(r, CARD_FILES)).not.toContain('Rounds taken part in');
  });

  it('lists the sites in the summary in the job order, as the card and the page do', () => {
    const r = threeSitesPlain();
    const order = r.sites.map((s) => s.site);
    // perSite as the coordinator writes it: sorted by name.
    r.final = { ...r.final, perSite: Object.fromEntries(Object.entries(r.final.perSite).sort(([a], [b]) => (a < b ? 1 : -1))) };
    const rows = summaryTable(r)
      .split('\n')
      .map((l) => l.split(' ')[0]!)
      .filter((name) => order.includes(name));
    expect(rows).toEqual(order);
  });

  it("measures the majority answer on the test examples: the training splits' majority class, its share of the test splits", () => {
    const r = threeSitesPlain();
    // Train: 120 no, 80 yes; test: 55 no, 35 yes (61.1%), all rows 175 / 290 (60.3%).
    const counts = [
      { labels: { no: 100, yes: 60 }, trainLabels: { no: 70, yes: 40 } },
      { labels: { no: 45, yes: 35 }, trainLabels: { no: 30, yes: 25 } },
      { labels: { no: 30, yes: 20 }, trainLabels: { no: 20, yes: 15 } },
    ];
    r.sites = r.sites.map((s, i) => ({ ...s, quality: { ...s.quality, ...counts[i]! } }));
    expect(majorityClass(r)).toEqual({ label: 'no', share: 55 / 90, of: 'test' });
    // A test split whose majority differs: a model that learned the balance answers the train majority.
    r.sites[0]!.quality.labels = { no: 70 + 5, yes: 40 + 40 };
    expect(majorityClass(r)).toEqual({ label: 'no', share: 30 / 85, of: 'test' });
    // An earlier report, without train counts: every example.
    const old = threeSitesPlain();
    old.sites = old.sites.map((s, i) => ({ ...s, quality: { ...s.quality, labels: counts[i]!.labels } }));
    expect(majorityClass(old)).toEqual({ label: 'no', share: 175 / 290, of: 'all' });
    r.final = { ...r.final, accuracy: 0.3, auc: 0.7 };
    expect(summaryTable(r)).toContain('no better than always answering "no" (35.3% of the sites\' test examples)');
  });

  it('warns, in the summary, the card and the page, when the model does no better than always answering the most common class', async () => {
    const fine = threeSitesPlain();
    expect(summaryTable(fine)).not.toContain('warning');
    expect(renderModelCard(fine, CARD_FILES)).not.toContain('**Warning:**');
    const m = majorityClass(fine)!;
    const stuck = threeSitesPlain();
    stuck.final = { ...stuck.final, accuracy: m.share };
    const line = summaryTable(stuck)
      .split('\n')
      .find((l) => l.startsWith('warning: '));
    expect(line).toBe(
      `warning: the federated model scores ${(m.share * 100).toFixed(1)}%, no better than always answering ${JSON.stringify(m.label)} (${(m.share * 100).toFixed(1)}% of the sites' examples): it has not learned the task (check the learning rate, the labels and the classes)`,
    );
    expect(renderModelCard(stuck, CARD_FILES)).toContain('**Warning:** the federated model scores');
    // A constant answer on a test split more lopsided than the data: its accuracy beats the share, its AUC is 0.5.
    const constant = threeSitesPlain();
    constant.final = { ...constant.final, accuracy: Math.min(1, m.share + 0.005), auc: 0.5 };
    expect(summaryTable(constant)).toContain("warning: the federated model's AUC is 0.500: it ranks the examples no better than chance");
    expect(await renderReportHtml(stuck)).toContain('<p class="warning"><strong>Warning:</strong> the federated model scores');
    expect(await renderReportHtml(fine)).not.toContain('class="warning"');
    // The majority is counted over every site's examples.
    const labels = fine.sites.flatMap((s) => Object.entries(s.quality.labels));
    const total = labels.reduce((n, [, c]) => n + c, 0);
    const ofMajority = labels.filter(([l]) => l === m.label).reduce((n, [, c]) => n + c, 0);
    expect(m.share).toBeCloseTo(ofMajority / total, 12);
    expect(m.share).toBeGreaterThanOrEqual(0.5);
  });

  it('keeps table cells whole when a site name carries a pipe', () => {
    const report = threeSitesPlain();
    const pipe = 'a|b';
    report.sites[0] = { ...report.sites[0]!, site: pipe };
    report.final.perSite = { [pipe]: report.final.perSite.alpha!, beta: report.final.perSite.beta!, gamma: report.final.perSite.gamma! };
    const card = renderModelCard(report, CARD_FILES);
    const row = card.split('\n').find((l) => l.startsWith('| a\\|b |'));
    expect(row).toBeDefined();
    expect(row!.replace(/\\\|/g, '').split('|').length).toBe(7);
  });
});
