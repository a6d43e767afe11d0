// A connection as one user of a job's NATS account: NKey authentication (a seed file of `consort
// nats-config JOB`) or a user JWT (a `.creds` file minted with the Consort account's signing key,
// operator/nats/trust.ts), the user's own inbox prefix (its permissions allow replies there only),
// and reconnects that never give up.
import { readFileSync } from 'node:fs';
import type { KeyPair } from '@nats-io/nkeys';
import { type Authenticator, type ConnectionOptions, connect, type NatsConnection, PermissionViolationError } from '@nats-io/transport-node';
import { nativeKeyPair } from '../../core/protocol/native-keys.ts';
import { inboxOf } from '../../core/protocol/permissions.ts';
import { inboxPrefix } from '../../core/protocol/subjects.ts';
import { CliError, fileProblem } from '../errors.ts';

/** Every user's inbox starts so (inboxPrefix): a publish there is a reply. */
const REPLY_PREFIX = inboxPrefix('');

const SEED = /^SU[A-Z2-7]{56}$/;
const CREDS_JWT = '-----BEGIN NATS USER JWT-----';
const JWT = /-----BEGIN NATS USER JWT-----\s*\n\s*([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)\s*\n/;

function readCredentials(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new CliError('CONSORT_CLI_CREDENTIALS', `${file}: ${fileProblem(err)}`, { cause: err });
  }
}

/**
 * The user seed in `seedOrFile`: a seed itself (SU...), or the path of a seed file (as `consort
 * nats-config JOB` writes) or of a `.creds` file (its seed, after the JWT). Sites sign with it.
 */
export function readSeed(seedOrFile: string): string {
  if (SEED.test(seedOrFile)) return seedOrFile;
  const text = readCredentials(seedOrFile);
  const seed = text.split('\n').find((l) => SEED.test(l.trim()));
  if (!seed) throw new CliError('CONSORT_CLI_CREDENTIALS', `${seedOrFile}: no NKey user seed (a line SU...) in the file`);
  return seed.trim();
}

/** The seed of an NKey seed file or seed (what nats-config writes), or undefined for a .creds file (a JWT login) or a file that cannot be read (connecting says why). */
export function nkeySeedOf(seedOrFile: string): string | undefined {
  if (SEED.test(seedOrFile)) return seedOrFile;
  try {
    return readFileSync(seedOrFile, 'utf8').includes(CREDS_JWT) ? undefined : readSeed(seedOrFile);
  } catch {
    return undefined;
  }
}

interface CredsClaims {
  name: string;
  /** The inbox prefix the JWT's permissions allow replies on, when they name one. */
  inbox: string | undefined;
}

/** What connectAs needs of a `.creds` file's user JWT (unverified: the server checks the signature). */
function credsClaims(file: string, text: string): CredsClaims {
  const m = JWT.exec(text);
  let claims: { name?: unknown; nats?: { sub?: { allow?: unknown } } } | undefined;
  try {
    claims = m ? JSON.parse(Buffer.from(m[1]!.split('.')[1]!, 'base64url').toString('utf8')) : undefined;
  } catch {
    claims = undefined;
  }
  if (typeof claims?.name !== 'string') {
    throw new CliError('CONSORT_CLI_CREDENTIALS', `${file}: not a NATS .creds file (no readable user JWT after ${CREDS_JWT})`);
  }
  readSeed(file);
  const allow = claims.nats?.sub?.allow;
  return { name: claims.name, inbox: Array.isArray(allow) ? inboxOf(allow.filter((a): a is string => typeof a === 'string')) : undefined };
}

interface Login {
  authenticator: NonNullable<ConnectionOptions['authenticator']>;
  inboxPrefix: string;
}

/**
 * How `seedOrFile` logs in as `user`: an NKey seed (replies on inboxPrefix(user)), or a creds
 * file, re-read at every connect so that a renewed one is picked up, whose replies come where its
 * JWT allows (jobInboxPrefix(job, user) for a job's user on a shared server).
 */
function loginFor(seedOrFile: string, user: string): Login {
  if (!SEED.test(seedOrFile)) {
    let text = readCredentials(seedOrFile);
    if (text.includes(CREDS_JWT)) {
      const claims = credsClaims(seedOrFile, text);
      if (claims.name !== user) {
        throw new CliError('CONSORT_CLI_CREDENTIALS', `${seedOrFile}: these credentials are for user "${claims.name}", not "${user}"`);
      }
      const authenticator: Authenticator = (nonce) => {
        try {
          const again = readFileSync(seedOrFile, 'utf8');
          if (again.includes(CREDS_JWT)) text = again;
        } catch {
          // Gone for a moment (a Secret being replaced): the last good copy.
        }
        const jwt = JWT.exec(text)?.[1];
        const seed = text
          .split('\n')
          .map((l) => l.trim())
          .find((l) => SEED.test(l));
        if (!jwt || !seed) throw new Error(`${seedOrFile}: unable to parse the credentials`);
        return { jwt, ...signNonce(seed, nonce) };
      };
      return { authenticator, inboxPrefix: claims.inbox ?? inboxPrefix(user) };
    }
  }
  const seed = readSeed(seedOrFile);
  return { authenticator: (nonce) => signNonce(seed, nonce), inboxPrefix: inboxPrefix(user) };
}

const keyPairs = new Map<string, KeyPair>();

/** What nats.js' nkeyAuthenticator answers (the public key; the server's nonce signed, base64), with native Ed25519. */
function signNonce(seed: string, nonce: string | undefined): { nkey: string; sig: string } {
  let kp = keyPairs.get(seed);
  if (!kp) {
    kp = nativeKeyPair(seed);
    if (keyPairs.size >= 1000) keyPairs.clear();
    keyPairs.set(seed, kp);
  }
  return { nkey: kp.getPublicKey(), sig: nonce ? Buffer.from(kp.sign(new TextEncoder().encode(nonce))).toString('base64') : '' };
}

/**
 * Connects to `url` as `user` ("_coordinator", "_operator" or a site name) with an NKey seed, a
 * seed file or a `.creds` file whose JWT names `user`, with the inbox prefix its permissions
 * allow replies on (loginFor). Reconnects forever, every 250 ms plus up to
 * 250 ms of jitter, so that a restarted server finds every client back; `extra` overrides any
 * option. A refused connection (bad or expired credentials, no server) is a CliError whose cause
 * is nats.js's error.
 */
export async function connectAs(url: string | string[], seedOrFile: string, user: string, extra: ConnectionOptions = {}): Promise<NatsConnection> {
  const login = loginFor(seedOrFile, user);
  try {
    return await connect({
      servers: url,
      authenticator: login.authenticator,
      inboxPrefix: login.inboxPrefix,
      name: `consort ${user}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      reconnectJitter: 250,
      pingInterval: 20_000,
      // nats.js otherwise builds an Error, stack trace and all, for every request it sends (each
      // object chunk's publish acknowledgement and read) in case it fails; ours say what failed.
      noAsyncTraces: true,
      ...extra,
    });
  } catch (err) {
    throw new CliError('CONSORT_CLI_NATS', `cannot connect to ${String(url)} as ${user}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Watches `nc` for the server's permission violations: a credentials file of another user (a
 * site given another site's file, or the coordinator's) logs in fine, and only the server's
 * refusals of its subscriptions and publications tell. The first one aborts `abort` and is kept
 * in `violation()`, for the command to report as a credentials error. Left out:
 * - JetStream API requests: the object writes try a purge that a site may not make, on purpose
 *   (object-put.ts);
 * - replies (a publish into another user's inbox): the server lets one through only while it
 *   remembers the request (allow_responses), and forgets it when it restarts, so a request taken
 *   before a restart and answered after it is refused. The asker asks again; the process goes on
 *   (it used to stop as if its credentials were another user's). Said once through `log`.
 */
export function watchPermissions(
  nc: NatsConnection,
  abort: AbortController,
  log: (line: string) => void = () => {},
): { violation: () => CliError | undefined } {
  let found: CliError | undefined;
  let saidReply = false;
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type !== 'error' || !(s.error instanceof PermissionViolationError) || found) continue;
      if (s.error.operation === 'publish' && s.error.subject.startsWith('$JS.')) continue;
      if (s.error.operation === 'publish' && s.error.subject.startsWith(REPLY_PREFIX)) {
        if (!saidReply) log(`a reply on ${s.error.subject} was refused by the server (it no longer knew the request: restarted since?); the asker asks again`);
        saidReply = true;
        continue;
      }
      found = new CliError(
        'CONSORT_CLI_CREDENTIALS',
        `--creds: the server refused this user's ${s.error.operation} on ${s.error.subject}: the file holds another user's key (each site's file logs in that site alone)`,
        { cause: s.error },
      );
      abort.abort();
    }
  })();
  return { violation: () => found };
}

/** How often a process without its NATS server says it is still trying. */
const OUTAGE_LOG_MS = 30_000;

/**
 * Says when `nc` loses its server and when it is back: during an outage every process of a job
 * goes quiet, and a site's "no coordinator has answered" would otherwise blame the coordinator.
 */
export function sayConnectionChanges(nc: NatsConnection, log: (line: string) => void): void {
  let lost: number | undefined;
  let timer: NodeJS.Timeout | undefined;
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect' && lost === undefined) {
        lost = Date.now();
        log(`lost the connection to the NATS server ${s.server}; reconnecting`);
        timer = setInterval(() => log(`still no NATS server after ${Math.round((Date.now() - lost!) / 1000)} s; still trying`), OUTAGE_LOG_MS).unref();
      } else if (s.type === 'reconnect' && lost !== undefined) {
        clearInterval(timer);
        log(`reconnected to the NATS server ${s.server} after ${((Date.now() - lost) / 1000).toFixed(1)} s`);
        lost = undefined;
      }
    }
    clearInterval(timer);
  })();
}

/** A connection that failed because no server answers there (yet), not because it refused us. */
function unreachable(err: unknown): boolean {
  const text = `${(err as Error).message} ${((err as Error).cause as Error | undefined)?.message ?? ''}`;
  return /connection refused|ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|timeout/i.test(text);
}

/** How often a process waiting for its NATS server says so. */
const WAITING_FOR_SERVER_LOG_MS = 30_000;

/**
 * connectAs, waiting for the server to come up: a site or coordinator started before its NATS
 * server (a hospital's machine booting, a server restarting) tries again every second and says
 * so, rather than exiting. A refusal (credentials) still fails at once.
 */
export async function connectWhenUp(url: string, seedOrFile: string, user: string, log: (line: string) => void): Promise<NatsConnection> {
  let said = 0;
  const since = Date.now();
  for (;;) {
    try {
      return await connectAs(url, seedOrFile, user);
    } catch (err) {
      if (!unreachable(err)) throw err;
      const now = Date.now();
      if (said === 0 || now - said >= WAITING_FOR_SERVER_LOG_MS) {
        said = now;
        const cause = ((err as Error).cause as Error | undefined)?.message ?? (err as Error).message;
        log(
          `no NATS server answers at ${url}${now - since > 1000 ? ` after ${Math.round((now - since) / 1000)} s` : ''} (${cause}); trying again every second (check --nats; Ctrl-C stops)`,
        );
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}
