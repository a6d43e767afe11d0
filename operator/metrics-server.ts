// The operator's HTTP endpoint for Prometheus and the kubelet's probes: /metrics, /healthz
// (the process answers) and /readyz (its caches are synced). node:http alone, for now; the
// operator's API (fastify) will take these routes over.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { OperatorMetrics } from './metrics.ts';

export interface MetricsServerOptions {
  metrics: OperatorMetrics;
  /** 0 picks a free port. */
  port: number;
  /** In a Pod 0.0.0.0 (Prometheus and the kubelet come from outside); tests use 127.0.0.1. */
  address: string;
  ready: () => boolean;
  log?: (line: string) => void;
}

export interface MetricsServer {
  readonly port: number;
  close(): Promise<void>;
}

export async function startMetricsServer(o: MetricsServerOptions): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const text = (status: number, body: string) => {
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return text(405, 'method not allowed\n');
    if (path === '/healthz') return text(200, 'ok\n');
    if (path === '/readyz') return o.ready() ? text(200, 'ok\n') : text(503, 'caches not synced\n');
    if (path !== '/metrics') return text(404, 'not found\n');
    o.metrics.expose().then(
      ({ contentType, body }) => {
        res.writeHead(200, { 'content-type': contentType });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (err: unknown) => {
        o.log?.(`metrics: ${(err as Error).message}`);
        text(500, 'could not collect the metrics\n');
      },
    );
  });
  // Keep-alive connections of a scraper must not hold close() up.
  server.keepAliveTimeout = 5000;
  await new Promise<void>((done, fail) => {
    server.once('error', fail);
    server.listen(o.port, o.address, () => {
      server.off('error', fail);
      done();
    });
  });
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    close: () =>
      new Promise<void>((done) => {
        server.close(() => done());
        server.closeAllConnections();
      }),
  };
}
