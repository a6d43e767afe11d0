// "Either side may start first", the NATS server included: a site started before its server (a
// hospital's machine up before the consortium's server, a server restarting) waits for it and
// says so, then joins the job (it used to exit at once, connection refused). `consort run --nats
// URL`, whose processes would now wait the same way, is told at once that no server is there.
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { natsAuthFor, writeNatsConfigFiles } from '../../cli/nats/config.ts';
import { freePort, NatsServer } from '../../cli/nats/server.ts';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { CONSORT_BIN, runConsort, transcript, coordinatorArgs } from '../helpers/consort-cli.ts';
import { hospitalSpec, jobManifest, writeJob } from '../helpers/jobs.ts';
import { useCleanup } from '../helpers/nats-job.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const cleanup = useCleanup();
const tmp = useTmpDirs();

describe('a site started before its NATS server', () => {
  it('says it waits for the server, then joins and finishes the job', async () => {
    const dir = tmp('start-order');
    const spec = hospitalSpec(
      [
        { name: 'north', samples: 60 },
        { name: 'south', samples: 60 },
      ],
      { rounds: 1 },
    );
    const jobPath = writeJob(dir, spec, { name: 'start-order' });
    const auth = natsAuthFor(FederatedJob.parse(jobManifest('start-order', spec)));
    writeNatsConfigFiles(join(dir, 'nats'), auth);
    const port = await freePort();
    const url = `nats://127.0.0.1:${port}`;
    const siteArgs = (name: string) => ['site', '--job', jobPath, '--site', name, '--nats', url, '--creds', join(dir, 'nats/sites', `${name}.nk`)];

    const early: ChildProcess = spawn(process.execPath, [CONSORT_BIN, ...siteArgs('north')], {
      env: { ...process.env, TF_CPP_MIN_LOG_LEVEL: '2' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    cleanup.push(async () => {
      if (early.exitCode === null && early.signalCode === null) early.kill('SIGKILL');
    });
    let stderr = '';
    const exited = new Promise<number | null>((done) => early.on('close', (code) => done(code)));
    await new Promise<void>((seen, fail) => {
      early.stderr!.setEncoding('utf8').on('data', (s: string) => {
        stderr += s;
        if (stderr.includes('no NATS server answers')) seen();
      });
      exited.then(() => fail(new Error(`the site exited instead of waiting:\n${stderr}`)));
    });
    expect(stderr).toContain(`no NATS server answers at ${url} (`);
    expect(stderr).toContain('trying again every second (check --nats; Ctrl-C stops)');

    // The server comes up where the site was told; the rest of the job starts.
    const server = await NatsServer.start({ config: auth.config, port });
    cleanup.push(() => server.stop());
    const [coordinator, south] = await Promise.all([
      runConsort(coordinatorArgs(jobPath, url, dir), { timeoutMs: 90_000 }),
      runConsort(siteArgs('south'), { timeoutMs: 90_000 }),
    ]);
    expect(coordinator.code, transcript(coordinator)).toBe(0);
    expect(south.code, transcript(south)).toBe(0);
    expect(await exited, stderr).toBe(0);
    expect(stderr).toContain('site north: done (1 updates');
  }, 120_000);

  it('consort run --nats URL with no server there is refused at once, naming the URL', async () => {
    const dir = tmp('start-order-run');
    const jobPath = writeJob(dir, hospitalSpec(undefined, { rounds: 1, classes: ['no', 'yes'] }));
    const url = `nats://127.0.0.1:${await freePort()}`;
    const r = await runConsort(['run', jobPath, '--nats', url, '--quiet', '--out', join(dir, 'out')], { timeoutMs: 30_000 });
    expect(r.code, transcript(r)).toBe(1);
    expect(r.stderr).toBe(`consort: --nats ${url}: no NATS server answers there (ECONNREFUSED) [CONSORT_CLI_NATS]\n`);
  }, 60_000);
});
