// The FederatedJob CustomResourceDefinition, generated from the zod schema (core/job): the API
// server refuses at `kubectl apply` what `FederatedJob.parse` refuses, and `kubectl explain`
// shows the schema's descriptions. `make crds` writes it to crds/; `make lint` checks it is current.
import { stringify } from 'yaml';
import { z } from 'zod';
import { FederatedJobStatus } from '../../core/job/federated-job-status.ts';
import { API_GROUP, FederatedJobSpec, KIND, ObjectMeta } from '../../core/job/federated-job.ts';
import { type JSONSchemaProps, structuralSchema, type ValidationRule, type ZodJsonSchema } from './structural-schema.ts';

export const VERSION = 'v1alpha1';
export const PLURAL = 'federatedjobs';
/** The generated file, relative to the repository root. */
export const CRD_FILE = `crds/${API_GROUP}_${PLURAL}.yaml`;

// zod's refinements are functions, which no JSON Schema can carry: each is restated here in CEL,
// at the node it constrains (paths as the generator names them). test/fixtures/invalid-jobs.ts
// holds a job that breaks each one, and the tests check that zod and the API server both refuse it.
const CROSS_FIELD_RULES: Record<string, ValidationRule[]> = {
  // FederatedJobSpec.superRefine (unique site names: LIST_MAP_KEYS below). The messages cannot
  // say the site count as zod's do: a messageExpression with string(size(self.sites)) is
  // estimated far over the API server's CEL cost budget, and it refuses the CRD.
  spec: [
    {
      rule: '!has(self.sampling) || !has(self.sampling.sitesPerRound) || self.sampling.sitesPerRound <= size(self.sites)',
      message: 'must not exceed the number of sites',
      fieldPath: '.sampling.sitesPerRound',
      reason: 'FieldValueInvalid',
    },
    {
      rule: '!has(self.sampling) || !has(self.sampling.minSites) || self.sampling.minSites <= size(self.sites)',
      message: 'must not exceed the number of sites',
      fieldPath: '.sampling.minSites',
      reason: 'FieldValueInvalid',
    },
    {
      rule: '!has(self.stopping) || (!has(self.stopping.target) && !has(self.stopping.patience)) || !has(self.evaluation) || !has(self.evaluation.fraction) || self.evaluation.fraction == 1.0',
      message: 'must be 1 when stopping has a target or patience: they compare evaluations from round to round, which must score the same sites',
      fieldPath: '.evaluation.fraction',
      reason: 'FieldValueInvalid',
    },
  ],
  // SamplingSpec.refine
  'spec.sampling': [
    {
      rule: '!(has(self.fraction) && has(self.sitesPerRound))',
      message: 'set fraction or sitesPerRound, not both',
      fieldPath: '.sitesPerRound',
      reason: 'FieldValueForbidden',
    },
    {
      rule: '!has(self.sitesPerRound) || !has(self.minSites) || self.minSites <= self.sitesPerRound',
      message: 'must not exceed sitesPerRound: a round asks only that many sites',
      fieldPath: '.minSites',
      reason: 'FieldValueInvalid',
    },
  ],
  // StoppingSpec's target.refine
  'spec.stopping.target': [
    {
      rule: "self.metric == 'loss' ? self.value >= 0.0 : (self.value > 0.0 && self.value <= 1.0)",
      message: 'out of reach: accuracy and auc are fractions in (0, 1] (0.95, not 95), a loss is at least 0',
      fieldPath: '.value',
      reason: 'FieldValueInvalid',
    },
  ],
  // FederatedJobSpec.superRefine: a test set, or a share of train held out, not both
  'spec.sites[*].data': [
    {
      rule: '!(has(self.test) && has(self.testFraction))',
      message: 'set test or testFraction, not both: with a test set, none of train is held out',
      fieldPath: '.testFraction',
      reason: 'FieldValueForbidden',
    },
  ],
  // DataVolume.refine
  'spec.sites[*].volume': [
    {
      rule: 'has(self.claimName) != has(self.hostPath)',
      message: 'set exactly one of claimName and hostPath',
      fieldPath: '.claimName',
      reason: 'FieldValueInvalid',
    },
  ],
};

// A running job's spec cannot change under it, but for `suspend`: the operator writes each job's
// spec into its ConfigMap once, the coordinator's checkpoint holds the job's terms, and sites
// refuse a coordinator of other terms (core/job/terms.ts). An edit used to be ignored or to
// break the job; the API server now refuses it, naming the field. A transition rule runs only
// where the field is there before and after, so the one field without a default (`classes`)
// also may not come or go.
const IMMUTABLE = 'cannot change once the job is created (only spec.suspend can): delete the job and create it again, or create one under another name';
const IMMUTABLE_RULES: Record<string, ValidationRule[]> = Object.fromEntries(
  Object.keys(FederatedJobSpec.shape)
    .filter((key) => key !== 'suspend')
    .map((key) => [`spec.${key}`, [{ rule: 'self == oldSelf', message: IMMUTABLE, reason: 'FieldValueForbidden' }]]),
);
const SPEC_TRANSITION_RULES: ValidationRule[] = [
  { rule: 'has(self.classes) == has(oldSelf.classes)', message: IMMUTABLE, fieldPath: '.classes', reason: 'FieldValueForbidden' },
];

// Lists whose items are keyed: the API server refuses a duplicate key itself (no CEL, no cost),
// and server-side apply merges such lists item by item (one site added by one manager).
const LIST_MAP_KEYS: Record<string, string[]> = {
  'spec.sites': ['name'], // FederatedJobSpec.superRefine: unique site names
  'status.sites': ['name'],
  'status.conditions': ['type'],
};

// Lists of unique scalars: the API server refuses a duplicate item itself.
const LIST_SETS = new Set(['spec.classes']); // FederatedJobSpec.superRefine: unique classes

// What the zod schemas leave undescribed at the top.
const DESCRIPTIONS: Record<string, string> = {
  spec: 'What to train, on which sites, and how: the FederatedJob as `consort run` takes it.',
  status: 'Written by the operator, through the status subresource only.',
};

function toJsonSchema(schema: z.ZodType): ZodJsonSchema {
  return z.toJSONSchema(schema, { target: 'openapi-3.0', io: 'input', unrepresentable: 'throw', cycles: 'throw' }) as ZodJsonSchema;
}

/** The CRD's openAPIV3Schema: spec and status from zod, plus the rules zod holds in functions. */
export function federatedJobSchema(): JSONSchemaProps {
  const used = new Set<string>();
  const extend = (path: string, node: JSONSchemaProps) => {
    const rules = [...(CROSS_FIELD_RULES[path] ?? []), ...(IMMUTABLE_RULES[path] ?? []), ...(path === 'spec' ? SPEC_TRANSITION_RULES : [])];
    if (rules.length > 0) node['x-kubernetes-validations'] = [...(node['x-kubernetes-validations'] ?? []), ...rules];
    const keys = LIST_MAP_KEYS[path];
    if (keys) {
      if (node.type !== 'array' || !keys.every((k) => node.items?.required?.includes(k)))
        throw new Error(`${path}: a list map needs items that require ${keys.join(', ')}`);
      node['x-kubernetes-list-type'] = 'map';
      node['x-kubernetes-list-map-keys'] = keys;
    }
    if (LIST_SETS.has(path)) {
      if (node.type !== 'array') throw new Error(`${path}: a list set must be an array`);
      node['x-kubernetes-list-type'] = 'set';
    }
    if (DESCRIPTIONS[path] && node.description === undefined) node.description = DESCRIPTIONS[path];
    if (rules.length > 0 || keys || LIST_SETS.has(path)) used.add(path);
  };
  const spec = structuralSchema(toJsonSchema(FederatedJobSpec), 'spec', extend);
  const status = structuralSchema(toJsonSchema(FederatedJobStatus), 'status', extend);
  const unused = [...Object.keys(CROSS_FIELD_RULES), ...Object.keys(IMMUTABLE_RULES), ...Object.keys(LIST_MAP_KEYS)].filter((p) => !used.has(p));
  if (unused.length) throw new Error(`no such node in the FederatedJob schema: ${unused.join(', ')} (renamed in core/job?)`);

  // The API server lets a CRD constrain metadata.name (and nothing else in metadata). A job's name
  // becomes part of its Pods' and NATS objects' names: zod keeps it a DNS label.
  const { description: _, ...name } = structuralSchema(toJsonSchema(ObjectMeta.shape.name), 'metadata.name');
  return {
    type: 'object',
    description: `A federated learning job: sites train one model on data that never leaves them; only model updates travel.`,
    required: ['spec'],
    properties: {
      apiVersion: {
        type: 'string',
        description:
          'APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values.',
      },
      kind: {
        type: 'string',
        description:
          'Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to.',
      },
      metadata: { type: 'object', properties: { name } },
      spec,
      status,
    },
  };
}

/** The FederatedJob CustomResourceDefinition (apiextensions.k8s.io/v1). */
export function federatedJobCrd() {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${PLURAL}.${API_GROUP}` },
    spec: {
      group: API_GROUP,
      scope: 'Namespaced',
      names: {
        kind: KIND,
        listKind: `${KIND}List`,
        plural: PLURAL,
        singular: KIND.toLowerCase(),
        shortNames: ['fj'],
        categories: ['consort'],
      },
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: [
            { name: 'Phase', type: 'string', jsonPath: '.status.phase', description: 'Pending, Running, Suspended, Succeeded or Failed.' },
            { name: 'Round', type: 'integer', jsonPath: '.status.round', description: 'Rounds completed.' },
            { name: 'Accuracy', type: 'number', jsonPath: '.status.accuracy', description: 'Global accuracy after the latest evaluated round.' },
            { name: 'Sites', type: 'string', jsonPath: '.status.sitesReady', description: 'Sites whose worker runs, of all sites.' },
            { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
          ],
          schema: { openAPIV3Schema: federatedJobSchema() },
        },
      ],
    },
  };
}

/** The file `make crds` writes: a header, then the CRD as YAML (keys sorted, as controller-gen writes them). */
export function renderCrdYaml(crd: object = federatedJobCrd()): string {
  const header = '# generated from core/job/federated-job.ts by `make crds`; do not edit\n';
  return header + stringify(crd, { sortMapEntries: true, lineWidth: 0 });
}
