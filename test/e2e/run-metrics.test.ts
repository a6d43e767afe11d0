// `consort run --metrics-port`: while the job trains on this machine, /metrics serves the same
// per-job series as the operator (round, phase, accuracy per site, update norms, ...), on
// loopback and without a token; the port closes with the run.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { freePort } from '../../cli/nats/server.ts';
import { runConsort, transcript } from '../helpers/consort-cli.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const EXAMPLE = 'manifests/examples/hospitals.yaml';
const ROUNDS = 12;

const sample = (text: string, series: string): number | undefined => {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
};

describe('consort run --metrics-port', () => {
  const tmp = useTmpDirs();

  it('serves the job metrics while it runs, lets a scraper see how it ended, and stops serving', async () => {
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const run = runConsort(['run', EXAMPLE, '--rounds', String(ROUNDS), '--quiet', '--metrics-port', String(port), '--out', join(tmp(), 'out')]);
    const job = 'namespace="default",federatedjob="hospitals"';
    let seen: string | undefined;
    let last: string | undefined;
    let ended = false;
    void run.then(() => {
      ended = true;
    });
    // A scraper every 100 ms, as Prometheus would every 15 s.
    while (!ended) {
      const text = await fetch(`${base}/metrics`).then(
        (r) => (r.ok ? r.text() : undefined),
        () => undefined,
      );
      if (text !== undefined) last = text;
      // Mid-run: a round done, not all of them.
      const round = text === undefined ? undefined : sample(text, `consort_job_round{${job}}`);
      if (!seen && text && round !== undefined && round >= 1 && round < ROUNDS) {
        seen = text;
        expect((await fetch(`${base}/healthz`)).status).toBe(200);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const result = await run;
    expect(result.code, transcript(result)).toBe(0);
    // Said with --quiet too: with --metrics-port 0 nothing else would tell the port.
    expect(result.stderr).toContain(`metrics on http://127.0.0.1:${port}/metrics while the job runs`);
    expect(seen, 'no scrape caught the job mid-run').toBeDefined();
    const text = seen!;
    expect(sample(text, `consort_job_phase{${job},phase="Running"}`)).toBe(1);
    expect(sample(text, `consort_job_rounds_planned{${job}}`)).toBe(ROUNDS);
    expect(sample(text, `consort_job_sites{${job},state="participating"}`)).toBe(5);
    expect(sample(text, `consort_job_accuracy{${job}}`)).toBeGreaterThan(0.5);
    expect(sample(text, `consort_site_accuracy{${job},site="st-mary"}`)).toBeGreaterThan(0);
    expect(sample(text, `consort_site_update_norm{${job},site="hillcrest"}`)).toBeGreaterThan(0);
    expect(text).toContain('process_resident_memory_bytes');
    // The scraper's last look saw the end (the server used to close in the tick the run finished,
    // and Prometheus kept the job Running).
    expect(sample(last!, `consort_job_phase{${job},phase="Succeeded"}`)).toBe(1);
    expect(sample(last!, `consort_job_round{${job}}`)).toBe(ROUNDS);
    // The run is over: nothing listens any more.
    await expect(fetch(`${base}/metrics`)).rejects.toThrow();
  });

  it('is refused with --nats (the sites and the coordinator are other processes there)', async () => {
    const r = await runConsort(['run', EXAMPLE, '--nats', 'embedded', '--metrics-port', '0']);
    expect(r.code, transcript(r)).toBe(2);
    expect(r.stderr).toContain('--metrics-port');
  });
});
