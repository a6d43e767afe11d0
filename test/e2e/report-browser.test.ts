// report.html as a reader sees it: `consort run` of the hospital example (fewer rounds, with the
// baselines, so every part of the page is there), opened from disk in headless Chromium. It must
// load with no console error, no failed request and no request at all besides itself (it opens
// offline), and its three plots must be laid out with marks and labels in them. A full-page
// screenshot goes to test/artifacts/report.png for a person to look at.
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readJobFile } from '../../cli/job-file.ts';
import { launchChromium, openPage, type PageLoad, reportFigures, screenshot } from '../helpers/browser.ts';
import { REPO_ROOT, runConsort, transcript } from '../helpers/consort-cli.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const EXAMPLE = 'manifests/examples/hospitals.yaml';
const ROUNDS = 8;

describe('report.html in headless Chromium', () => {
  const tmp = useTmpDirs('file');
  const sites = readJobFile(join(REPO_ROOT, EXAMPLE)).spec.sites.map((s) => s.name);
  let browser: Browser;
  let load: PageLoad;

  beforeAll(async () => {
    const out = join(tmp('report-browser'), 'hospitals');
    const [run, b] = await Promise.all([runConsort(['run', EXAMPLE, '--rounds', String(ROUNDS), '--baselines', '--quiet', '--out', out]), launchChromium()]);
    browser = b;
    expect(run.code, transcript(run)).toBe(0);
    load = await openPage(browser, pathToFileURL(join(out, 'report.html')).href);
  }, 180_000);

  afterAll(async () => {
    await browser?.close();
  });

  it('loads offline: no console error, no exception, no request besides the page itself', () => {
    expect(load.consoleErrors).toEqual([]);
    expect(load.pageErrors).toEqual([]);
    expect(load.failedRequests).toEqual([]);
    expect(load.otherRequests).toEqual([]);
  });

  it('shows the job, its headline figures and every site', async () => {
    const { page } = load;
    expect(await page.title()).toBe('hospitals — Consort run report');
    expect(await page.locator('h1').textContent()).toBe('hospitals');
    const cards = await page.locator('.card .label').allTextContents();
    expect(cards).toEqual(expect.arrayContaining(['Final accuracy', 'Final loss', 'vs site alone', 'vs pooled', 'Rounds']));
    const perSite = await page.locator('table.grid:not(.quality) tbody th').allTextContents();
    expect(perSite.sort()).toEqual([...sites].sort());
    expect(await page.locator('table.quality tbody tr').count()).toBe(sites.length);
  });

  it('lays out its three plots, each with marks, axes and labels, within the page width', async () => {
    const figures = await reportFigures(load.page);
    expect(figures).toHaveLength(3);
    expect(figures[0]!.caption).toMatch(/^Global model per round/);
    expect(figures[1]!.caption).toMatch(/^Accuracy of the global model on each site/);
    expect(figures[2]!.caption).toMatch(/^Accuracy of the final global model on each site/);
    for (const f of figures) {
      expect(f.width, f.caption).toBeGreaterThan(300);
      expect(f.height, f.caption).toBeGreaterThan(150);
      expect(f.marks, f.caption).toBeGreaterThan(20);
    }
    const [global, perSite, final] = figures as [(typeof figures)[0], (typeof figures)[0], (typeof figures)[0]];
    expect(global.texts.join(' ')).toMatch(/accuracy/i);
    expect(global.texts.join(' ')).toMatch(/loss/i);
    expect(global.texts).toContain('round');
    // The per-site plots name every site (legend and axis).
    for (const s of sites) {
      expect(perSite.texts, s).toContain(s);
      expect(final.texts, s).toContain(s);
    }
    const overflow = await load.page.$eval('html', (html) => html.scrollWidth - html.clientWidth);
    expect(overflow).toBeLessThanOrEqual(0);
  });

  it('saves a full-page screenshot to test/artifacts/report.png', async () => {
    const path = await screenshot(load.page, 'report.png');
    expect(statSync(path).size).toBeGreaterThan(50_000);
  });
});
