// The test harness's nats-server: free ports, JetStream data that survives a restart (clean or
// a crash) on the same port, clients that reconnect, and no process left after stop().
import { Objm } from '@nats-io/obj';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { existsSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { NatsServer, useNatsServer } from '../helpers/nats-server.ts';

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Resolves at the connection's next 'reconnect' status. */
async function reconnected(nc: NatsConnection): Promise<void> {
  for await (const s of nc.status()) if (s.type === 'reconnect') return;
}

describe('useNatsServer', () => {
  const nats = useNatsServer();
  const clients: NatsConnection[] = [];
  afterAll(async () => {
    await Promise.all(clients.map((nc) => nc.close()));
  });

  it('runs a server with JetStream on a loopback port', async () => {
    expect(nats.url).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/);
    const nc = await connect({ servers: nats.url });
    clients.push(nc);
    expect(nc.info?.jetstream).toBe(true);
  });

  it.each(['SIGTERM', 'SIGKILL'] as const)('keeps the port and the JetStream data across a restart (%s), and clients reconnect', async (signal) => {
    const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 50, reconnectJitter: 50 });
    clients.push(nc);
    const objm = new Objm(nc);
    const bucket = `harness-${signal.toLowerCase()}`;
    await (await objm.create(bucket)).putBlob({ name: 'kept' }, new TextEncoder().encode(`written before ${signal}`));
    const { port, pid } = nats.server;
    const back = reconnected(nc);
    await nats.server.restart({ signal, downMs: 100 });
    expect(nats.server.port).toBe(port);
    expect(nats.server.pid).not.toBe(pid);
    expect(alive(pid!)).toBe(false);
    await back;
    const blob = await (await objm.open(bucket)).getBlob('kept');
    expect(new TextDecoder().decode(blob!)).toBe(`written before ${signal}`);
  });
});

describe('NatsServer', () => {
  it('gives each server its own ports and store, and stop() leaves no process and no folder', async () => {
    const [a, b] = await Promise.all([NatsServer.start(), NatsServer.start({ jetstream: false })]);
    try {
      expect(a.port).not.toBe(b.port);
      const nc = await connect({ servers: b.url });
      expect(nc.info?.jetstream ?? false).toBe(false);
      await nc.close();
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
    for (const s of [a, b]) {
      expect(s.running).toBe(false);
      expect(existsSync(s.dir)).toBe(false);
    }
    await a.stop(); // twice is fine
  });

  it('reports a server that cannot start with its log, and cleans up', async () => {
    const err = await NatsServer.start({ config: 'this is { not a config', startTimeoutMs: 10_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/exited during start-up/);
  });
});
