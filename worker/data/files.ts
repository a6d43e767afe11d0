// File access for the loaders: paths resolve against the job file's folder, and every failure to
// reach a file becomes a CONSORT_W_DATA_FILE that names it.
import { readdir, readFile, stat } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { WorkerError } from '../errors.ts';

export function resolveDataPath(baseDir: string, path: string): string {
  return isAbsolute(path) ? path : resolve(baseDir, path);
}

function describe(shown: string, resolved: string): string {
  return shown === resolved ? shown : `${shown} (${resolved})`;
}

function reason(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT') return 'not found';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'is a folder, not a file';
  if (code === 'ENOTDIR') return 'is not a folder';
  return err instanceof Error ? err.message : String(err);
}

/**
 * The largest data file read whole: node's own Buffer limit is near it, and past it a CSV wants
 * splitting across files anyway. Checked before reading, as is that the path is a regular file:
 * /dev/zero read until memory ran out (2.5 GB in 5 s), a FIFO blocked the run for ever.
 */
export const MAX_DATA_FILE_BYTES = 2 ** 31 - 1;

/** The bytes of a data file; `shown` is the path as the job spells it. */
export async function readDataFile(resolved: string, shown: string): Promise<Buffer> {
  try {
    const info = await stat(resolved);
    if (info.isDirectory()) throw Object.assign(new Error('is a folder'), { code: 'EISDIR' });
    if (!info.isFile()) throw new Error(`is not a regular file (${kindOf(info)})`);
    if (info.size > MAX_DATA_FILE_BYTES) throw new Error(`${info.size} bytes, more than the ${MAX_DATA_FILE_BYTES} a data file may have: split it`);
    return await readFile(resolved);
  } catch (err) {
    throw new WorkerError('CONSORT_W_DATA_FILE', `data file ${describe(shown, resolved)}: ${reason(err)}`, { file: resolved, cause: err });
  }
}

/** What a path that is not a regular file is, to say so. */
export function kindOf(info: import('node:fs').Stats): string {
  if (info.isCharacterDevice() || info.isBlockDevice()) return 'a device';
  if (info.isFIFO()) return 'a FIFO';
  if (info.isSocket()) return 'a socket';
  return 'not a regular file';
}

/** Entries of a data folder, with whether each is a folder. */
export async function listDataFolder(resolved: string, shown: string): Promise<{ name: string; isDir: boolean }[]> {
  try {
    const info = await stat(resolved);
    if (!info.isDirectory()) throw Object.assign(new Error('is not a folder'), { code: 'ENOTDIR' });
    const entries = await readdir(resolved, { withFileTypes: true });
    const out: { name: string; isDir: boolean }[] = [];
    for (const e of entries) {
      // Follow symbolic links: data volumes are often assembled from links.
      const isDir =
        e.isDirectory() ||
        (e.isSymbolicLink() &&
          (await stat(resolve(resolved, e.name)).then(
            (s) => s.isDirectory(),
            () => false,
          )));
      out.push({ name: e.name, isDir });
    }
    return out;
  } catch (err) {
    throw new WorkerError('CONSORT_W_DATA_FILE', `data folder ${describe(shown, resolved)}: ${reason(err)}`, { file: resolved, cause: err });
  }
}
