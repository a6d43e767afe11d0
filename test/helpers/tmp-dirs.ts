// Fresh temporary folders for a test file, removed after each test whether it passed or not.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach } from 'vitest';

/**
 * Returns a function that makes a new empty folder. Folders are removed in afterEach, or in
 * afterAll with `scope: 'file'`: for folders shared by a file's tests, and for files whose tests
 * run concurrently (an afterEach would remove the folders of tests still running).
 */
export function useTmpDirs(scope: 'test' | 'file' = 'test'): (label?: string) => string {
  const made: string[] = [];
  const cleanup = () => {
    for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
  };
  if (scope === 'test') afterEach(cleanup);
  afterAll(cleanup);
  return (label = 'consort-e2e') => {
    const dir = mkdtempSync(join(tmpdir(), `${label}-`));
    made.push(dir);
    return dir;
  };
}
