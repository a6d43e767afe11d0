// A real nats-server for tests, stopped in afterAll even when tests fail (cli/nats/server.ts
// does the work; `consort run --nats embedded` uses the same module).
import { afterAll, beforeAll } from 'vitest';
import { NatsServer, type NatsServerOptions } from '../../cli/nats/server.ts';
import { createNatsTrust, type NatsTrust, renderClusterNatsConfig } from '../../operator/nats/trust.ts';

export { freePort, NatsServer, type NatsServerOptions, natsServerBinary } from '../../cli/nats/server.ts';

export interface NatsServerHandle {
  /** The running server (from beforeAll on). */
  readonly server: NatsServer;
  readonly url: string;
}

/** A server for a test file: started in beforeAll, stopped in afterAll even when tests fail. */
export function useNatsServer(opts: NatsServerOptions | (() => NatsServerOptions | Promise<NatsServerOptions>) = {}): NatsServerHandle {
  let server: NatsServer | undefined;
  beforeAll(async () => {
    server = await NatsServer.start(typeof opts === 'function' ? await opts() : opts);
  });
  afterAll(async () => {
    await server?.stop();
  });
  const get = (): NatsServer => {
    if (!server) throw new Error('useNatsServer: the server starts in beforeAll; use it inside tests or hooks');
    return server;
  };
  return {
    get server() {
      return get();
    },
    get url() {
      return get().url;
    },
  };
}

/**
 * A server for a test file configured as `consort nats-config --cluster` renders it, of a trust
 * made for the file: its users log in with .creds minted from `trust.signer` (from beforeAll on).
 */
export function useClusterNatsServer(): NatsServerHandle & { readonly trust: NatsTrust } {
  let trust: NatsTrust | undefined;
  const nats = useNatsServer(async () => {
    trust = await createNatsTrust();
    return { config: renderClusterNatsConfig(trust, { listen: '127.0.0.1:4222', storeDir: '/var/lib/nats' }) };
  });
  return {
    get server() {
      return nats.server;
    },
    get url() {
      return nats.url;
    },
    get trust() {
      if (!trust) throw new Error('useClusterNatsServer: the trust is made in beforeAll; use it inside tests or hooks');
      return trust;
    },
  };
}
