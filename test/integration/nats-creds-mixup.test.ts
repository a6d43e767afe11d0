// A credentials file of another user logs in: only the server's refusals of what that user may
// not do tell. `consort site` given another site's file, and `consort coordinator` given a site's,
// stop at the first refusal with CONSORT_CLI_CREDENTIALS (exit 2) naming --creds, where they used
// to wait silently (the site exited 0 when the job ended without it).
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { natsAuthFor, writeNatsConfigFiles } from '../../cli/nats/config.ts';
import { NatsServer } from '../../cli/nats/server.ts';
import { FederatedJob } from '../../core/job/federated-job.ts';
import type { Msg } from '@nats-io/transport-node';
import { connectAs, watchPermissions } from '../../cli/nats/connect.ts';
import { COORDINATOR_USER } from '../../core/protocol/permissions.ts';
import { jobKey, subjects } from '../../core/protocol/subjects.ts';
import { CONSORT_BIN, runConsort, transcript, coordinatorArgs } from '../helpers/consort-cli.ts';
import { hospitalSpec, jobManifest, writeJob } from '../helpers/jobs.ts';
import { until } from '../helpers/federation.ts';
import { useCleanup } from '../helpers/nats-job.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const cleanup = useCleanup();
const tmp = useTmpDirs();

describe('a credentials file of another user', () => {
  it('stops consort site and consort coordinator with CONSORT_CLI_CREDENTIALS, naming --creds', async () => {
    const dir = tmp('creds-mixup');
    const manifest = jobManifest(
      'creds-mixup',
      hospitalSpec(
        [{ name: 'north' }, { name: 'south' }].map((s) => ({ ...s, samples: 60 })),
        { rounds: 2 },
      ),
    );
    const jobPath = writeJob(dir, manifest.spec as Record<string, unknown>, { name: 'creds-mixup' });
    const auth = natsAuthFor(FederatedJob.parse(manifest));
    const server = await NatsServer.start({ config: auth.config });
    cleanup.push(() => server.stop());
    writeNatsConfigFiles(join(dir, 'nats'), auth);

    const [site, coordinator] = await Promise.all([
      runConsort(['site', '--job', jobPath, '--site', 'north', '--nats', server.url, '--creds', join(dir, 'nats/sites/south.nk'), '--quiet'], {
        timeoutMs: 60_000,
      }),
      runConsort(coordinatorArgs(jobPath, server.url, dir, 'sites/north.nk'), { timeoutMs: 60_000 }),
    ]);
    for (const r of [site, coordinator]) {
      expect(r.code, transcript(r)).toBe(2);
      expect(r.stderr).toContain('[CONSORT_CLI_CREDENTIALS]');
    }
    expect(site.stderr, transcript(site)).toMatch(
      /^consort: --creds: the server refused this user's (publish|subscription) on \S+: the file holds another user's key/m,
    );
    // The coordinator knows every key from keys.json: it says whose file it was given, before connecting.
    expect(coordinator.stderr, transcript(coordinator)).toContain(
      `consort: --creds: ${join(dir, 'nats/sites/north.nk')} holds site "north"'s key, not the coordinator's: use coordinator.nk`,
    );

    // keys.json of another nats-config run: every site would look forged; refused before starting.
    const other = natsAuthFor(FederatedJob.parse(manifest));
    writeNatsConfigFiles(join(dir, 'other'), other);
    const mixed = await runConsort(
      [
        'coordinator',
        jobPath,
        '--nats',
        server.url,
        '--creds',
        join(dir, 'nats/coordinator.nk'),
        '--keys',
        join(dir, 'other/keys.json'),
        '--out',
        join(dir, 'out2'),
        '--quiet',
      ],
      { timeoutMs: 60_000 },
    );
    expect(mixed.code, transcript(mixed)).toBe(2);
    expect(mixed.stderr).toMatch(/come from different nats-config runs .* use the keys.json written beside coordinator.nk \[CONSORT_CLI_CREDENTIALS\]/);
  }, 90_000);
});

describe('a reply the server refuses because it restarted since the request', () => {
  // Seen in CI: a site's hello taken just before a nats-server restart, answered just after it;
  // the server no longer knew the request (allow_responses), refused the reply, and the
  // coordinator stopped with CONSORT_CLI_CREDENTIALS as if its file were another user's.
  it('is logged once and stops nothing; a publish the user may not make still stops it', async () => {
    const manifest = FederatedJob.parse(jobManifest('reply-refused', hospitalSpec([{ name: 'north', samples: 60 }], { rounds: 1 })));
    const auth = natsAuthFor(manifest);
    const server = await NatsServer.start({ config: auth.config });
    cleanup.push(() => server.stop());
    const subj = subjects(jobKey(manifest.metadata));
    const coordinator = await connectAs(server.url, auth.coordinator.seed, COORDINATOR_USER);
    const site = await connectAs(server.url, auth.sites.north!.seed, 'north');
    cleanup.push(() => Promise.all([coordinator.close(), site.close()]).then(() => {}));
    const stop = new AbortController();
    const lines: string[] = [];
    const watch = watchPermissions(coordinator, stop, (l) => lines.push(l));

    let taken: (m: Msg) => void = () => {};
    const hello = new Promise<Msg>((done) => {
      taken = done;
    });
    coordinator.subscribe(subj.hello('north'), { callback: (_err, m) => taken(m) });
    await coordinator.flush();
    // Its answer never comes (refused): the request times out, as a site's hello does before it asks again.
    void site.request(subj.hello('north'), new TextEncoder().encode('{}'), { timeout: 5000 }).catch(() => {});
    const msg = await hello;
    await server.restart({ signal: 'SIGKILL', downMs: 100 });
    // Both back.
    for (const nc of [coordinator, site])
      await until(
        async () =>
          nc.flush().then(
            () => true,
            () => false,
          ),
        'a reconnection',
        20_000,
      );
    msg.respond(new TextEncoder().encode('late'));
    await until(() => lines.length > 0 || stop.signal.aborted, 'the refused reply to be logged', 10_000);
    expect(watch.violation()).toBeUndefined();
    expect(stop.signal.aborted).toBe(false);
    expect(lines).toEqual([expect.stringMatching(/^a reply on _INBOX_north\.\S+ was refused by the server \(it no longer knew the request/)]);

    // A subject the coordinator may not publish on (another job's): another user's key, stopped.
    coordinator.publish('consort.hello.another-job.north', new Uint8Array(0));
    await until(() => stop.signal.aborted, 'the abort', 10_000);
    expect(watch.violation()?.message).toMatch(
      /the server refused this user's publish on consort\.hello\.another-job\.north: the file holds another user's key/,
    );
  }, 60_000);
});

describe('consort site stopped by Ctrl-C before its job ended', () => {
  it('says so and exits 130, not "done" and 0', async () => {
    const dir = tmp('site-sigint');
    const manifest = jobManifest('site-sigint', hospitalSpec([{ name: 'north', samples: 60 }], { rounds: 2 }));
    const jobPath = writeJob(dir, manifest.spec as Record<string, unknown>, { name: 'site-sigint' });
    const auth = natsAuthFor(FederatedJob.parse(manifest));
    const server = await NatsServer.start({ config: auth.config });
    cleanup.push(() => server.stop());
    writeNatsConfigFiles(join(dir, 'nats'), auth);
    const site = spawn(
      process.execPath,
      [CONSORT_BIN, 'site', '--job', jobPath, '--site', 'north', '--nats', server.url, '--creds', join(dir, 'nats/sites/north.nk')],
      {
        env: { ...process.env, TF_CPP_MIN_LOG_LEVEL: '2' },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    cleanup.push(async () => {
      if (site.exitCode === null && site.signalCode === null) site.kill('SIGKILL');
    });
    let stderr = '';
    const exited = new Promise<number | null>((done) => site.on('close', (code) => done(code)));
    // Its data loaded and no coordinator there: it says hello until stopped.
    await new Promise<void>((ready) =>
      site.stderr!.setEncoding('utf8').on('data', (s: string) => {
        stderr += s;
        if (stderr.includes('train /')) ready();
      }),
    );
    site.kill('SIGINT');
    expect(await exited, stderr).toBe(130);
    expect(stderr).toContain('site north: stopped by SIGINT before the job ended (0 updates, 0 evaluations, 0 refused)');
  }, 60_000);
});
