// NATS decentralized auth for one long-running nats-server shared by every job: the server trusts
// an operator JWT and preloads two account JWTs (the system account and the Consort account, which
// holds every job's subjects and buckets). Whoever holds the Consort account's signing key mints
// users without touching the server: per job, a user per site and one for the coordinator, with
// the permissions of core/protocol/permissions.ts and an expiry. Sites get a standard `.creds` file.
// The operator's and the accounts' identity seeds are not kept: the trust never changes after the
// server starts (resolver MEMORY), and a new one is a new server configuration.
import { type Account, encodeAccount, encodeOperator, encodeUser, fmtCreds, type User } from '@nats-io/jwt';
import { createAccount, createOperator, createUser, fromPublic } from '@nats-io/nkeys';
import {
  COORDINATOR_USER,
  coordinatorPermissions,
  inboxOf,
  OPERATOR_USER,
  operatorPermissions,
  sitePermissions,
  type UserPermissions,
} from '../../core/protocol/permissions.ts';
import { jobInboxPrefix } from '../../core/protocol/subjects.ts';
import { OperatorError } from '../errors.ts';
import { nativeKeyPair } from '../../core/protocol/native-keys.ts';

/** The Consort account's name in its JWT (and in the server's logs). */
export const CONSORT_ACCOUNT = 'CONSORT';
export const SYSTEM_ACCOUNT = 'SYS';
export const NATS_OPERATOR = 'consort';

/**
 * JetStream of the Consort account: file storage unlimited (the server's own max_file_store
 * bounds it), any number of streams and consumers (a bucket per site and job, an ordered
 * consumer per object read); memory storage small, since no Consort bucket lives in memory.
 */
export const ACCOUNT_MEMORY_STORAGE_BYTES = 64 * 1024 * 1024;

/** What signs users of the Consort account. */
export interface AccountSigner {
  /** The account's public key (A...): minted users name it as their issuing account. */
  account: string;
  /** The seed (SA...) of a signing key the account's JWT lists. A secret: it mints credentials for any job. */
  seed: string;
}

export interface NatsEntity {
  name: string;
  publicKey: string;
  jwt: string;
}

export interface NatsTrust {
  operator: NatsEntity;
  systemAccount: NatsEntity;
  account: NatsEntity;
  signer: AccountSigner;
}

const decoder = new TextDecoder();
const seedOf = (kp: { getSeed(): Uint8Array }) => decoder.decode(kp.getSeed());

/** Connections, subscriptions, payloads, imports and exports unlimited (an absent limit would read as 0). */
const OPEN_LIMITS = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 };

/** A fresh operator, system account and Consort account (with JetStream and one signing key), as JWTs. */
export async function createNatsTrust(): Promise<NatsTrust> {
  const operator = createOperator();
  const system = createAccount();
  const account = createAccount();
  const signing = createAccount();
  const systemAccount: NatsEntity = {
    name: SYSTEM_ACCOUNT,
    publicKey: system.getPublicKey(),
    jwt: await encodeAccount(SYSTEM_ACCOUNT, system, { limits: { ...OPEN_LIMITS, disallow_bearer: true } }, { signer: operator }),
  };
  const claims: Partial<Account> = {
    description: 'Consort: every federated job, its subjects and its Object Store buckets',
    limits: {
      ...OPEN_LIMITS,
      disallow_bearer: true,
      disk_storage: -1,
      mem_storage: ACCOUNT_MEMORY_STORAGE_BYTES,
      streams: -1,
      consumer: -1,
    },
    signing_keys: [signing.getPublicKey()],
  };
  return {
    operator: {
      name: NATS_OPERATOR,
      publicKey: operator.getPublicKey(),
      jwt: await encodeOperator(NATS_OPERATOR, operator, { system_account: system.getPublicKey() }),
    },
    systemAccount,
    account: {
      name: CONSORT_ACCOUNT,
      publicKey: account.getPublicKey(),
      jwt: await encodeAccount(CONSORT_ACCOUNT, account, claims, { signer: operator }),
    },
    signer: { account: account.getPublicKey(), seed: seedOf(signing) },
  };
}

/**
 * The server's longest protocol line. A client sends its JWT in its CONNECT line, and a
 * coordinator's JWT lists every site's update bucket (about 1.1 KB per site): the default, 4 KiB,
 * admits a coordinator of 2 sites at most. 1 MiB admits about 900.
 */
export const MAX_CONTROL_LINE_BYTES = 1024 * 1024;
/** Room in the CONNECT line for what is not the JWT (signature, name, flags). */
const CONNECT_OVERHEAD_BYTES = 2048;

export interface ClusterNatsConfigOptions {
  /** host:port the server listens on for clients. */
  listen: string;
  /** JetStream's store directory. */
  storeDir: string;
  /** The monitoring port (/healthz, /varz); none when absent. */
  httpPort?: number;
}

/** nats-server.conf text that trusts `trust`: operator inline, both accounts preloaded, JetStream on. */
export function renderClusterNatsConfig(trust: NatsTrust, opts: ClusterNatsConfigOptions): string {
  const q = (s: string) => JSON.stringify(s);
  return [
    '# nats-server configuration of a Consort cluster, written by `consort nats-config --cluster`.',
    '# Decentralized auth: users present JWTs minted with the Consort account signing key (operator/nats/trust.ts);',
    '# the server needs no reload when jobs come and go.',
    `listen: ${q(opts.listen)}`,
    ...(opts.httpPort === undefined ? [] : [`http_port: ${opts.httpPort}`]),
    "# A user JWT travels in the CONNECT line; a coordinator's grows with its sites.",
    `max_control_line: ${MAX_CONTROL_LINE_BYTES}`,
    `jetstream {\n  store_dir: ${q(opts.storeDir)}\n}`,
    `# operator ${trust.operator.name} (${trust.operator.publicKey})`,
    `operator: ${q(trust.operator.jwt)}`,
    `system_account: ${q(trust.systemAccount.publicKey)}`,
    'resolver: MEMORY',
    'resolver_preload: {',
    `  # ${trust.systemAccount.name}`,
    `  ${q(trust.systemAccount.publicKey)}: ${q(trust.systemAccount.jwt)}`,
    `  # ${trust.account.name}`,
    `  ${q(trust.account.publicKey)}: ${q(trust.account.jwt)}`,
    '}',
    '',
  ].join('\n');
}

// ---- users ----------------------------------------------------------------------------------

export interface MintOptions {
  /** The user's name: a site name, COORDINATOR_USER or OPERATOR_USER. It fixes the inbox prefix its permissions allow. */
  name: string;
  permissions: UserPermissions;
  /** The JWT is refused from then on (and a connection that holds it is closed); never when absent. */
  expiresAt?: Date;
  /**
   * The user's NKey seed (SU...), to mint again for the same key: a renewal must keep the key,
   * since the coordinator checks a site's signatures against it. A fresh key when absent.
   */
  seed?: string;
}

export interface MintedUser {
  name: string;
  /** The inbox prefix its permissions allow replies on (the one `_INBOX_...>` of its subscribe list); connectAs uses it. */
  inboxPrefix: string | undefined;
  /** A standard NATS `.creds` file: the user JWT and the seed. A secret. */
  creds: string;
  jwt: string;
  publicKey: string;
  seed: string;
}

const SITE_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/**
 * A user of the Consort account, signed by `signer`, with exactly `permissions`: publish and
 * subscribe allow lists (an empty list denies everything rather than allowing it, as an absent
 * JWT list would), and one reply to each request received when `allowResponses`. Never a bearer
 * token: the client proves it holds the seed.
 */
export async function mintUserCreds(signer: AccountSigner, opts: MintOptions): Promise<MintedUser> {
  if (opts.name !== COORDINATOR_USER && opts.name !== OPERATOR_USER && !SITE_NAME.test(opts.name)) {
    throw new OperatorError('CONSORT_C_NATS_TRUST', `"${opts.name}" is not a user name (a site name, ${COORDINATOR_USER} or ${OPERATOR_USER})`);
  }
  // nkeys makes the seed; the key pair that signs and derives the public key is native (native-keys.ts).
  const kp = userFromSeed(opts.seed ?? seedOf(createUser()));
  const p = opts.permissions;
  const allow = (list: string[]) => (list.length > 0 ? { allow: list } : { deny: ['>'] });
  const user: Partial<User> = {
    pub: allow(p.publish),
    sub: allow(p.subscribe),
    ...(p.allowResponses ? { resp: { max: 1, ttl: 0 } } : {}),
    bearer_token: false,
  };
  const jwt = await encodeUser(opts.name, kp, signer.account, user, {
    signer: signerKey(signer),
    ...(opts.expiresAt === undefined ? {} : { exp: Math.floor(opts.expiresAt.getTime() / 1000) }),
  });
  if (jwt.length + CONNECT_OVERHEAD_BYTES > MAX_CONTROL_LINE_BYTES) {
    throw new OperatorError(
      'CONSORT_C_NATS_TRUST',
      `the JWT of user "${opts.name}" is ${jwt.length} bytes: the server's max_control_line (${MAX_CONTROL_LINE_BYTES}) would refuse its login`,
    );
  }
  return {
    name: opts.name,
    inboxPrefix: inboxOf(p.subscribe),
    creds: decoder.decode(fmtCreds(jwt, kp)),
    jwt,
    publicKey: kp.getPublicKey(),
    seed: seedOf(kp),
  };
}

export interface JobCreds {
  coordinator: MintedUser;
  sites: Record<string, MintedUser>;
  /** The public keys the job's coordinator trusts (the shape of keys.json). */
  keys: { coordinator: string; sites: Record<string, string> };
}

/**
 * Credentials for one job: its coordinator and each site, all expiring at `expiresAt`. `seeds`
 * keeps the keys of users minted before (by user name), for a renewal. Their replies come to
 * jobInboxPrefix(job, user): the same site in another job is another user with the same name,
 * and must not read these (connectAs takes the prefix from the JWT).
 */
export async function mintJobCreds(
  signer: AccountSigner,
  job: string,
  sites: readonly string[],
  opts: { expiresAt?: Date; seeds?: Record<string, string> } = {},
): Promise<JobCreds> {
  const mint = (name: string, permissions: UserPermissions) =>
    mintUserCreds(signer, {
      name,
      permissions,
      ...(opts.expiresAt === undefined ? {} : { expiresAt: opts.expiresAt }),
      ...(opts.seeds?.[name] === undefined ? {} : { seed: opts.seeds[name] }),
    });
  const coordinator = await mint(COORDINATOR_USER, coordinatorPermissions(job, sites, jobInboxPrefix(job, COORDINATOR_USER)));
  const minted: Record<string, MintedUser> = {};
  for (const s of sites) minted[s] = await mint(s, sitePermissions(job, s, jobInboxPrefix(job, s)));
  return {
    coordinator,
    sites: minted,
    keys: { coordinator: coordinator.publicKey, sites: Object.fromEntries(Object.entries(minted).map(([s, u]) => [s, u.publicKey])) },
  };
}

/** The Consort operator's own user: any job, over one connection whose inbox prefix is inboxPrefix(OPERATOR_USER). */
export function mintOperatorCreds(signer: AccountSigner, opts: { expiresAt?: Date; seed?: string } = {}): Promise<MintedUser> {
  return mintUserCreds(signer, { name: OPERATOR_USER, permissions: operatorPermissions(), ...opts });
}

// ---- the signing key's file -----------------------------------------------------------------

const ACCOUNT_KEY = /^A[A-Z2-7]{55}$/;
const ACCOUNT_SEED = /^SA[A-Z2-7]{56}$/;

/** account.nk: the account's public key and the signing seed, one `key: value` per line, `#` comments. */
export function renderAccountSigner(signer: AccountSigner): string {
  return [
    '# Signing key of the Consort NATS account: it mints credentials for every job. A secret.',
    `account: ${signer.account}`,
    `seed: ${signer.seed}`,
    '',
  ].join('\n');
}

/** Reads what renderAccountSigner wrote; `source` names it in errors. */
export function parseAccountSigner(text: string, source = 'account.nk'): AccountSigner {
  const fields = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(account|seed):\s*(\S+)$/.exec(line);
    if (m) fields.set(m[1]!, m[2]!);
  }
  const account = fields.get('account');
  const seed = fields.get('seed');
  if (!account || !ACCOUNT_KEY.test(account)) throw new OperatorError('CONSORT_C_NATS_TRUST', `${source}: no "account: A..." line (the account's public key)`);
  if (!seed || !ACCOUNT_SEED.test(seed)) throw new OperatorError('CONSORT_C_NATS_TRUST', `${source}: no "seed: SA..." line (an account signing seed)`);
  const signer = { account, seed };
  signerKey(signer, source); // the seed and the key decode
  return signer;
}

/** The account signer's key pairs, by seed: one operator mints for every job with the same signer. */
const signerKeys = new Map<string, ReturnType<typeof nativeKeyPair>>();

function signerKey(signer: AccountSigner, source = 'the account signer') {
  try {
    fromPublic(signer.account);
    let kp = signerKeys.get(signer.seed);
    if (!kp) {
      kp = nativeKeyPair(signer.seed);
      if (signerKeys.size >= 16) signerKeys.clear();
      signerKeys.set(signer.seed, kp);
    }
    return kp;
  } catch (err) {
    throw new OperatorError('CONSORT_C_NATS_TRUST', `${source}: not a valid account key and signing seed (${(err as Error).message})`, { cause: err });
  }
}

function userFromSeed(seed: string) {
  try {
    const kp = nativeKeyPair(seed);
    if (kp.getPublicKey().startsWith('U')) return kp;
  } catch (err) {
    throw new OperatorError('CONSORT_C_NATS_TRUST', `not a user NKey seed: ${(err as Error).message}`, { cause: err });
  }
  throw new OperatorError('CONSORT_C_NATS_TRUST', 'not a user NKey seed (SU...)');
}
