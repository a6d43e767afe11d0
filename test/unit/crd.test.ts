// The FederatedJob CRD generated from the zod schema: current in crds/, structural, complete
// (every zod field, description and bound is in it), and refusing what zod refuses (the fixtures;
// the API server's side of that is test/integration/crd-validation.test.ts).
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { FederatedJobStatus } from '../../core/job/federated-job-status.ts';
import { FederatedJob, FederatedJobSpec } from '../../core/job/federated-job.ts';
import { CRD_FILE, federatedJobCrd, renderCrdYaml } from '../../operator/crd/federated-job-crd.ts';
import { type JSONSchemaProps, structuralSchema, type ZodJsonSchema } from '../../operator/crd/structural-schema.ts';
import { INVALID_JOBS, validJob } from '../fixtures/invalid-jobs.ts';
import { VALID_JOBS } from '../fixtures/valid-jobs.ts';

const crd = federatedJobCrd();
const version = crd.spec.versions[0]!;
const root = version.schema.openAPIV3Schema;

/** Every node of a schema with its path (`spec.sites[*].data`). */
function* nodes(node: JSONSchemaProps, path: string): Generator<[string, JSONSchemaProps]> {
  yield [path, node];
  for (const [k, v] of Object.entries(node.properties ?? {})) yield* nodes(v, path ? `${path}.${k}` : k);
  if (node.items) yield* nodes(node.items, `${path}[*]`);
  if (typeof node.additionalProperties === 'object') yield* nodes(node.additionalProperties, `${path}.*`);
}

/** Every property path of zod's own JSON Schema, through union branches, with the nodes found there. */
function zodPaths(node: ZodJsonSchema, path: string, out = new Map<string, ZodJsonSchema[]>()): Map<string, ZodJsonSchema[]> {
  const branches = node.oneOf ?? node.anyOf;
  if (branches) {
    for (const b of branches) zodPaths(b, path, out);
    return out;
  }
  out.set(path, [...(out.get(path) ?? []), node]);
  for (const [k, v] of Object.entries(node.properties ?? {})) zodPaths(v, `${path}.${k}`, out);
  if (node.items) zodPaths(node.items, `${path}[*]`, out);
  if (typeof node.additionalProperties === 'object') zodPaths(node.additionalProperties, `${path}.*`, out);
  return out;
}

function at(path: string): JSONSchemaProps | undefined {
  for (const [p, n] of nodes(root, '')) if (p === path) return n;
  return undefined;
}

const zodJson = (schema: z.ZodType) => z.toJSONSchema(schema, { target: 'openapi-3.0', io: 'input' }) as ZodJsonSchema;

function issuePaths(job: unknown): string[] {
  const r = FederatedJob.safeParse(job);
  if (r.success) return [];
  const fmt = (path: PropertyKey[]) => path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join('');
  return r.error.issues.flatMap((i) => (i.code === 'unrecognized_keys' ? i.keys.map((k) => fmt([...i.path, k])) : [fmt(i.path)]));
}

describe('the FederatedJob CRD', () => {
  it(`is current in ${CRD_FILE}`, () => {
    const committed = readFileSync(resolve(import.meta.dirname, '../..', CRD_FILE), 'utf8');
    expect(committed === renderCrdYaml(), `${CRD_FILE} is stale: run \`make crds\``).toBe(true);
    expect(committed.split('\n')[0]).toBe('# generated from core/job/federated-job.ts by `make crds`; do not edit');
  });

  it('names, scope, short name, status subresource and printer columns', () => {
    expect(crd.metadata.name).toBe('federatedjobs.consort.dev');
    expect(crd.spec.scope).toBe('Namespaced');
    expect(crd.spec.names).toMatchObject({
      kind: 'FederatedJob',
      plural: 'federatedjobs',
      singular: 'federatedjob',
      shortNames: ['fj'],
      categories: ['consort'],
    });
    expect(version).toMatchObject({ name: 'v1alpha1', served: true, storage: true, subresources: { status: {} } });
    const columns = version.additionalPrinterColumns.map((c) => [c.name.toUpperCase(), c.jsonPath, c.type]);
    expect(columns).toEqual([
      ['PHASE', '.status.phase', 'string'],
      ['ROUND', '.status.round', 'integer'],
      ['ACCURACY', '.status.accuracy', 'number'],
      ['SITES', '.status.sitesReady', 'string'],
      ['AGE', '.metadata.creationTimestamp', 'date'],
    ]);
  });

  it('is structural: every node typed, no additionalProperties beside properties, no oneOf/anyOf/allOf/not', () => {
    let count = 0;
    for (const [path, node] of nodes(root, '')) {
      count++;
      const untyped = node['x-kubernetes-int-or-string'] || node['x-kubernetes-preserve-unknown-fields'];
      expect(node.type !== undefined || untyped, `${path} has no type`).toBeTruthy();
      expect(node.properties !== undefined && node.additionalProperties !== undefined, `${path}: properties and additionalProperties`).toBe(false);
      for (const k of ['oneOf', 'anyOf', 'allOf', 'not', '$ref', 'const']) expect(Object.keys(node), path).not.toContain(k);
      if (node.required) for (const r of node.required) expect(node.properties?.[r], `${path} requires an undeclared ${r}`).toBeDefined();
      for (const rule of node['x-kubernetes-validations'] ?? []) {
        expect(rule.message, `${path}: ${rule.rule}`).toBeTruthy();
        if (rule.fieldPath) expect(at(`${path}${rule.fieldPath}`), `${path}: fieldPath ${rule.fieldPath}`).toBeDefined();
      }
    }
    expect(count).toBeGreaterThan(100);
    // Unique site names are the API server's own check (a list map), no CEL.
    expect(at('spec.sites')).toMatchObject({ 'x-kubernetes-list-type': 'map', 'x-kubernetes-list-map-keys': ['name'], maxItems: 10_000 });
    expect(at('metadata.name')).toMatchObject({ maxLength: 63, pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' });
  });

  it('holds every field of the zod schema, with its description and bounds', () => {
    const want = new Map([...zodPaths(zodJson(FederatedJobSpec), 'spec'), ...zodPaths(zodJson(FederatedJobStatus), 'status')]);
    expect(want.size).toBeGreaterThan(100);
    for (const [path, variants] of want) {
      const node = at(path);
      expect(node, `${path} is missing`).toBeDefined();
      for (const v of variants) {
        // A union variant's own description goes to its discriminator's.
        const described = [node!.description, ...Object.values(node!.properties ?? {}).map((c) => c.description)].join('\n');
        if (v.description) expect(described, `${path}: description`).toContain(v.description);
        for (const k of ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'minLength', 'maxLength', 'pattern', 'minItems', 'maxItems'] as const) {
          if (v[k] !== undefined && Math.abs(Number(v[k])) !== Number.MAX_SAFE_INTEGER) expect(node![k], `${path}: ${k}`).toEqual(v[k]);
        }
        // A union's discriminator gathers every variant's value; a plain enum is kept as is.
        if (v.enum) expect(node!.enum, `${path}: enum`).toEqual(expect.arrayContaining(v.enum));
      }
    }
    // Defaults the API server applies are zod's (only fields every variant shares keep theirs).
    expect(at('spec.rounds')!.default).toBe(20);
    expect(at('spec.strategy')!.default).toEqual({ name: 'fedavg', serverLearningRate: 1 });
    expect(at('spec.model.hidden')!.default).toBeUndefined();
    expect(at('spec.model.hidden')!.description).toContain('Default: [64,32]');
    expect(at('spec.sites[*].nodeSelector')).toEqual({ type: 'object', description: expect.any(String), additionalProperties: { type: 'string' } });
  });

  it('turns each discriminated union into one object with CEL rules for its variants', () => {
    const data = at('spec.sites[*].data')!;
    expect(data.required).toEqual(['type']);
    expect(data.properties!.type!.enum).toEqual(['csv', 'imageFolder', 'synthetic']);
    expect(data.properties!.generator!.enum).toEqual(['hospital', 'fedprox', 'iid']);
    const rules = Object.fromEntries((data['x-kubernetes-validations'] ?? []).map((r) => [`${r.reason} ${r.fieldPath}`, r.rule]));
    expect(rules['FieldValueRequired .labelColumn']).toBe("has(self.labelColumn) || self.type != 'csv'");
    expect(rules['FieldValueRequired .generator']).toBe("has(self.generator) || self.type != 'synthetic'");
    // An absent generator is the generator rule's to report, not every generator-specific field's.
    expect(rules['FieldValueForbidden .alpha']).toBe("!has(self.alpha) || (self.type == 'synthetic' && (!has(self.generator) || self.generator == 'fedprox'))");
    expect(rules['FieldValueRequired .device']).toBe(
      "has(self.device) || !(self.type == 'synthetic' && has(self.generator) && self.generator in ['fedprox', 'iid'])",
    );
    expect(at('spec.model')!['x-kubernetes-validations']).toContainEqual({
      rule: "has(self.path) || self.type != 'layers'",
      message: 'type layers requires path',
      fieldPath: '.path',
      reason: 'FieldValueRequired',
    });
  });
});

describe('structuralSchema refuses what it cannot map', () => {
  const convert = (schema: z.ZodType) => structuralSchema(zodJson(schema), 'x');

  it('a union without a discriminator', () => {
    expect(() => convert(z.union([z.object({ a: z.string() }), z.object({ b: z.string() })]))).toThrow(/without a discriminator/);
  });
  it('variants that give one field different bounds', () => {
    const u = z.discriminatedUnion('k', [z.object({ k: z.literal('a'), n: z.number().max(1) }), z.object({ k: z.literal('b'), n: z.number().max(2) })]);
    expect(() => convert(u)).toThrow(/x\.n: the variants a and b give it different schemas/);
  });
  it('a keyword with no CRD counterpart', () => {
    expect(() => structuralSchema({ type: 'string', contentEncoding: 'base64' }, 'x')).toThrow(/"contentEncoding"/);
  });
  it('a node without a type', () => {
    expect(() => convert(z.object({ v: z.unknown() }))).toThrow(/x\.v: no type/);
  });
});

describe('zod refuses every manifest the CRD refuses, naming the same field', () => {
  it('the base job of the fixtures is valid', () => {
    expect(issuePaths(validJob())).toEqual([]);
  });

  it.each(INVALID_JOBS.map((j) => [j.name, j] as const))('%s', (_name, j) => {
    const paths = issuePaths(j.job);
    expect(paths.length, 'zod accepts it').toBeGreaterThan(0);
    expect(paths).toContain(j.zodField ?? j.field);
  });

  it('at least 24 of them, all with distinct names', () => {
    expect(INVALID_JOBS.length).toBeGreaterThanOrEqual(24);
    expect(new Set(INVALID_JOBS.map((j) => j.name)).size).toBe(INVALID_JOBS.length);
  });

  it('says what to write where it can: class names YAML read as numbers, a target out of reach', () => {
    const messages = (edit: (spec: Record<string, unknown>) => void) => {
      const job = validJob();
      edit(job.spec);
      const r = FederatedJob.safeParse(job);
      return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    };
    expect(messages((s) => (s.classes = [0, 1]))).toEqual([
      'spec.classes.0: a class name is text: write it in quotes ("0")',
      'spec.classes.1: a class name is text: write it in quotes ("1")',
    ]);
    // The CRD's list-type set refuses "1" twice; only zod knows that "1.0" is the class "1" too (as every loader reads it).
    expect(messages((s) => (s.classes = ['0', '1', '1.0']))).toEqual([
      'spec.classes.2: duplicate class "1.0" (also classes[1], "1": a number is one class however it is written)',
    ]);
    // The label among the features: refused before any run (the loader refused it only once running).
    expect(
      messages((s) => {
        (s.sites as Array<Record<string, unknown>>)[0]!.data = { type: 'csv', train: 'a.csv', labelColumn: 'sepsis', featureColumns: ['age', 'sepsis'] };
      }),
    ).toEqual(['spec.sites.0.data.featureColumns.1: "sepsis" is the labelColumn: a feature must not be the label']);
    // What the job file alone says of the sites' examples: one kind, one image size, a cnn for images only, and not too deep.
    const image = (name: string, width: number, channels = 1) => ({ name, data: { type: 'imageFolder', train: name, width, height: width, channels } });
    expect(
      messages((s) => {
        s.sites = [image('a', 28), (s.sites as unknown[])[0]];
      }),
    ).toEqual([
      expect.stringMatching(
        /^spec\.sites\.1\.data\.type: sites of one job all give images or all give tables: site "a" has an imageFolder, site "\S+" \w+ data$/,
      ),
    ]);
    expect(
      messages((s) => {
        s.sites = [image('a', 28), image('b', 32, 3)];
      }),
    ).toEqual(['spec.sites.1.data: every imageFolder site gives the model images of one size: site "a" 28x28x1, site "b" 32x32x3 (width x height x channels)']);
    expect(messages((s) => (s.model = { type: 'cnn' }))).toEqual([
      expect.stringMatching(/^spec\.model\.type: a cnn takes images: site "\S+" has \w+ data \(use mlp or logistic for tables\)$/),
    ]);
    expect(
      messages((s) => {
        s.model = { type: 'cnn', filters: [8, 8, 8, 8, 8] };
        s.sites = [image('a', 16), image('b', 16)];
      }),
    ).toEqual(['spec.model.filters: a cnn of 5 blocks halves a 16x16 image 5 times, below one pixel; use at most 4 blocks, or larger images']);
    expect(messages((s) => (s.stopping = { target: { metric: 'auc', value: 90 } }))).toEqual([
      'spec.stopping.target.value: out of reach: accuracy and auc are fractions in (0, 1] (0.95, not 95), a loss is at least 0',
    ]);
  });

  it('and accepts the jobs that set every field of every variant', () => {
    for (const job of VALID_JOBS) expect(issuePaths(job), job.metadata.name).toEqual([]);
  });
});
