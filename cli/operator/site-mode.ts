// `consort operator --mode site`: a hospital's agent. Reads its policy file (zod-checked), connects
// to NATS as the site's agent and to its own cluster's API server, and answers assignments.
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { describeIssues } from '../../core/job/issues.ts';
import { SitePolicy } from '../../core/job/site-policy.ts';
import { KubeClient } from '../../operator/kube/client.ts';
import { SiteAgent } from '../../operator/site/site-agent.ts';
import { CliError, fileProblem } from '../errors.ts';
import { connectAs } from '../nats/connect.ts';
import type { OperatorFlags } from './command.ts';

export function readPolicy(path: string | undefined): SitePolicy {
  if (!path) return SitePolicy.parse({});
  let value: unknown;
  try {
    value = parse(readFileSync(path, 'utf8')) ?? {};
  } catch (err) {
    throw new CliError('CONSORT_CLI_USAGE', `--policy ${path}: ${fileProblem(err)}`);
  }
  const p = SitePolicy.safeParse(value);
  if (!p.success) throw new CliError('CONSORT_CLI_USAGE', `--policy ${path}: not a site policy`, { details: describeIssues(p.error) });
  return p.data;
}

export async function runSiteOperator(f: OperatorFlags, log: (line: string) => void): Promise<number> {
  const policy = readPolicy(f.policy);
  let client: KubeClient;
  try {
    client = KubeClient.fromKubeconfig(f.kubeconfig);
  } catch (err) {
    throw new CliError('CONSORT_CLI_USAGE', `--kubeconfig: ${(err as Error).message}`);
  }
  const site = f.site!;
  const nc = await connectAs(f.nats, f.natsCreds, site);
  const agent = new SiteAgent({ site, nc, client, namespace: f.namespace ?? process.env.POD_NAMESPACE ?? 'default', policy, log });
  agent.start();
  await nc.flush();
  log(`operator (site mode) ${f.identity}: caches synced; policy allows models ${policy.allowedModels.join(', ')}`);
  await new Promise<void>((done) => {
    process.once('SIGINT', () => done());
    process.once('SIGTERM', () => done());
  });
  await agent.stop();
  await nc.drain().catch(() => nc.close());
  return 0;
}
