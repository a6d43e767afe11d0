#!/usr/bin/env node
// The `consort` command: thin wiring of core, worker and operator.
import { Command, CommanderError, Option } from 'commander';
import { coordinatorCommand, siteCommand } from './federation/commands.ts';
import { natsConfigCommand } from './nats/config.ts';
import { runCommand } from './run/command.ts';
import { validateCommand } from './validate.ts';
import { reportFailure } from './failure.ts';
import { operatorCommand } from './operator/command.ts';
import { tuneGcForThroughput } from '../core/gc-tuning.ts';

tuneGcForThroughput();

// `consort ... | head` closes stdout early: that is the reader's choice, not a failure.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});

const program = new Command()
  .name('consort')
  .description('Federated learning across sites that never pool their data: train a FederatedJob locally or on Kubernetes.')
  // A usage error is one line in the same form as every other error, then a hint; not the
  // whole help text, which buries the line that says what is wrong.
  .configureOutput({ outputError: (str, write) => write(`consort: ${str.trim().replace(/^error: /, '')} [CONSORT_CLI_USAGE]\n`) })
  .showHelpAfterError('  (add --help for usage)')
  .exitOverride();

program
  .command('run')
  .description('Train a FederatedJob on this machine: every site as a local worker, the same round loop as the operator.')
  .argument('<job>', 'FederatedJob manifest (YAML), the same file `kubectl apply` takes')
  .option('--out <dir>', 'where to write report.html, report.json, the model and its card (default: out/<job name>)')
  .option('--seed <n>', 'override spec.seed (every random choice derives from it)')
  .option('--rounds <n>', 'override spec.rounds')
  .option('--baselines', 'also train each site alone and all data pooled, and compare', false)
  .addOption(
    new Option('--backend <name>', 'TF.js backend (default: spec.training.backend, then auto)').choices([
      'auto',
      'tensorflow-gpu',
      'tensorflow',
      'wasm',
      'cpu',
    ]),
  )
  .option('--threads <n>', 'worker threads for the sites (default: one per core)')
  .option('--nats <url>', 'run the coordinator and each site as separate processes over this NATS server; "embedded" starts one')
  .option('--metrics-port <port>', "serve the job's Prometheus metrics at /metrics on this port while it runs (0: any free port)")
  .option('--metrics-address <ip>', 'the address the metrics port listens on', '127.0.0.1')
  .option('--quiet', 'no progress output', false)
  .addHelpText(
    'after',
    `
Writes into --out: report.html (open offline), report.json (documented in core/report/README.md),
model.safetensors, tfjs/model.json + tfjs/weights.bin, MODEL_CARD.md. Nothing is left there
if the run fails. Exit status: 0 done, 2 bad input (job file, flag or data), 1 run failure.`,
  )
  .action(async (job: string, flags: Record<string, unknown>) => {
    process.exitCode = await runCommand(job, flags);
  });

program
  .command('validate')
  .description(
    "Check a FederatedJob file without running it: its schema (every bad field named), and the rules it sets that cannot act; the sites' data is not read.",
  )
  .argument('<job>', 'FederatedJob manifest (YAML)')
  .addHelpText('after', '\nExit status: 0 valid (warnings on stderr), 2 invalid.')
  .action((job: string) => {
    process.exitCode = validateCommand(job);
  });

program
  .command('nats-config')
  .description(
    "Write a nats-server configuration: a job's own (one account, an NKey user per site and for the coordinator), or with --cluster the shared server of every job (JWT auth, users minted per job).",
  )
  .argument('[job]', 'FederatedJob manifest (YAML): its name, namespace and sites name the account, users, subjects and buckets (required unless --cluster)')
  .requiredOption('--out <dir>', 'folder to write into (created; must not already hold a configuration: new keys would lock out every site)')
  .option('--cluster', 'configure one long-running server for every job: it trusts an operator JWT and the Consort account; no <job>', false)
  .option('--listen <host:port>', 'address the server listens on for clients', '127.0.0.1:4222')
  .option('--store <dir>', "JetStream's store directory, where models, updates and checkpoints live (default: <out>/jetstream)")
  .option(
    '--site-agent <site>',
    "instead: mint the credentials of a hospital's site agent (consort operator --mode site) for a cluster that --cluster configured; needs --account-key",
  )
  .option('--account-key <file>', "the cluster's account.nk (with --site-agent)")
  .addHelpText(
    'after',
    `
With <job>, writes into --out: nats-server.conf (start it with nats-server -c), coordinator.nk
and sites/<site>.nk (NKey seeds, mode 0600: give each site only its own), keys.json (the public
keys the coordinator trusts to verify signed updates).
With --cluster, writes into --out: nats-server.conf (operator JWT, system and Consort accounts
preloaded, JetStream), operator.creds (the Consort operator's user: any job, mode 0600) and
account.nk (the account's signing key, mode 0600: it mints each job's site and coordinator
.creds with least-privilege permissions and an expiry; the server is never reloaded).
With --site-agent NAME --account-key account.nk, writes <NAME>-agent.creds into --out (mode
0600): the user of that hospital's site agent, which may only receive its site's assignments
and answer them.
Exit status: 0 written, 2 bad input, 1 the files cannot be written.`,
  )
  .action(async (job: string | undefined, flags: Record<string, unknown>) => {
    process.exitCode = await natsConfigCommand(job, flags);
  });

const backendOption = () =>
  new Option('--backend <name>', 'TF.js backend (default: spec.training.backend, then auto)').choices(['auto', 'tensorflow-gpu', 'tensorflow', 'wasm', 'cpu']);

program
  .command('coordinator')
  .description("Run a job's round loop alone over NATS: sites are separate processes (consort site), anywhere.")
  .argument('<job>', 'FederatedJob manifest (YAML)')
  .requiredOption('--nats <url>', 'NATS server URL, e.g. nats://127.0.0.1:4222')
  .requiredOption('--creds <file>', "the coordinator's credentials: coordinator.nk from consort nats-config, or a .creds file")
  .requiredOption('--keys <file>', 'keys.json from consort nats-config: the site keys whose signatures are accepted')
  .option('--out <dir>', 'where to write the report and model (default: out/<job name>)')
  .option('--seed <n>', 'override spec.seed (the sites must be given the same)')
  .option('--rounds <n>', 'override spec.rounds')
  .option(
    '--join-timeout <seconds>',
    'wait this long for every site, then start with a quorum (sampling.minSites) (default: spec.coordinator.joinTimeoutSeconds)',
  )
  .option('--quiet', 'no log lines', false)
  .addHelpText(
    'after',
    `
A checkpoint goes into the job's state bucket after every round: start the coordinator again
after a crash and it resumes there. Exit status: 0 done, 2 bad input, 1 run failure.`,
  )
  .action(async (job: string, flags: Record<string, unknown>) => {
    process.exitCode = await coordinatorCommand(job, flags);
  });

program
  .command('site')
  .description("Run one site of a job over NATS: its data stays here; it trains on the coordinator's tasks and sends signed updates.")
  .requiredOption('--job <file>', 'FederatedJob manifest (YAML): the site reads its own data entry from it')
  .requiredOption('--site <name>', 'which of spec.sites this is')
  .requiredOption('--nats <url>', 'NATS server URL')
  .requiredOption('--creds <file>', "the site's credentials: sites/<site>.nk from consort nats-config, or its .creds file")
  .addOption(backendOption())
  .option('--seed <n>', "override spec.seed (the coordinator's must be the same)")
  .option('--data-dir <dir>', "resolve the site's relative data paths against this folder (default: the job file's folder)")
  .option(
    '--state <dir>',
    'keep what only this site holds between rounds (the error-feedback residual of top-k, int8 or fp16; SCAFFOLD control variate) in this folder, so that a restarted site carries on where it stopped',
  )
  .option('--quiet', 'no log lines', false)
  .addHelpText('after', '\nStarts before or after the coordinator; joins the next round; exits when the job is done.')
  .action(async (flags: Record<string, unknown>) => {
    process.exitCode = await siteCommand(flags);
  });

program
  .command('operator')
  .description("Run the Kubernetes operator: FederatedJobs in, trained models out (cluster mode), or a hospital's site agent (site mode).")
  .addOption(
    new Option('--mode <mode>', "cluster: watch FederatedJobs and run them; site: run this site's assignments under a local policy")
      .choices(['cluster', 'site'])
      .default('cluster'),
  )
  .option('--kubeconfig <file>', 'kubeconfig (default: $KUBECONFIG, ~/.kube/config, or the in-cluster ServiceAccount)')
  .requiredOption('--nats <url>', 'required: the NATS server URL the operator connects to')
  .requiredOption(
    '--nats-creds <file>',
    "required: the operator's NATS credentials (operator.creds from consort nats-config --cluster; site mode: <site>-agent.creds from consort nats-config --site-agent)",
  )
  .option('--account-key <file>', "cluster mode, required: account.nk from consort nats-config --cluster, which mints every job's NATS users")
  .option('--pod-nats <url>', 'the NATS URL as worker Pods reach it (default: --nats)')
  .option('--namespace <ns>', 'watch this namespace only (default: all)')
  .option('--workers <n>', 'reconciles run in parallel (default 8)')
  .option('--no-leader-elect', 'do not take a Lease first (one replica only)')
  .option('--lease-namespace <ns>', 'namespace of the leader-election Lease (default: $POD_NAMESPACE or consort-system)')
  .option('--lease-name <name>', 'name of the leader-election Lease', 'consort-operator')
  .option('--identity <id>', "this replica's name in the Lease (default: host-pid)")
  .option('--site <name>', "site mode, required: this site's name")
  .option(
    '--policy <file>',
    "site mode: the local policy (YAML): allowed jobs and models, maximum rounds and resources (default: the policy schema's defaults)",
  )
  .option(
    '--metrics-port <port>',
    'cluster mode: serve the HTTP API (/api/v1, /openapi.json), /metrics (Prometheus), /healthz and /readyz on this port (0: any free port; default: none)',
  )
  .option('--metrics-address <ip>', 'the address the metrics port listens on', '0.0.0.0')
  .option('--no-metrics-auth', 'serve /metrics without a token (default: a bearer token allowed to get the path /metrics, as kube-rbac-proxy)')
  .option('--quiet', 'no log lines', false)
  .addHelpText('after', '\nExit status: 0 stopped by SIGINT/SIGTERM, 1 lost its leadership or failed, 2 bad flags or files.')
  .action(async (flags: Record<string, unknown>) => {
    process.exitCode = await operatorCommand(flags);
  });

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // Commander has printed its message; --help and --version exit 0, usage errors 2.
    process.exitCode = err.exitCode === 0 ? 0 : 2;
  } else {
    process.exitCode = reportFailure(err);
  }
}
