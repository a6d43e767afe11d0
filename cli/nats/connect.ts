// A connection as one user of a job's NATS account: NKey authentication, the user's own inbox
// prefix (its permissions allow replies there only), and reconnects that never give up.
import { readFileSync } from 'node:fs';
import { type ConnectionOptions, connect, type NatsConnection, nkeyAuthenticator } from '@nats-io/transport-node';
import { inboxPrefix } from '../../core/protocol/subjects.ts';
import { CliError } from '../errors.ts';

const SEED = /^SU[A-Z2-7]{56}$/;

/** The user seed in `seedOrFile`: a seed itself (SU...) or the path of a seed file (as `consort nats-config` writes). */
export function readSeed(seedOrFile: string): string {
  if (SEED.test(seedOrFile)) return seedOrFile;
  let text: string;
  try {
    text = readFileSync(seedOrFile, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CliError('CONSORT_CLI_CREDENTIALS', `${seedOrFile}: ${code === 'ENOENT' ? 'no such file' : (err as Error).message}`, { cause: err });
  }
  const seed = text.split('\n').find((l) => SEED.test(l.trim()));
  if (!seed) throw new CliError('CONSORT_CLI_CREDENTIALS', `${seedOrFile}: no NKey user seed (a line SU...) in the file`);
  return seed.trim();
}

/**
 * Connects to `url` as `user` ("_coordinator" or a site name). Reconnects forever, every 250 ms
 * plus up to 250 ms of jitter, so that a restarted server finds every client back; `extra`
 * overrides any option. A refused connection (bad credentials, no server) is a CliError whose
 * cause is nats.js's error.
 */
export async function connectAs(url: string | string[], seedOrFile: string, user: string, extra: ConnectionOptions = {}): Promise<NatsConnection> {
  const seed = new TextEncoder().encode(readSeed(seedOrFile));
  try {
    return await connect({
      servers: url,
      authenticator: nkeyAuthenticator(seed),
      inboxPrefix: inboxPrefix(user),
      name: `consort ${user}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      reconnectJitter: 250,
      pingInterval: 20_000,
      ...extra,
    });
  } catch (err) {
    throw new CliError('CONSORT_CLI_NATS', `cannot connect to ${String(url)} as ${user}: ${(err as Error).message}`, { cause: err });
  }
}
