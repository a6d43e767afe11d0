#!/usr/bin/env node
// The `consort` command: thin wiring of core, worker and operator.
import { Command, CommanderError, Option } from 'commander';
import { runCommand } from './run/command.ts';
import { reportFailure } from './failure.ts';

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
