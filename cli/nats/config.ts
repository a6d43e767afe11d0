// `consort nats-config JOB.yaml --out DIR`: the nats-server configuration of a job (JetStream on,
// one account for the job, one NKey user per site and one for the coordinator, each with
// least-privilege permissions from core/protocol/permissions.ts), the users' seeds, and keys.json
// (the public keys the coordinator trusts). natsAuthFor does the same in memory for tests and
// embedded runs. `consort nats-config --cluster --out DIR`: the shared server of every job instead
// (decentralized JWT auth, operator/nats/trust.ts), the Consort operator's user and the account
// signing key that mints each job's users.
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createUser } from '@nats-io/nkeys';
import { z } from 'zod';
import type { FederatedJob } from '../../core/job/federated-job.ts';
import { fieldPath } from '../../core/job/issues.ts';
import { inboxPrefix, jobKey } from '../../core/protocol/subjects.ts';
import { CliError, fileProblem } from '../errors.ts';
import { reportFailure } from '../failure.ts';
import { readJobFile } from '../job-file.ts';
import {
  type AccountSigner,
  createNatsTrust,
  mintOperatorCreds,
  mintUserCreds,
  parseAccountSigner,
  renderAccountSigner,
  renderClusterNatsConfig,
} from '../../operator/nats/trust.ts';
import { COORDINATOR_USER, coordinatorPermissions, siteAgentPermissions, sitePermissions, type UserPermissions } from '../../core/protocol/permissions.ts';

export const DEFAULT_LISTEN = '127.0.0.1:4222';

const publicUserKey = z.string().regex(/^U[A-Z2-7]{55}$/, 'must be an NKey user public key (U...)');

/** keys.json: the public keys the coordinator trusts, to verify what sites sign. */
export const TrustedKeys = z
  .object({
    coordinator: publicUserKey,
    sites: z.record(z.string(), publicUserKey),
  })
  .strict();
export type TrustedKeys = z.infer<typeof TrustedKeys>;

/** One NATS user of the job: its name (which fixes its inbox prefix), NKey seed and public key. */
export interface NatsUser {
  user: string;
  seed: string;
  publicKey: string;
}

export interface NatsAuth {
  /** The job's account: `jobKey(job.metadata)`. */
  account: string;
  /** nats-server.conf text. */
  config: string;
  coordinator: NatsUser;
  sites: Record<string, NatsUser>;
  keys: TrustedKeys;
}

export interface NatsConfigOptions {
  /** host:port the server listens on (default 127.0.0.1:4222). */
  listen?: string;
  /** JetStream store directory; absent: the server's default or its -sd flag. */
  storeDir?: string;
}

type JobShape = Pick<FederatedJob, 'metadata' | 'spec'>;

/** Fresh NKeys for the coordinator and every site of the job, and the server configuration that admits them. */
export function natsAuthFor(job: JobShape, opts: NatsConfigOptions = {}): NatsAuth {
  const fresh = (user: string): NatsUser => {
    const kp = createUser();
    return { user, seed: new TextDecoder().decode(kp.getSeed()), publicKey: kp.getPublicKey() };
  };
  const coordinator = fresh(COORDINATOR_USER);
  const sites = Object.fromEntries(job.spec.sites.map((s) => [s.name, fresh(s.name)]));
  const keys: TrustedKeys = {
    coordinator: coordinator.publicKey,
    sites: Object.fromEntries(Object.entries(sites).map(([name, u]) => [name, u.publicKey])),
  };
  return { account: jobKey(job.metadata), config: renderNatsConfig(job, keys, opts), coordinator, sites, keys };
}

/** nats-server.conf for the job's users, given their public keys. */
export function renderNatsConfig(job: JobShape, keys: TrustedKeys, opts: NatsConfigOptions = {}): string {
  const account = jobKey(job.metadata);
  const siteNames = job.spec.sites.map((s) => s.name);
  const q = (s: string) => JSON.stringify(s);
  const list = (items: string[], indent: string) => `[\n${items.map((i) => `${indent}  ${q(i)}`).join('\n')}\n${indent}]`;
  const user = (label: string, nkey: string, p: UserPermissions) =>
    [
      `      # ${label}`,
      '      {',
      `        nkey: ${q(nkey)}`,
      '        permissions: {',
      `          publish: { allow: ${list(p.publish, '          ')} }`,
      `          subscribe: { allow: ${list(p.subscribe, '          ')} }`,
      `          allow_responses: ${p.allowResponses}`,
      '        }',
      '      }',
    ].join('\n');
  const users = [
    user(`coordinator (inbox prefix ${inboxPrefix(COORDINATOR_USER)})`, keys.coordinator, coordinatorPermissions(account, siteNames)),
    ...siteNames.map((s) => {
      const key = keys.sites[s];
      if (!key) throw new Error(`renderNatsConfig: no key for site ${s}`);
      return user(`site ${s} (inbox prefix ${inboxPrefix(s)})`, key, sitePermissions(account, s));
    }),
  ];
  return [
    `# nats-server configuration of FederatedJob ${job.metadata.namespace ?? 'default'}/${job.metadata.name}, written by \`consort nats-config\`.`,
    '# Users authenticate with NKeys; each may publish and subscribe only what its role needs (cli/nats/README.md).',
    `listen: ${q(opts.listen ?? DEFAULT_LISTEN)}`,
    opts.storeDir === undefined ? 'jetstream: enabled' : `jetstream {\n  store_dir: ${q(opts.storeDir)}\n}`,
    'accounts {',
    `  ${q(account)}: {`,
    '    jetstream: enabled',
    '    users: [',
    users.join('\n'),
    '    ]',
    '  }',
    '}',
    '',
  ].join('\n');
}

// ---- the command ----------------------------------------------------------------------------

const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-.A-Za-z0-9]*[A-Za-z0-9])?):(\d{1,5})$/;
const hostPort = z.string().superRefine((s, ctx) => {
  const m = HOST_PORT.exec(s);
  if (!m) ctx.addIssue({ code: 'custom', message: `"${s}" is not HOST:PORT (e.g. 127.0.0.1:4222 or [::1]:4222)` });
  else if (Number(m[3]) < 1 || Number(m[3]) > 65535) ctx.addIssue({ code: 'custom', message: `port ${m[3]} is not 1 to 65535` });
});

export const NatsConfigFlags = z
  .object({
    out: z.string().min(1, 'must name a folder'),
    listen: hostPort.default(DEFAULT_LISTEN),
    store: z.string().min(1, 'must name a folder').optional(),
    cluster: z.boolean().default(false),
    siteAgent: z
      .string()
      .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'must be a site name (lower-case letters, digits and -)')
      .max(63)
      .optional(),
    accountKey: z.string().min(1, 'must name the account.nk that nats-config --cluster wrote').optional(),
  })
  .strict();
export type NatsConfigFlags = z.infer<typeof NatsConfigFlags>;

/** The <job> argument and the flags together: a job's configuration needs the job; the cluster's takes none. */
const NatsConfigInput = z.object({ job: z.string().min(1).optional(), flags: NatsConfigFlags }).superRefine(({ job, flags }, ctx) => {
  if (flags.siteAgent !== undefined || flags.accountKey !== undefined) {
    // A site agent's credentials for a cluster that exists: its account key mints them.
    if (flags.siteAgent === undefined) ctx.addIssue({ code: 'custom', path: ['flags', 'siteAgent'], message: 'is required with --account-key (which site?)' });
    if (flags.accountKey === undefined)
      ctx.addIssue({ code: 'custom', path: ['flags', 'accountKey'], message: "is required with --site-agent (the cluster's account.nk)" });
    if (flags.cluster)
      ctx.addIssue({ code: 'custom', path: ['flags', 'siteAgent'], message: 'mints a user of an existing cluster: not with --cluster, which makes a new one' });
    if (job !== undefined)
      ctx.addIssue({ code: 'custom', path: ['flags', 'siteAgent'], message: `takes no <job> (got ${job}): the agent receives every job that names its site` });
    return;
  }
  if (!flags.cluster && job === undefined) {
    ctx.addIssue({ code: 'custom', path: ['job'], message: 'a FederatedJob manifest is required, unless --cluster (the shared server of every job)' });
  }
  if (flags.cluster && job !== undefined) {
    ctx.addIssue({ code: 'custom', path: ['flags', 'cluster'], message: `configures the shared server of every job: it takes no <job> (got ${job})` });
  }
});

/** The files `consort nats-config` writes, relative to --out. */
export function natsConfigFiles(sites: readonly string[]): string[] {
  return ['nats-server.conf', 'keys.json', 'coordinator.nk', ...sites.map((s) => join('sites', `${s}.nk`))];
}

/** A usage error whose lines name the argument or the flag: `<job>: ...`, `--out: ...`. */
function usageError(error: z.ZodError): CliError {
  const lines = error.issues.map((issue) => {
    const [head, ...rest] = issue.path;
    if (head === 'job') return `<job>: ${issue.message}`;
    // The flag as typed: --site-agent, not its option name siteAgent.
    return `--${fieldPath(rest).replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}: ${issue.message}`;
  });
  return new CliError('CONSORT_CLI_USAGE', 'invalid flags', { details: lines });
}

/** Refuses a folder that holds any of `files` already: new keys lock out everyone holding the old ones. */
function refuseExisting(out: string, flag: string, files: readonly string[]): void {
  const existing = files.filter((f) => existsSync(join(out, f)));
  if (existing.length > 0) {
    throw new CliError('CONSORT_CLI_USAGE', `--out ${flag} already holds a NATS configuration (${existing.join(', ')}); remove it or choose another folder`);
  }
}

export async function natsConfigCommand(jobPath: string | undefined, rawFlags: Record<string, unknown>): Promise<number> {
  try {
    const parsed = NatsConfigInput.safeParse({ ...(jobPath === undefined ? {} : { job: jobPath }), flags: rawFlags });
    if (!parsed.success) throw usageError(parsed.error);
    const { flags } = parsed.data;
    const out = resolve(flags.out);
    const storeDir = resolve(flags.store ?? join(out, 'jetstream'));
    if (flags.siteAgent !== undefined) {
      const file = siteAgentCredsFile(flags.siteAgent);
      refuseExisting(out, flags.out, [file]);
      const signer = readAccountSigner(flags.accountKey!);
      const user = await mintUserCreds(signer, { name: flags.siteAgent, permissions: siteAgentPermissions(flags.siteAgent) });
      mkdirSync(out, { recursive: true });
      // A new file only (O_EXCL): a link left in its place is not followed.
      writeSecret(join(out, file), user.creds);
      process.stdout.write(
        [
          `wrote the credentials of site ${flags.siteAgent}'s agent to ${join(out, file)} (mode 0600; a secret: give it to that hospital only).`,
          `run there: consort operator --mode site --site ${flags.siteAgent} --nats nats://<the cluster's server>:4222 --nats-creds ${file} --policy policy.yaml`,
          "it may only receive its site's assignments and answer them; each job it accepts brings its own credentials.",
          '',
        ].join('\n'),
      );
      return 0;
    }
    if (flags.cluster) {
      refuseExisting(out, flags.out, CLUSTER_CONFIG_FILES);
      const trust = await createNatsTrust();
      const operatorUser = await mintOperatorCreds(trust.signer);
      writeClusterConfigFiles(out, renderClusterNatsConfig(trust, { listen: flags.listen, storeDir }), trust.signer, operatorUser.creds);
      process.stdout.write(
        [
          `wrote the NATS configuration of a Consort cluster (operator ${trust.operator.publicKey}, account ${trust.account.publicKey}) to ${out}:`,
          ...CLUSTER_CONFIG_FILES.map((f) => `  ${f}`),
          `start the server: nats-server -c ${join(out, 'nats-server.conf')}`,
          "account.nk (the signing key that mints every job's site and coordinator credentials) and operator.creds (a user that may run any job) go to the Consort operator only.",
          '',
        ].join('\n'),
      );
      return 0;
    }
    const job = readJobFile(parsed.data.job!);
    const files = natsConfigFiles(job.spec.sites.map((s) => s.name));
    refuseExisting(out, flags.out, files);
    const auth = natsAuthFor(job, { listen: flags.listen, storeDir });
    writeNatsConfigFiles(out, auth);
    process.stdout.write(
      [
        `wrote the NATS configuration of ${auth.account} (coordinator and ${job.spec.sites.length} site${job.spec.sites.length === 1 ? '' : 's'}) to ${out}:`,
        ...files.map((f) => `  ${f}`),
        `start the server: nats-server -c ${join(out, 'nats-server.conf')}`,
        'give each site only its own sites/<site>.nk (a secret); keys.json goes to the coordinator.',
        '',
      ].join('\n'),
    );
    return 0;
  } catch (err) {
    return reportFailure(err);
  }
}

/** The file `consort nats-config --site-agent NAME` writes, relative to --out. */
export function siteAgentCredsFile(site: string): string {
  return `${site}-agent.creds`;
}

/** The account's signing key from the file nats-config --cluster wrote, or a CliError naming the flag. */
function readAccountSigner(path: string): AccountSigner {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new CliError('CONSORT_CLI_CREDENTIALS', `--account-key: ${path}: ${fileProblem(err)}`);
  }
  try {
    return parseAccountSigner(text, path);
  } catch (err) {
    throw new CliError('CONSORT_CLI_CREDENTIALS', `--account-key: ${(err as Error).message}`);
  }
}

/** The files `consort nats-config --cluster` writes, relative to --out. */
export const CLUSTER_CONFIG_FILES = ['nats-server.conf', 'operator.creds', 'account.nk'] as const;

/** Writes CLUSTER_CONFIG_FILES into `out` (new files only; the secrets readable by their owner only). */
export function writeClusterConfigFiles(out: string, config: string, signer: AccountSigner, operatorCreds: string): void {
  try {
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, 'nats-server.conf'), config, { flag: 'wx' });
    writeSecret(join(out, 'operator.creds'), operatorCreds);
    writeSecret(join(out, 'account.nk'), renderAccountSigner(signer));
  } catch (err) {
    throw new CliError('CONSORT_CLI_OUTPUT', `cannot write into ${out}: ${(err as Error).message}`, { cause: err });
  }
}

/** Writes natsConfigFiles() into `out` (new files only: an existing one is an error). */
export function writeNatsConfigFiles(out: string, auth: NatsAuth): void {
  try {
    mkdirSync(join(out, 'sites'), { recursive: true });
    // The seeds go into sites/ itself: a link there wrote them into whatever folder it names.
    if (lstatSync(join(out, 'sites')).isSymbolicLink())
      throw new Error(`${join(out, 'sites')} is a symbolic link: the site seeds go into a folder of --out itself`);
    writeFileSync(join(out, 'nats-server.conf'), auth.config, { flag: 'wx' });
    writeFileSync(join(out, 'keys.json'), `${JSON.stringify(auth.keys, null, 2)}\n`, { flag: 'wx' });
    writeSeed(join(out, 'coordinator.nk'), auth.coordinator.seed);
    for (const [name, u] of Object.entries(auth.sites)) writeSeed(join(out, 'sites', `${name}.nk`), u.seed);
  } catch (err) {
    throw new CliError('CONSORT_CLI_OUTPUT', `cannot write into ${out}: ${(err as Error).message}`, { cause: err });
  }
}

/** A seed file: the seed and a newline, readable by its owner only. */
function writeSeed(path: string, seed: string): void {
  writeSecret(path, `${seed}\n`);
}

/** A new file readable by its owner only. */
function writeSecret(path: string, text: string): void {
  writeFileSync(path, text, { flag: 'wx', mode: 0o600 });
  chmodSync(path, 0o600); // whatever the umask
}
