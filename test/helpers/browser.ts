// A headless Chromium for tests: Debian's package (scripts/chromium.sh installs it once) driven
// by playwright-core, which downloads nothing. `openPage` loads a URL and records what a reader's
// browser would complain about: console errors, uncaught exceptions, failed requests, and every
// request the page made besides itself (the report must load nothing).
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';

const REPO_ROOT = resolve(import.meta.dirname, '../..');
export const ARTIFACTS = join(REPO_ROOT, 'test/artifacts');

let executable: string | undefined;
/** The Chromium binary (installed by scripts/chromium.sh on first use). */
export function chromiumPath(): string {
  executable ??= execFileSync('bash', [join(REPO_ROOT, 'scripts/chromium.sh')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  return executable;
}

export async function launchChromium(): Promise<Browser> {
  return await chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    // Tests may run as root (containers), where Chromium's sandbox cannot start.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    timeout: 60_000,
  });
}

export interface PageLoad {
  page: Page;
  status: number | undefined;
  consoleErrors: string[];
  pageErrors: string[];
  failedRequests: string[];
  /** Every request but the page's own. */
  otherRequests: string[];
}

export async function openPage(
  browser: Browser,
  url: string,
  o: { headers?: Record<string, string>; viewport?: { width: number; height: number } } = {},
): Promise<PageLoad> {
  const context = await browser.newContext({ viewport: o.viewport ?? { width: 1280, height: 900 }, ...(o.headers ? { extraHTTPHeaders: o.headers } : {}) });
  const page = await context.newPage();
  const load: Omit<PageLoad, 'status'> = { page, consoleErrors: [], pageErrors: [], failedRequests: [], otherRequests: [] };
  page.on('console', (m) => {
    if (m.type() === 'error') load.consoleErrors.push(m.text());
  });
  page.on('pageerror', (e) => load.pageErrors.push(e.message));
  page.on('requestfailed', (r) => load.failedRequests.push(`${r.url()}: ${r.failure()?.errorText}`));
  page.on('request', (r) => {
    if (r.url() !== url) load.otherRequests.push(r.url());
  });
  const res = await page.goto(url, { waitUntil: 'load', timeout: 60_000 });
  return { ...load, status: res?.status() };
}

export interface SvgFigure {
  /** The figure's caption. */
  caption: string;
  width: number;
  height: number;
  /** Drawn marks: paths, rects, lines, circles. */
  marks: number;
  texts: string[];
}

/** The report's plots as the browser laid them out. */
export async function reportFigures(page: Page): Promise<SvgFigure[]> {
  return await page.$$eval('figure svg', (svgs) =>
    svgs.map((svg) => {
      const box = svg.getBoundingClientRect();
      return {
        caption: svg.closest('figure')?.querySelector('figcaption')?.textContent ?? '',
        width: box.width,
        height: box.height,
        marks: svg.querySelectorAll('path, rect, line, circle').length,
        texts: [...svg.querySelectorAll('text')].map((t) => t.textContent ?? '').filter((t) => t.trim() !== ''),
      };
    }),
  );
}

/** A full-page PNG under test/artifacts/ (git-ignored); returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  const path = join(ARTIFACTS, name);
  mkdirSync(dirname(path), { recursive: true });
  await page.screenshot({ path, fullPage: true });
  return path;
}
