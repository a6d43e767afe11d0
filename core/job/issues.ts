// Turns zod issues into one line per problem that names the field, the way a user reads YAML:
// `spec.sites[1].data.labelColumn: expected string, received undefined`.
import type { z } from 'zod';

export function fieldPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out === '' ? String(key) : `.${String(key)}`;
  }
  return out === '' ? '(root)' : out;
}

export function describeIssues(error: z.ZodError, prefix: readonly PropertyKey[] = []): string[] {
  return error.issues.map((issue) => `${fieldPath([...prefix, ...issue.path])}: ${issue.message}`);
}
