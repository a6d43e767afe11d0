// `consort operator`: the control plane process. In cluster mode it watches FederatedJobs and runs
// them (controller, round loops, leader election); in site mode (a hospital's own cluster) it
// takes the site's assignments over NATS, checks them against the local policy and runs the
// worker there. Flags are checked with zod; SIGINT/SIGTERM stop it cleanly.
import { hostname } from 'node:os';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { FederatedJobController } from '../../operator/controller/federated-job-controller.ts';
import { KubeClient } from '../../operator/kube/client.ts';
import { LeaderElector } from '../../operator/kube/leader-election.ts';
import { OperatorMetrics } from '../../operator/metrics.ts';
import { JobMetrics } from '../../operator/job-metrics.ts';
import { KubeAuthorizer } from '../../operator/api/auth.ts';
import { ClusterJobSource } from '../../operator/api/job-source.ts';
import { type ApiServer, startApiServer } from '../../operator/api/server.ts';
import { parseAccountSigner } from '../../operator/nats/trust.ts';
import { OPERATOR_USER } from '../../core/protocol/permissions.ts';
import { CliError, fileProblem } from '../errors.ts';
import { reportFailure } from '../failure.ts';
import { connectAs } from '../nats/connect.ts';
import { intFlag, invalidFlags } from '../flags.ts';
import { allowWideSimd } from '../../core/aggregation/wide-simd.ts';

export const OperatorFlags = z
  .object({
    mode: z.enum(['cluster', 'site']).default('cluster'),
    kubeconfig: z.string().min(1).optional(),
    nats: z.string().regex(/^(nats|tls|ws|wss):\/\//, 'must be a nats:// (or tls://, ws://, wss://) URL'),
    natsCreds: z.string().min(1),
    accountKey: z.string().min(1).optional(),
    podNats: z
      .string()
      .regex(/^(nats|tls|ws|wss):\/\//, 'must be a nats:// URL')
      .optional(),
    namespace: z.string().min(1).optional(),
    workers: intFlag(1, 64).default(8),
    leaderElect: z.boolean().default(true),
    leaseNamespace: z
      .string()
      .min(1)
      .default(process.env.POD_NAMESPACE ?? 'consort-system'),
    leaseName: z.string().min(1).default('consort-operator'),
    identity: z.string().min(1).default(`${hostname()}-${process.pid}`),
    site: z.string().min(1).optional(),
    policy: z.string().min(1).optional(),
    metricsPort: intFlag(0, 65_535).optional(),
    metricsAddress: z.union([z.ipv4(), z.ipv6()]).default('0.0.0.0'),
    metricsAuth: z.boolean().default(true),
    quiet: z.boolean().default(false),
  })
  .strict()
  .superRefine((f, ctx) => {
    if (f.mode === 'cluster' && !f.accountKey)
      ctx.addIssue({ code: 'custom', path: ['account-key'], message: "is required in cluster mode (it mints the jobs' NATS users)" });
    if (f.mode === 'site' && !f.site) ctx.addIssue({ code: 'custom', path: ['site'], message: 'is required in site mode' });
    if (f.mode === 'site' && f.metricsPort !== undefined)
      ctx.addIssue({ code: 'custom', path: ['metrics-port'], message: 'is served in cluster mode only (site mode has no controller to measure)' });
  });
export type OperatorFlags = z.infer<typeof OperatorFlags>;

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new CliError('CONSORT_CLI_CREDENTIALS', `${what} ${path}: ${fileProblem(err)}`);
  }
}

export async function operatorCommand(raw: Record<string, unknown>): Promise<number> {
  try {
    const parsed = OperatorFlags.safeParse(raw);
    if (!parsed.success) throw invalidFlags(parsed.error);
    const f = parsed.data;
    const log = (line: string) => {
      if (!f.quiet) process.stderr.write(`${new Date().toISOString()} ${line}\n`);
    };
    if (f.mode === 'site') {
      const { runSiteOperator } = await import('./site-mode.ts');
      return await runSiteOperator(f, log);
    }
    // The operator hosts coordinators and trains nothing: 256-bit folds where the CPU has them.
    allowWideSimd();
    const signer = parseAccountSigner(readText(f.accountKey!, '--account-key'), f.accountKey);
    let client: KubeClient;
    try {
      client = KubeClient.fromKubeconfig(f.kubeconfig);
    } catch (err) {
      throw new CliError('CONSORT_CLI_USAGE', `--kubeconfig: ${(err as Error).message}`);
    }
    const nc = await connectAs(f.nats, f.natsCreds, OPERATOR_USER);
    const metrics = f.metricsPort !== undefined ? new OperatorMetrics() : undefined;
    const controller = new FederatedJobController({
      client,
      nc,
      signer,
      pods: { natsUrl: f.podNats ?? f.nats },
      ...(f.namespace ? { namespace: f.namespace } : {}),
      workers: f.workers,
      log,
      ...(metrics ? { metrics, jobMetrics: new JobMetrics(metrics.registry) } : {}),
    });
    let server: ApiServer | undefined;
    if (metrics) {
      try {
        server = await startApiServer({
          registry: metrics.registry,
          ready: () => controller.synced,
          jobs: new ClusterJobSource({ jobs: controller.jobs, runs: controller.runs, nc }),
          authorizer: new KubeAuthorizer(client),
          metricsAuth: f.metricsAuth,
          port: f.metricsPort!,
          address: f.metricsAddress,
          log,
        });
      } catch (err) {
        await nc.close();
        throw new CliError('CONSORT_CLI_USAGE', `--metrics-port ${f.metricsPort}: cannot listen on ${f.metricsAddress}: ${(err as Error).message}`, {
          cause: err,
        });
      }
      const host = f.metricsAddress.includes(':') ? `[${f.metricsAddress}]` : f.metricsAddress;
      log(
        `operator ${f.identity}: API and metrics on http://${host}:${server.port} (/api/v1, /openapi.json, /metrics${f.metricsAuth ? ' with a token' : ''}, /healthz, /readyz)`,
      );
    }
    let controllerExit: (code: number) => void = () => {};
    const stopped = new Promise<number>((done) => {
      const stop = (code: number) => () => done(code);
      process.once('SIGINT', stop(0));
      process.once('SIGTERM', stop(0));
      controllerExit = done;
    });
    await controller.startInformers();
    log(`operator ${f.identity}: caches synced (${controller.jobs.list().length} FederatedJobs)`);
    let elector: LeaderElector | undefined;
    if (f.leaderElect) {
      elector = new LeaderElector(client, {
        namespace: f.leaseNamespace,
        name: f.leaseName,
        identity: f.identity,
        log,
        onStartedLeading: () => controller.startReconciling(),
        // A leader that lost its lease must stop acting at once: exit, and let the Deployment
        // restart it as a standby (as controller-runtime does).
        onStoppedLeading: () => controllerExit(1),
      });
      elector.start();
    } else controller.startReconciling();
    const code = await stopped;
    log(`operator ${f.identity}: stopping`);
    await elector?.stop();
    await controller.stop();
    await server?.close();
    await nc.drain().catch(() => nc.close());
    return code;
  } catch (err) {
    return reportFailure(err);
  }
}
