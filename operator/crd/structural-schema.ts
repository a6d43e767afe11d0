// A zod schema's JSON Schema (z.toJSONSchema, target openapi-3.0) turned into a Kubernetes
// *structural* schema: every node typed, no additionalProperties beside properties, no
// oneOf/anyOf. A discriminated union becomes one object that holds every variant's properties,
// an enum on its discriminator, and CEL rules that require and forbid the variant-specific
// fields, so that the API server refuses what zod refuses and `kubectl explain` shows it all.
// Anything this module does not understand throws at generation time rather than loosening the
// CRD silently: a new zod construct must be taught here, or the CRD would accept what zod refuses.
//   https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema
import { isDeepStrictEqual } from 'node:util';

/** A CEL rule (`x-kubernetes-validations` entry). */
export interface ValidationRule {
  rule: string;
  message?: string;
  messageExpression?: string;
  /** Relative to the node that holds the rule, e.g. `.sampling.sitesPerRound`. */
  fieldPath?: string;
  reason?: 'FieldValueInvalid' | 'FieldValueForbidden' | 'FieldValueRequired' | 'FieldValueDuplicate';
}

/** The subset of apiextensions.k8s.io/v1 JSONSchemaProps this generator writes. */
export interface JSONSchemaProps {
  type?: 'object' | 'array' | 'string' | 'integer' | 'number' | 'boolean';
  description?: string;
  properties?: Record<string, JSONSchemaProps>;
  required?: string[];
  items?: JSONSchemaProps;
  additionalProperties?: JSONSchemaProps;
  enum?: Scalar[];
  default?: unknown;
  nullable?: boolean;
  format?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: boolean;
  exclusiveMaximum?: boolean;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  minItems?: number;
  maxItems?: number;
  uniqueItems?: boolean;
  minProperties?: number;
  maxProperties?: number;
  'x-kubernetes-validations'?: ValidationRule[];
  'x-kubernetes-list-type'?: 'atomic' | 'set' | 'map';
  'x-kubernetes-list-map-keys'?: string[];
  'x-kubernetes-map-type'?: 'atomic' | 'granular';
  'x-kubernetes-preserve-unknown-fields'?: boolean;
  'x-kubernetes-int-or-string'?: boolean;
}

type Scalar = string | number | boolean;

/** A node of z.toJSONSchema's output (openapi-3.0 target). */
export interface ZodJsonSchema {
  type?: string;
  properties?: Record<string, ZodJsonSchema>;
  items?: ZodJsonSchema;
  oneOf?: ZodJsonSchema[];
  anyOf?: ZodJsonSchema[];
  enum?: Scalar[];
  required?: string[];
  additionalProperties?: boolean | ZodJsonSchema;
  description?: string;
  default?: unknown;
  [keyword: string]: unknown;
}

// Keywords copied as they are: each means the same in JSON Schema and in a CRD.
const COPIED = [
  'description',
  'default',
  'nullable',
  'minimum',
  'maximum',
  'exclusiveMinimum',
  'exclusiveMaximum',
  'minLength',
  'maxLength',
  'pattern',
  'minItems',
  'maxItems',
  'uniqueItems',
  'minProperties',
  'maxProperties',
  'enum',
] as const;
// Keywords handled by hand below, or dropped because a CRD has no use for them.
const HANDLED = new Set(['type', 'properties', 'required', 'items', 'additionalProperties', 'oneOf', 'anyOf', 'format', 'propertyNames', '$schema']);
// Formats the API server knows (k8s.io/kube-openapi strfmt); zod's own (e.g. starts_with, next to
// a pattern that already says it) are dropped.
const KUBE_FORMATS = new Set([
  'int32',
  'int64',
  'float',
  'double',
  'byte',
  'date',
  'date-time',
  'duration',
  'uuid',
  'email',
  'hostname',
  'ipv4',
  'ipv6',
  'cidr',
  'uri',
]);
// zod bounds every int by the safe-integer range; in a CRD that is noise (integers are int64).
const SAFE = Number.MAX_SAFE_INTEGER;

/**
 * The structural schema of a zod JSON Schema. `extend(path, node)` runs on every node after it is
 * converted, with paths such as `spec.sites[*].data`, to add what zod cannot say (CEL rules for
 * refinements, list types).
 */
export function structuralSchema(node: ZodJsonSchema, path: string, extend: (path: string, node: JSONSchemaProps) => void = () => {}): JSONSchemaProps {
  const out = convert(node, path, extend);
  extend(path, out);
  return out;
}

function convert(node: ZodJsonSchema, path: string, extend: (path: string, node: JSONSchemaProps) => void): JSONSchemaProps {
  for (const k of Object.keys(node)) {
    if (!HANDLED.has(k) && !(COPIED as readonly string[]).includes(k)) throw new Error(`${path}: JSON Schema keyword "${k}" has no CRD counterpart here`);
  }
  const branches = node.oneOf ?? node.anyOf;
  if (branches) return branches.every(isScalarEnum) ? literalUnion(node, branches, path) : flattenUnion(node, path, extend);

  const out: JSONSchemaProps = {};
  const type = node.type;
  if (type !== 'object' && type !== 'array' && type !== 'string' && type !== 'integer' && type !== 'number' && type !== 'boolean') {
    throw new Error(`${path}: no type (${JSON.stringify(type)}); a structural schema needs one on every node`);
  }
  out.type = type;
  for (const k of COPIED) if (node[k] !== undefined) (out as Record<string, unknown>)[k] = node[k];
  if (type === 'integer') {
    if (out.minimum === -SAFE) delete out.minimum;
    if (out.maximum === SAFE) delete out.maximum;
  }
  if (typeof node.format === 'string' && KUBE_FORMATS.has(node.format)) out.format = node.format;

  if (type === 'object') {
    if (node.properties) {
      out.properties = {};
      for (const [name, prop] of Object.entries(node.properties)) out.properties[name] = structuralSchema(prop, `${path}.${name}`, extend);
      if (node.required?.length) out.required = [...node.required];
    }
    // `false` (a strict object) says nothing the API server needs: with properties it prunes
    // unknown fields, and strict field validation reports them.
    if (typeof node.additionalProperties === 'object') {
      if (node.properties) throw new Error(`${path}: additionalProperties beside properties is not structural`);
      out.additionalProperties = structuralSchema(node.additionalProperties, `${path}.*`, extend);
    } else if (node.additionalProperties === true || (!node.properties && node.additionalProperties === undefined)) {
      out['x-kubernetes-preserve-unknown-fields'] = true;
    }
  }
  if (type === 'array') {
    if (!node.items) throw new Error(`${path}: array without items`);
    out.items = withoutDefaults(structuralSchema(node.items, `${path}[*]`, extend));
  }
  return out;
}

function isScalarEnum(b: ZodJsonSchema): boolean {
  return b.type !== 'object' && b.type !== 'array' && Array.isArray(b.enum) && !b.oneOf && !b.anyOf;
}

/** `z.union([z.literal(1), z.literal(3)])`: one enum. */
function literalUnion(node: ZodJsonSchema, branches: ZodJsonSchema[], path: string): JSONSchemaProps {
  const values = branches.flatMap((b) => b.enum!);
  const types = new Set(values.map((v) => (typeof v === 'number' ? (Number.isInteger(v) ? 'integer' : 'number') : typeof v)));
  if (types.has('integer') && types.has('number')) types.delete('integer');
  if (types.size !== 1) throw new Error(`${path}: a union of literals of different types (${[...types].join(', ')})`);
  const out: JSONSchemaProps = { type: [...types][0] as JSONSchemaProps['type'], enum: values };
  if (node.description !== undefined) out.description = node.description;
  if (node.default !== undefined) out.default = node.default;
  return out;
}

// ---- discriminated unions ----------------------------------------------------------------------

/** One alternative of a (possibly nested) discriminated union, with the discriminator values that select it, outermost first. */
interface Variant {
  conds: { prop: string; value: Scalar }[];
  node: ZodJsonSchema;
}

/** Descriptions of discriminator values: `prop=value` → the variant's `.describe()`. */
type ValueDescriptions = Map<string, string>;

function variantsOf(node: ZodJsonSchema, path: string, descriptions: ValueDescriptions): Variant[] {
  const groups = (node.oneOf ?? node.anyOf)!.map((b) => (b.oneOf || b.anyOf ? variantsOf(b, path, descriptions) : [{ conds: [], node: b } satisfies Variant]));
  for (const g of groups) {
    for (const v of g) if (v.node.type !== 'object' || !v.node.properties) throw new Error(`${path}: a union alternative that is not an object`);
  }
  // The discriminator: a property every alternative requires as a single literal, with one value
  // per group (a nested union's variants share it) and a different value in each group.
  const single = (v: Variant, p: string): Scalar | undefined => {
    const s = v.node.properties?.[p];
    return v.node.required?.includes(p) && s?.enum?.length === 1 ? s.enum[0] : undefined;
  };
  const candidates = Object.keys(groups[0]![0]!.node.properties!);
  const disc = candidates.find((p) => {
    const values = groups.map((g) => {
      const vs = new Set(g.map((v) => single(v, p)));
      return vs.size === 1 ? [...vs][0] : undefined;
    });
    return values.every((x) => x !== undefined) && new Set(values).size === values.length;
  });
  if (disc === undefined) throw new Error(`${path}: a union without a discriminator; only discriminated unions of objects map to a CRD`);
  return groups.flatMap((g, i) => {
    const value = single(g[0]!, disc)!;
    const own = (node.oneOf ?? node.anyOf)![i]!;
    const described = own.description ?? (g.length === 1 ? g[0]!.node.description : undefined);
    if (described !== undefined) descriptions.set(`${disc}=${value}`, described);
    return g.map((v) => ({ conds: [{ prop: disc, value }, ...v.conds], node: v.node }));
  });
}

function flattenUnion(node: ZodJsonSchema, path: string, extend: (path: string, node: JSONSchemaProps) => void): JSONSchemaProps {
  const descriptions: ValueDescriptions = new Map();
  const variants = variantsOf(node, path, descriptions);
  const discs = new Set(variants.flatMap((v) => v.conds.map((c) => c.prop)));
  const names = [...new Set(variants.flatMap((v) => Object.keys(v.node.properties!)))];
  const having = (p: string) => variants.filter((v) => p in v.node.properties!);
  const requiring = (p: string) => variants.filter((v) => v.node.required?.includes(p));

  const out: JSONSchemaProps = { type: 'object' };
  if (node.description !== undefined) out.description = node.description;
  if (node.default !== undefined) out.default = node.default;
  out.properties = {};
  for (const p of names) {
    if (discs.has(p) && having(p).some((v) => !v.conds.some((c) => c.prop === p)))
      throw new Error(`${path}.${p}: a discriminator in some variants, a plain field in others`);
    out.properties[p] = discs.has(p) ? discriminatorSchema(p, variants, descriptions) : mergedProperty(p, having(p), variants, `${path}.${p}`, extend);
  }
  const required = names.filter((p) => requiring(p).length === variants.length);
  if (required.length) out.required = required;

  const render = new CelConditions(variants, new Set(required));
  const rules: ValidationRule[] = [];
  for (const p of names) {
    const id = celField(p);
    const has = having(p);
    if (has.length < variants.length) {
      // An absent inner discriminator (generator) is reported by its own rule: not here again.
      const when = render.cond(has, 'absent matches');
      rules.push({
        rule: `!has(self.${id}) || ${render.wrap(when, true)}`,
        message: `${p} applies only to ${render.words(has)}`,
        fieldPath: `.${p}`,
        reason: 'FieldValueForbidden',
      });
    }
    const req = requiring(p);
    if (req.length > 0 && req.length < variants.length) {
      rules.push({
        rule: `has(self.${id}) || ${render.negated(req)}`,
        message: `${render.words(req)} requires ${p}`,
        fieldPath: `.${p}`,
        reason: 'FieldValueRequired',
      });
    }
  }
  if (rules.length) out['x-kubernetes-validations'] = rules;
  return out;
}

function discriminatorSchema(p: string, variants: Variant[], descriptions: ValueDescriptions): JSONSchemaProps {
  const values = [...new Set(variants.flatMap((v) => v.conds.filter((c) => c.prop === p).map((c) => c.value)))];
  const types = new Set(values.map((v) => typeof v));
  if (types.size !== 1) throw new Error(`discriminator ${p} mixes value types`);
  const type = typeof values[0] === 'string' ? 'string' : typeof values[0] === 'boolean' ? 'boolean' : values.every(Number.isInteger) ? 'integer' : 'number';
  // Each variant's `.describe()` lands here, where `kubectl explain` shows it beside its value.
  const described = values.some((v) => descriptions.has(`${p}=${v}`));
  const lines = values.map((v) => `${v}: ${descriptions.get(`${p}=${v}`) ?? ''}`.trimEnd());
  return { type, enum: values, description: [`One of ${orList(values.map(String))}.`, ...(described ? lines : [])].join('\n') };
}

/**
 * A property several variants share: one schema when they agree on everything but description and
 * default. Its default stays only when every variant has the property with that default; otherwise
 * the API server would put it into variants that do not have the field (and the CEL rules would
 * refuse it), so the description says each variant's default instead and zod applies it.
 */
function mergedProperty(p: string, has: Variant[], all: Variant[], path: string, extend: (path: string, node: JSONSchemaProps) => void): JSONSchemaProps {
  const converted = has.map((v) => structuralSchema(v.node.properties![p]!, path, extend));
  const bare = converted.map(({ description: _d, default: _x, ...rest }) => rest);
  const first = bare[0]!;
  bare.forEach((b, i) => {
    if (!isDeepStrictEqual(b, first)) {
      throw new Error(`${path}: the variants ${labelOf(has[0]!)} and ${labelOf(has[i]!)} give it different schemas; the CRD cannot flatten that union`);
    }
  });
  const defaults = converted.map((c) => c.default);
  const descs = converted.map((c) => c.description);
  const agree = has.length === all.length && defaults.every((d) => isDeepStrictEqual(d, defaults[0])) && descs.every((d) => d === descs[0]);
  if (agree) {
    const out: JSONSchemaProps = { ...first };
    if (descs[0] !== undefined) out.description = descs[0];
    if (defaults[0] !== undefined) out.default = defaults[0];
    return out;
  }
  // Group the variants that say the same, keeping their order.
  const groups: { labels: string[]; text: string }[] = [];
  const requiredBy = has.filter((v) => v.node.required?.includes(p));
  converted.forEach((c, i) => {
    const required = requiredBy.includes(has[i]!) && requiredBy.length < all.length ? 'Required.' : undefined;
    const fallback = required === undefined && c.default === undefined && c.description === undefined ? 'Optional.' : undefined;
    const text = [c.description, c.default === undefined ? undefined : `Default: ${JSON.stringify(c.default)}.`, required, fallback]
      .filter((s) => s !== undefined)
      .join(' ');
    const g = groups.find((x) => x.text === text);
    if (g) g.labels.push(labelOf(has[i]!));
    else groups.push({ labels: [labelOf(has[i]!)], text });
  });
  const description = groups.map((g) => `${g.labels.join(', ')}: ${g.text}`).join('\n');
  return { description, ...first };
}

function labelOf(v: Variant): string {
  return v.conds.map((c) => c.value).join('/');
}

function orList(xs: string[]): string {
  return xs.length <= 1 ? (xs[0] ?? '') : `${xs.slice(0, -1).join(', ')} or ${xs.at(-1)}`;
}

const CEL_RESERVED = new Set([
  'true',
  'false',
  'null',
  'in',
  'as',
  'break',
  'const',
  'continue',
  'else',
  'for',
  'function',
  'if',
  'import',
  'let',
  'loop',
  'package',
  'namespace',
  'return',
  'var',
  'void',
  'while',
]);

/** A property name as a CEL field selector (Kubernetes' escaping of reserved words). */
export function celField(name: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name) || name.includes('__')) throw new Error(`property "${name}" needs CEL escaping this generator does not do`);
  return CEL_RESERVED.has(name) ? `__${name}__` : name;
}

function celValue(v: Scalar): string {
  return typeof v === 'string' ? `'${v.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}'` : String(v);
}

/**
 * Conditions on the discriminators that select a set of variants, in CEL and in words, walking
 * the union's nesting: `self.type == 'synthetic' && has(self.generator) && self.generator == 'iid'`.
 */
class CelConditions {
  readonly #all: Variant[];
  readonly #required: Set<string>;
  constructor(all: Variant[], required: Set<string>) {
    this.#all = all;
    this.#required = required;
  }

  /** Groups of `among` by their discriminator value at `depth`, each split into the part in `chosen`. */
  #split(among: Variant[], chosen: Variant[], depth: number) {
    const prop = among[0]!.conds[depth]!.prop;
    const groups = new Map<Scalar, { group: Variant[]; picked: Variant[] }>();
    for (const v of among) {
      const c = v.conds[depth]!;
      if (c.prop !== prop) throw new Error(`variants nest on different discriminators (${prop}, ${c.prop})`);
      const g = groups.get(c.value) ?? { group: [], picked: [] };
      g.group.push(v);
      if (chosen.includes(v)) g.picked.push(v);
      groups.set(c.value, g);
    }
    const full = [...groups].filter(([, g]) => g.picked.length === g.group.length).map(([value]) => value);
    const partial = [...groups].filter(([, g]) => g.picked.length > 0 && g.picked.length < g.group.length);
    return { prop, full, partial };
  }

  /**
   * CEL that is true for the chosen variants. A discriminator that is not required everywhere may
   * be absent: `has()` guards it, and then the condition is false, or true for 'absent matches'.
   */
  cond(chosen: Variant[], absent: 'absent fails' | 'absent matches' = 'absent fails', among: Variant[] = this.#all, depth = 0): string {
    if (chosen.length === among.length) return 'true';
    const { prop, full, partial } = this.#split(among, chosen, depth);
    const id = `self.${celField(prop)}`;
    const guarded = (test: string) => (this.#required.has(prop) ? test : absent === 'absent fails' ? `has(${id}) && ${test}` : `(!has(${id}) || ${test})`);
    const terms: string[] = [];
    if (full.length === 1) terms.push(guarded(`${id} == ${celValue(full[0]!)}`));
    if (full.length > 1) terms.push(guarded(`${id} in [${full.map(celValue).join(', ')}]`));
    for (const [value, g] of partial) terms.push(`${guarded(`${id} == ${celValue(value)}`)} && ${this.wrap(this.cond(g.picked, absent, g.group, depth + 1))}`);
    return terms.length > 1 ? terms.map((t) => (t.includes(' && ') ? `(${t})` : t)).join(' || ') : terms.join('');
  }

  negated(chosen: Variant[]): string {
    const c = this.cond(chosen);
    const m = /^(self\.[A-Za-z0-9_]+) == ('[^']*'|[^ ]+)$/.exec(c);
    return m ? `${m[1]} != ${m[2]}` : `!(${c})`;
  }

  /** Parenthesised when it has an `||` (or, with `and`, an `&&`) outside parentheses and string literals. */
  wrap(cel: string, and = false): string {
    let depth = 0;
    let quoted = false;
    for (let i = 0; i < cel.length; i++) {
      const ch = cel[i];
      if (ch === '\\' && quoted) i++;
      else if (ch === "'") quoted = !quoted;
      else if (!quoted && ch === '(') depth++;
      else if (!quoted && ch === ')') depth--;
      else if (!quoted && depth === 0 && (cel.startsWith(' || ', i) || (and && cel.startsWith(' && ', i)))) return `(${cel})`;
    }
    return cel;
  }

  words(chosen: Variant[], among: Variant[] = this.#all, depth = 0): string {
    const { prop, full, partial } = this.#split(among, chosen, depth);
    const terms: string[] = [];
    if (full.length) terms.push(`${prop} ${orList(full.map(String))}`);
    for (const [value, g] of partial) terms.push(`${prop} ${value} with ${this.words(g.picked, g.group, depth + 1)}`);
    return terms.join(', or ');
  }
}

/**
 * A list item's schema without defaults (each said in its description instead; zod applies them).
 * kubectl apply replaces a custom resource's lists whole: a default the server filled into each
 * item (a site's `remote: false`) made the stored list differ from every manifest, so applying
 * an unchanged job sent its whole list again and said "configured", never "unchanged".
 */
function withoutDefaults(schema: JSONSchemaProps): JSONSchemaProps {
  const { default: value, ...rest } = schema;
  const out: JSONSchemaProps = rest;
  if (value !== undefined) {
    const said = `Default: ${JSON.stringify(value)}.`;
    if (!out.description?.includes(said)) out.description = out.description ? `${out.description} ${said}` : said;
  }
  if (out.properties) out.properties = Object.fromEntries(Object.entries(out.properties).map(([k, v]) => [k, withoutDefaults(v)]));
  if (out.items) out.items = withoutDefaults(out.items);
  if (out.additionalProperties && typeof out.additionalProperties === 'object') out.additionalProperties = withoutDefaults(out.additionalProperties);
  return out;
}
