// consort validate: a job file checked without running it.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { validateCommand } from '../../cli/validate.ts';
import { REPO_ROOT } from '../helpers/consort-cli.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

function sink(): { stream: Writable; text: () => string } {
  let text = '';
  const stream = new Writable({
    write(chunk, _enc, done) {
      text += String(chunk);
      done();
    },
  });
  return { stream, text: () => text };
}

describe('consort validate', () => {
  const tmp = useTmpDirs();

  it('says what a valid job is, warns of rules that cannot act, and names every bad field of an invalid one, exit 2', () => {
    const out = sink();
    const err = sink();
    const example = join(REPO_ROOT, 'manifests/examples/hospitals.yaml');
    expect(validateCommand(example, out.stream, err.stream)).toBe(0);
    expect(out.text()).toBe(`${example}: valid: job hospitals, 5 sites, model mlp, fedavg, 20 rounds, seed 42\n`);
    expect(err.text()).toBe('');

    const dir = tmp('validate');
    const job = (spec: string) => {
      const path = join(dir, `job-${Math.random().toString(36).slice(2)}.yaml`);
      writeFileSync(
        path,
        `apiVersion: consort.dev/v1alpha1\nkind: FederatedJob\nmetadata: {name: x}\nspec:\n  model: {type: mlp}\n  sites: [{name: a, data: {type: synthetic, generator: hospital, samples: 10}}]\n${spec}`,
      );
      return path;
    };
    const warned = sink();
    expect(validateCommand(job('  rounds: 3\n  stopping: {patience: 5}\n'), sink().stream, warned.stream)).toBe(0);
    expect(warned.text()).toContain('warning: stopping.patience 5 cannot stop the job: 3 rounds evaluated every 1 give 3 evaluations');

    const bad = sink();
    expect(validateCommand(job('  classes: [0, 1]\n  stopping: {target: {metric: accuracy, value: 95}}\n'), sink().stream, bad.stream)).toBe(2);
    expect(bad.text()).toContain('not a valid FederatedJob (3 problems) [CONSORT_CLI_JOB_SPEC]');
    expect(bad.text()).toContain('spec.classes[0]: a class name is text: write it in quotes ("0")');
    expect(bad.text()).toContain('spec.stopping.target.value: out of reach');

    // FedAdagrad has no beta2 (its accumulator sums every squared delta): refused, as a field of
    // another strategy is, rather than taken and ignored.
    const adagrad = sink();
    expect(validateCommand(job('  strategy: {name: fedadagrad, beta2: 0.9}\n'), sink().stream, adagrad.stream)).toBe(2);
    expect(adagrad.text()).toContain('spec.strategy: Unrecognized key: "beta2"');
    const adam = sink();
    expect(validateCommand(job('  strategy: {name: fedadam, beta2: 0.9}\n'), sink().stream, adam.stream)).toBe(0);
    expect(validateCommand(job('  strategy: {name: fedadagrad, beta1: 0.5}\n'), sink().stream, sink().stream)).toBe(0);

    // A model file the job names: read as a run would read it.
    const withModel = (path: string) => {
      const file = join(dir, `job-${Math.random().toString(36).slice(2)}.yaml`);
      writeFileSync(
        file,
        `apiVersion: consort.dev/v1alpha1\nkind: FederatedJob\nmetadata: {name: x}\nspec:\n  model: {type: layers, path: ${path}}\n  sites: [{name: a, data: {type: synthetic, generator: hospital, samples: 10}}]\n`,
      );
      return file;
    };
    const missing = sink();
    expect(validateCommand(withModel('models/none.json'), sink().stream, missing.stream)).toBe(2);
    expect(missing.text()).toBe(
      `consort: spec.model.path: models/none.json: no such file (read from ${join(dir, 'models/none.json')}) [CONSORT_CLI_JOB_SPEC]\n`,
    );
    writeFileSync(join(dir, 'weights.json'), '{"weightsManifest": []}');
    const notModel = sink();
    expect(validateCommand(withModel('weights.json'), sink().stream, notModel.stream)).toBe(2);
    expect(notModel.text()).toContain('spec.model.path: weights.json: not a TF.js Layers model (no modelTopology');
    writeFileSync(join(dir, 'model.json'), '{"modelTopology": {"class_name": "Sequential"}}');
    expect(validateCommand(withModel('model.json'), sink().stream, sink().stream)).toBe(0);
  });
});
