// `consort nats-config` as a user runs it: the files it writes (seeds readable by their owner
// only), a configuration nats-server accepts and that admits the written seeds (a job's own, and
// with --cluster the shared server's, its operator user and the users minted with account.nk),
// and exit status 2 with the flag named for bad input.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fromSeed } from '@nats-io/nkeys';
import { describe, expect, it } from 'vitest';
import { CLUSTER_CONFIG_FILES, natsConfigFiles, TrustedKeys } from '../../cli/nats/config.ts';
import { connectAs } from '../../cli/nats/connect.ts';
import { COORDINATOR_USER, OPERATOR_USER } from '../../core/protocol/permissions.ts';
import { subjects } from '../../core/protocol/subjects.ts';
import { assignmentSubject } from '../../core/protocol/assignment.ts';
import { violation, watchedClient } from '../helpers/nats-clients.ts';
import { mintJobCreds, parseAccountSigner } from '../../operator/nats/trust.ts';
import { runConsort, transcript } from '../helpers/consort-cli.ts';
import { hospitalSpec, writeJob } from '../helpers/jobs.ts';
import { NatsServer, natsServerBinary } from '../helpers/nats-server.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const tmp = useTmpDirs('file');
const SITES = ['north', 'south', 'east'];

// Concurrent: most of each test is the CLI's start-up.
describe.concurrent('consort nats-config', () => {
  it('writes the server configuration, the seeds (mode 0600) and keys.json, which work together', async () => {
    const dir = tmp('nats-config');
    const job = writeJob(dir, hospitalSpec(), { name: 'clinic' });
    const out = join(dir, 'nats');
    const r = await runConsort(['nats-config', job, '--out', out, '--listen', '127.0.0.1:14222']);
    expect(r.code, transcript(r)).toBe(0);
    expect(r.stderr).toBe('');
    for (const f of natsConfigFiles(SITES)) {
      expect(r.stdout, f).toContain(f);
      const mode = statSync(join(out, f)).mode & 0o777;
      if (f.endsWith('.nk')) expect(mode, f).toBe(0o600);
    }
    const conf = readFileSync(join(out, 'nats-server.conf'), 'utf8');
    expect(conf).toContain('listen: "127.0.0.1:14222"');
    expect(conf).toContain(`store_dir: ${JSON.stringify(join(out, 'jetstream'))}`);
    expect(conf).toContain('"default_clinic": {');
    execFileSync(natsServerBinary(), ['-t', '-c', join(out, 'nats-server.conf')], { stdio: 'pipe' });

    // keys.json holds the public halves of the written seeds.
    const keys = TrustedKeys.parse(JSON.parse(readFileSync(join(out, 'keys.json'), 'utf8')));
    const publicOf = (file: string) => fromSeed(new TextEncoder().encode(readFileSync(join(out, file), 'utf8').trim())).getPublicKey();
    expect(keys.coordinator).toBe(publicOf('coordinator.nk'));
    expect(Object.keys(keys.sites)).toEqual(SITES);
    for (const s of SITES) expect(keys.sites[s], s).toBe(publicOf(join('sites', `${s}.nk`)));

    // The server, started on that configuration, admits each seed file as its user.
    const server = await NatsServer.start({ config: conf });
    try {
      const coordinator = await connectAs(server.url, join(out, 'coordinator.nk'), COORDINATOR_USER);
      const north = await connectAs(server.url, join(out, 'sites', 'north.nk'), 'north');
      const subj = subjects('default_clinic');
      const sub = coordinator.subscribe(subj.helloAll, {
        callback: (_err, m) => {
          m.respond('welcome');
        },
      });
      await coordinator.flush();
      expect((await north.request(subj.hello('north'), 'hi', { timeout: 5000 })).string()).toBe('welcome');
      sub.unsubscribe();
      await Promise.all([coordinator.close(), north.close()]);
    } finally {
      await server.stop();
    }
  });

  it('--store chooses the JetStream folder; a folder that already holds keys is refused', async () => {
    const dir = tmp('nats-config');
    const job = writeJob(dir, hospitalSpec(), { name: 'clinic' });
    const out = join(dir, 'nats');
    const store = join(dir, 'js-store');
    const first = await runConsort(['nats-config', job, '--out', out, '--store', store]);
    expect(first.code, transcript(first)).toBe(0);
    expect(readFileSync(join(out, 'nats-server.conf'), 'utf8')).toContain(`store_dir: ${JSON.stringify(store)}`);
    const seed = readFileSync(join(out, 'coordinator.nk'), 'utf8');
    const again = await runConsort(['nats-config', job, '--out', out]);
    expect(again.code, transcript(again)).toBe(2);
    expect(again.stderr).toMatch(/--out .* already holds a NATS configuration/);
    expect(readFileSync(join(out, 'coordinator.nk'), 'utf8')).toBe(seed);
  });

  it('a sites/ in --out that is a link is not followed: the seeds would be written where it points', async () => {
    const dir = tmp('nats-config');
    const job = writeJob(dir, hospitalSpec(), { name: 'clinic' });
    const out = join(dir, 'nats');
    const elsewhere = join(dir, 'elsewhere');
    mkdirSync(out);
    mkdirSync(elsewhere);
    symlinkSync(elsewhere, join(out, 'sites'));
    const r = await runConsort(['nats-config', job, '--out', out]);
    expect(r.code, transcript(r)).not.toBe(0);
    expect(r.stderr).toContain('is a symbolic link');
    expect(readdirSync(elsewhere)).toEqual([]);
  });

  it.each([
    ['an address that is not HOST:PORT', ['--listen', 'localhost'], '--listen'],
    ['a port out of range', ['--listen', '127.0.0.1:70000'], '--listen'],
    ['an unknown flag', ['--out', 'x', '--bogus'], '--bogus'],
    ['no --out', [], '--out'],
  ])('%s: exit 2, naming the flag', async (_what, flags, named) => {
    const dir = tmp('nats-config');
    const job = writeJob(dir, hospitalSpec(), { name: 'clinic' });
    const args = flags.includes('--out') ? flags : [...flags, ...(named === '--out' ? [] : ['--out', join(dir, 'nats')])];
    const r = await runConsort(['nats-config', job, ...args]);
    expect(r.code, transcript(r)).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.split('\n')[0]).toMatch(/^consort: .*\[CONSORT_CLI_USAGE\]$/);
    expect(r.stderr).toContain(named);
  });

  it('a job file that is not a FederatedJob: exit 2, naming the field', async () => {
    const dir = tmp('nats-config');
    const job = join(dir, 'job.yaml');
    writeFileSync(job, 'apiVersion: consort.dev/v1alpha1\nkind: FederatedJob\nmetadata: {name: Bad_Name}\nspec: {}\n');
    const r = await runConsort(['nats-config', job, '--out', join(dir, 'nats')]);
    expect(r.code, transcript(r)).toBe(2);
    expect(r.stderr).toMatch(/CONSORT_CLI_JOB_SPEC/);
    expect(r.stderr).toContain('metadata.name');
  });

  it('--cluster writes the shared server configuration, operator.creds and account.nk (mode 0600), which work together', async () => {
    const dir = tmp('nats-config');
    const out = join(dir, 'cluster');
    const r = await runConsort(['nats-config', '--cluster', '--out', out, '--listen', '0.0.0.0:14222', '--store', join(dir, 'js')]);
    expect(r.code, transcript(r)).toBe(0);
    expect(r.stderr).toBe('');
    for (const f of CLUSTER_CONFIG_FILES) {
      expect(r.stdout, f).toContain(f);
      if (f !== 'nats-server.conf') expect(statSync(join(out, f)).mode & 0o777, f).toBe(0o600);
    }
    const conf = readFileSync(join(out, 'nats-server.conf'), 'utf8');
    expect(conf).toContain('listen: "0.0.0.0:14222"');
    expect(conf).toContain(`store_dir: ${JSON.stringify(join(dir, 'js'))}`);
    expect(conf).toMatch(/^operator: "eyJ/m);
    expect(conf).toMatch(/^resolver: MEMORY$/m);
    execFileSync(natsServerBinary(), ['-t', '-c', join(out, 'nats-server.conf')], { stdio: 'pipe' });

    // The server admits the operator's user, and a site minted with account.nk.
    const server = await NatsServer.start({ config: conf });
    try {
      const operator = await connectAs(server.url, join(out, 'operator.creds'), OPERATOR_USER);
      const signer = parseAccountSigner(readFileSync(join(out, 'account.nk'), 'utf8'));
      const creds = await mintJobCreds(signer, 'default_clinic', ['north'], { expiresAt: new Date(Date.now() + 600_000) });
      writeFileSync(join(dir, 'north.creds'), creds.sites.north!.creds);
      const north = await connectAs(server.url, join(dir, 'north.creds'), 'north');
      const subj = subjects('default_clinic');
      const sub = operator.subscribe(subj.helloAll, {
        callback: (_err, m) => {
          m.respond('welcome');
        },
      });
      await operator.flush();
      expect((await north.request(subj.hello('north'), 'hi', { timeout: 5000 })).string()).toBe('welcome');
      sub.unsubscribe();

      // A hospital's site agent, minted afterwards from account.nk: it receives its own site's
      // assignments and answers them, and nothing else.
      const minted = await runConsort(['nats-config', '--site-agent', 'lakeside', '--account-key', join(out, 'account.nk'), '--out', join(dir, 'agents')]);
      expect(minted.code, transcript(minted)).toBe(0);
      const agentCreds = join(dir, 'agents', 'lakeside-agent.creds');
      expect(statSync(agentCreds).mode & 0o777).toBe(0o600);
      expect(minted.stdout).toContain(
        `consort operator --mode site --site lakeside --nats nats://<the cluster's server>:4222 --nats-creds lakeside-agent.creds`,
      );
      const agent = await watchedClient(server.url, 'lakeside', agentCreds);
      const assignments = agent.nc.subscribe(assignmentSubject('lakeside'), {
        callback: (_err, m) => {
          m.respond('accepted');
        },
      });
      await agent.nc.flush();
      expect((await operator.request(assignmentSubject('lakeside'), '{}', { timeout: 5000 })).string()).toBe('accepted');
      assignments.unsubscribe();
      // Another site's assignments are not its to read, nor is anything else its to publish.
      agent.nc.subscribe(assignmentSubject('hillcrest'));
      await violation(agent, 'subscription', assignmentSubject('hillcrest'));
      agent.nc.publish(subj.hello('north'), 'hi');
      await violation(agent, 'publish', subj.hello('north'));
      const again = await runConsort(['nats-config', '--site-agent', 'lakeside', '--account-key', join(out, 'account.nk'), '--out', join(dir, 'agents')]);
      expect(again.code, transcript(again)).toBe(2);
      const noKey = await runConsort(['nats-config', '--site-agent', 'lakeside', '--account-key', join(dir, 'nope.nk'), '--out', join(dir, 'agents2')]);
      expect(noKey.code, transcript(noKey)).toBe(2);
      expect(noKey.stderr).toContain(`--account-key: ${join(dir, 'nope.nk')}: `);
      await Promise.all([operator.close(), north.close(), agent.nc.close()]);
    } finally {
      await server.stop();
    }
    const again = await runConsort(['nats-config', '--cluster', '--out', out]);
    expect(again.code, transcript(again)).toBe(2);
    expect(again.stderr).toMatch(/--out .* already holds a NATS configuration \(nats-server.conf, operator.creds, account.nk\)/);
  });

  it.each([
    ['no <job> and no --cluster', ['--out', 'x'], '<job>: a FederatedJob manifest is required, unless --cluster'],
    ['a <job> with --cluster', ['job.yaml', '--cluster', '--out', 'x'], '--cluster: configures the shared server of every job: it takes no <job>'],
    [
      '--site-agent without --account-key',
      ['--site-agent', 'lakeside', '--out', 'x'],
      "--account-key: is required with --site-agent (the cluster's account.nk)",
    ],
    ['--site-agent that is no site name', ['--site-agent', 'Lake Side', '--account-key', 'a.nk', '--out', 'x'], '--site-agent: must be a site name'],
  ])('%s: exit 2, naming what is wrong', async (_what, args, message) => {
    const r = await runConsort(['nats-config', ...args]);
    expect(r.code, transcript(r)).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.split('\n')[0]).toMatch(/^consort: .*\[CONSORT_CLI_USAGE\]$/);
    expect(r.stderr).toContain(message);
  });

  it('--help explains every flag', async () => {
    const r = await runConsort(['nats-config', '--help']);
    expect(r.code, transcript(r)).toBe(0);
    expect(r.stdout).toMatch(/Usage: consort nats-config \[options\] \[job\]/);
    for (const flag of ['--out', '--cluster', '--listen', '--store', '--site-agent', '--account-key'])
      expect(r.stdout, flag).toMatch(new RegExp(`^\\s+${flag}\\b[^\\n]*\\s{2,}\\w`, 'm'));
    expect(r.stdout).toContain('operator.creds');
    expect(r.stdout).toContain('account.nk');
  });
});
