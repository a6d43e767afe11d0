// `make cluster`: the local control plane the tests use (etcd, kube-apiserver, controller manager,
// scheduler, nats-server with the Consort account, the pod runner that plays the kubelet) and one
// operator, kept running until Ctrl-C or `make cluster-down`. Prints the lines to paste once ready.
// A development tool: the pod runner is test infrastructure and never ships.
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { freePort } from '../cli/nats/server.ts';
import { ConsortCluster } from '../test/helpers/consort-cluster.ts';

const STATE = resolve(import.meta.dirname, '../out/cluster');
const verbose = process.argv.includes('--verbose');

mkdirSync(STATE, { recursive: true });
const say = (line: string) => process.stdout.write(`${line}\n`);
say(
  'starting etcd, kube-apiserver, controller manager, scheduler, nats-server, pod runner and the operator (first time: builds Kubernetes, several minutes)...',
);
const cluster = await ConsortCluster.start({ log: verbose ? (l) => process.stderr.write(`${l}\n`) : () => {} });
let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  say('\nstopping the cluster...');
  await cluster.stop();
  rmSync(join(STATE, 'pid'), { force: true });
  say('stopped.');
  process.exit(0);
};
process.on('SIGINT', () => void stop());
process.on('SIGTERM', () => void stop());
const apiPort = await freePort();
try {
  await cluster.startOperator({ identity: 'operator', args: ['--metrics-port', String(apiPort), '--metrics-address', '127.0.0.1'] });
} catch (err) {
  process.stderr.write(`the operator did not start: ${(err as Error).message}\n`);
  await stop();
}
writeFileSync(join(STATE, 'pid'), `${process.pid}\n`);
writeFileSync(join(STATE, 'env'), `export KUBECONFIG=${cluster.cp.kubeconfig}\nexport PATH=${cluster.cp.bin}:$PATH\n`);
say('');
say('the cluster is ready. In another shell:');
say(`export KUBECONFIG=${cluster.cp.kubeconfig}`);
say(`export PATH=${cluster.cp.bin}:$PATH   # kubectl`);
say('kubectl apply -f manifests/examples/hospitals.yaml && kubectl get fj -w');
say(
  `curl -H "Authorization: Bearer ${cluster.cp.users.admin!.token}" http://127.0.0.1:${apiPort}/api/v1/namespaces/default/federatedjobs/hospitals   # the operator's API`,
);
say('');
say(`NATS: ${cluster.nats.url} (operator credentials ${cluster.operatorCreds}). Ctrl-C or \`make cluster-down\` stops everything.`);
// The operator's log, so that the user sees the rounds go by.
for (const p of cluster.operators) p.child.stderr?.on('data', (c: Buffer) => process.stderr.write(c));
setInterval(() => {
  if (cluster.operators.every((p) => p.exited) && !stopping) {
    process.stderr.write('the operator exited; stopping the cluster\n');
    void stop();
  }
}, 2000);
