// `make crds`: writes the FederatedJob CRD generated from the zod schema to crds/.
//   node operator/crd/generate.ts            write it
//   node operator/crd/generate.ts --check    exit 1 if the file in crds/ is not what the schema gives (make lint)
import { readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { CRD_FILE, renderCrdYaml } from './federated-job-crd.ts';

const file = resolve(import.meta.dirname, '../..', CRD_FILE);
const text = renderCrdYaml();
if (process.argv.includes('--check')) {
  let current: string | undefined;
  try {
    current = readFileSync(file, 'utf8');
  } catch {}
  if (current !== text) {
    process.stderr.write(
      `${CRD_FILE} is ${current === undefined ? 'missing' : 'stale'}: core/job changed since it was generated; run \`make crds\` and commit the result\n`,
    );
    process.exit(1);
  }
} else {
  writeFileSync(file, text);
  process.stdout.write(`wrote ${CRD_FILE}\n`);
}
