// The image-folder loader: one sub-folder per class (the folder name is the class), PNG and JPEG
// files decoded, converted to the job's channels, resized bilinearly (half-pixel centres, as
// TF's resizeBilinear with halfPixelCenters) and scaled to [0, 1]. Samples are height × width ×
// channels, row-major (NHWC, TF.js's layout).
import { join } from 'node:path';
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { className } from '../../core/data/labels.ts';
import { inflateSync } from 'node:zlib';
import type { DataQuality } from '../../core/data/quality.ts';
import { DEFAULT_TEST_FRACTION, type ImageFolderData } from '../../core/job/federated-job.ts';
import { Rng } from '../../core/rng.ts';
import { WorkerError } from '../errors.ts';
import { addCounts, type Dataset, labelCounts, type LoadContext, type SiteData, selectExamples, sortLabels, splitIndices } from './dataset.ts';
import { listDataFolder, readDataFile, resolveDataPath } from './files.ts';

export const NOT_IN_CLASS_FOLDER = 'not in a class folder';
/** A folder inside a class folder: not read (a class's images lie directly in its folder). */
/** Folders below a class folder are read down to this depth. */
const MAX_DEPTH = 8;
export const TOO_DEEP = `a folder more than ${MAX_DEPTH} levels below its class folder (not read)`;
export const NOT_AN_IMAGE = 'not a PNG or JPEG file';

const IMAGE_EXT = /\.(png|jpe?g)$/i;

/** What a data folder holds: image files per class folder, and what was passed over. */
interface FolderScan {
  shown: string;
  resolved: string;
  /** class (its folder's name, a number in its shortest form) → image paths relative to the folder scanned, sorted. */
  images: Map<string, string[]>;
  rejected: Record<string, number>;
}

function byCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

async function scanFolder(path: string, ctx: LoadContext): Promise<FolderScan> {
  const resolved = resolveDataPath(ctx.baseDir, path);
  const images = new Map<string, string[]>();
  const rejected: Record<string, number> = {};
  const count = (reason: string) => {
    rejected[reason] = (rejected[reason] ?? 0) + 1;
  };
  for (const entry of await listDataFolder(resolved, path)) {
    if (entry.name.startsWith('.')) continue; // .DS_Store, .ipynb_checkpoints: not data
    if (!entry.isDir) {
      count(NOT_IN_CLASS_FOLDER);
      continue;
    }
    // Every image under the class folder, at any depth (class/patient/slice.png, as medical
    // images are often kept; Keras and torchvision read them so too), by path relative to it.
    const files: string[] = [];
    const walk = async (rel: string, depth: number): Promise<void> => {
      for (const f of await listDataFolder(join(resolved, entry.name, rel), join(path, entry.name, rel))) {
        if (f.name.startsWith('.')) continue;
        if (f.isDir && depth < MAX_DEPTH) await walk(join(rel, f.name), depth + 1);
        else if (!f.isDir && IMAGE_EXT.test(f.name)) files.push(join(rel, f.name));
        else count(f.isDir ? TOO_DEEP : NOT_AN_IMAGE);
      }
    };
    await walk('', 0);
    // The folder's name is its class, read as a CSV label is ("1.0" and "1" are the class "1").
    const label = className(entry.name);
    images.set(label, [...(images.get(label) ?? []), ...files.map((f) => join(entry.name, f))].sort(byCodeUnits));
  }
  return { shown: path, resolved, images, rejected };
}

/** Images larger than this are refused before they are decoded (a 99-byte PNG can declare 20000 × 20000). */
export const MAX_IMAGE_PIXELS = 100_000_000;

/** A file whose contents are not the image they claim to be: said as such, whatever the decoder's words. */
class DamagedImage extends Error {}

/** Samples per pixel of a PNG colour type: grey, -, RGB, palette, grey + alpha, -, RGBA. */
const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
/** Adam7's passes: x start, y start, x step, y step. */
const ADAM7 = [
  [0, 0, 8, 8],
  [4, 0, 8, 8],
  [0, 4, 4, 8],
  [2, 0, 4, 4],
  [0, 2, 2, 4],
  [1, 0, 2, 2],
  [0, 1, 1, 2],
] as const;

/**
 * Checks a PNG's size and that its pixel data is all there, before pngjs decodes it: pngjs decodes
 * a file whose compressed data stops short without a word, the missing rows taken from whatever
 * memory its buffer held (different pixels on every read, so the same seed gave other models), and
 * allocates whatever size the header declares.
 */
function checkPng(bytes: Buffer): void {
  let at = 8;
  let header: { width: number; height: number; depth: number; color: number; interlace: number } | undefined;
  const data: Buffer[] = [];
  while (at + 8 <= bytes.length) {
    const length = bytes.readUInt32BE(at);
    const type = bytes.toString('latin1', at + 4, at + 8);
    if (at + 12 + length > bytes.length) throw new DamagedImage(`truncated: its ${type} chunk stops short`);
    const body = bytes.subarray(at + 8, at + 8 + length);
    if (type === 'IHDR' && length >= 13) {
      header = { width: body.readUInt32BE(0), height: body.readUInt32BE(4), depth: body[8]!, color: body[9]!, interlace: body[12]! };
    } else if (type === 'IDAT') data.push(body);
    else if (type === 'IEND') break;
    at += 12 + length;
  }
  if (!header) throw new DamagedImage('no PNG header (IHDR)');
  const { width, height, depth, color, interlace } = header;
  const channels = PNG_CHANNELS[color];
  if (width === 0 || height === 0 || channels === undefined)
    throw new DamagedImage(`a PNG header that describes no image (${width} × ${height}, colour type ${color})`);
  if (width * height > MAX_IMAGE_PIXELS) {
    throw new DamagedImage(`${width} × ${height} pixels, more than the ${MAX_IMAGE_PIXELS / 1e6} megapixels Consort decodes: downscale it first`);
  }
  const bits = channels * depth;
  const rows = (w: number, h: number) => (w > 0 && h > 0 ? h * (1 + Math.ceil((w * bits) / 8)) : 0);
  const expected =
    interlace === 1 ? ADAM7.reduce((n, [x0, y0, dx, dy]) => n + rows(Math.ceil((width - x0) / dx), Math.ceil((height - y0) / dy)), 0) : rows(width, height);
  let pixels: Buffer;
  try {
    pixels = inflateSync(Buffer.concat(data), { maxOutputLength: expected + 1 });
  } catch (err) {
    // Cut short mid-stream ("unexpected end of file") or damaged: either way not the image its header says.
    throw new DamagedImage(`its pixel data cannot be read whole (${(err as Error).message})`);
  }
  if (pixels.length < expected)
    throw new DamagedImage(`truncated: ${pixels.length} bytes of pixel data where its ${width} × ${height} header needs ${expected}`);
}

/** RGB(A) pixels of a PNG or JPEG file, by its first bytes rather than its name. */
function decodeImage(bytes: Buffer, shown: string, resolved: string): { width: number; height: number; rgba: Uint8Array } {
  try {
    if (bytes.length >= 8 && bytes.readUInt32BE(0) === 0x89504e47) {
      checkPng(bytes);
      const png = PNG.sync.read(bytes);
      return { width: png.width, height: png.height, rgba: png.data };
    }
    if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) {
      const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: MAX_IMAGE_PIXELS / 1e6 });
      return { width: img.width, height: img.height, rgba: img.data };
    }
    throw new DamagedImage('neither a PNG nor a JPEG image');
  } catch (err) {
    const why = err instanceof DamagedImage ? err.message : `damaged or truncated (${err instanceof Error ? err.message : String(err)})`;
    throw new WorkerError('CONSORT_W_DATA_FILE', `image ${shown}: cannot decode it: ${why}`, { file: resolved, cause: err });
  }
}

/**
 * The image as height × width × channels floats in [0, 1]. One channel is luminance by ITU-R
 * 601-2 (as PIL's convert("L")); alpha is dropped (as PIL's convert("RGB")).
 */
export function toSample(img: { width: number; height: number; rgba: Uint8Array }, width: number, height: number, channels: 1 | 3): Float32Array {
  const { width: w0, height: h0, rgba } = img;
  const src = new Float32Array(w0 * h0 * channels);
  for (let p = 0; p < w0 * h0; p++) {
    const r = rgba[4 * p]!;
    const g = rgba[4 * p + 1]!;
    const b = rgba[4 * p + 2]!;
    if (channels === 1) src[p] = (r * 299 + g * 587 + b * 114) / 1000 / 255;
    else {
      src[3 * p] = r / 255;
      src[3 * p + 1] = g / 255;
      src[3 * p + 2] = b / 255;
    }
  }
  if (w0 === width && h0 === height) return src;
  const out = new Float32Array(width * height * channels);
  const sx = w0 / width;
  const sy = h0 / height;
  for (let oy = 0; oy < height; oy++) {
    const fy = Math.min(Math.max((oy + 0.5) * sy - 0.5, 0), h0 - 1);
    const y0 = Math.floor(fy);
    const y1 = Math.min(y0 + 1, h0 - 1);
    const ty = fy - y0;
    for (let ox = 0; ox < width; ox++) {
      const fx = Math.min(Math.max((ox + 0.5) * sx - 0.5, 0), w0 - 1);
      const x0 = Math.floor(fx);
      const x1 = Math.min(x0 + 1, w0 - 1);
      const tx = fx - x0;
      for (let c = 0; c < channels; c++) {
        const a = src[(y0 * w0 + x0) * channels + c]!;
        const b = src[(y0 * w0 + x1) * channels + c]!;
        const d = src[(y1 * w0 + x0) * channels + c]!;
        const e = src[(y1 * w0 + x1) * channels + c]!;
        const top = a + (b - a) * tx;
        const bottom = d + (e - d) * tx;
        out[(oy * width + ox) * channels + c] = top + (bottom - top) * ty;
      }
    }
  }
  return out;
}

async function readImages(scan: FolderScan, classes: readonly string[], spec: ImageFolderData): Promise<Dataset> {
  const index = new Map(classes.map((c, i) => [className(c), i]));
  const size = spec.width * spec.height * spec.channels;
  let n = 0;
  for (const [folder, files] of scan.images) {
    if (!index.has(folder)) {
      throw new WorkerError(
        'CONSORT_W_DATA_LABEL',
        `${scan.shown}: class folder "${folder}" is not one of the job's classes (${classes.map((c) => `"${c}"`).join(', ')})`,
        { file: scan.resolved },
      );
    }
    n += files.length;
  }
  const x = new Float32Array(n * size);
  const y = new Int32Array(n);
  let at = 0;
  // Class-index order, then file name: the order does not depend on the file system's listing.
  const folders = [...scan.images.keys()].sort((a, b) => index.get(a)! - index.get(b)!);
  for (const folder of folders) {
    for (const file of scan.images.get(folder)!) {
      const shown = join(scan.shown, file);
      const resolved = join(scan.resolved, file);
      const img = decodeImage(await readDataFile(resolved, shown), shown, resolved);
      x.set(toSample(img, spec.width, spec.height, spec.channels), at * size);
      y[at++] = index.get(folder)!;
    }
  }
  return { x, y, n, sampleShape: [spec.height, spec.width, spec.channels] };
}

export async function loadImageFolder(spec: ImageFolderData, ctx: LoadContext): Promise<SiteData> {
  const trainScan = await scanFolder(spec.train, ctx);
  const testScan = spec.test === undefined ? undefined : await scanFolder(spec.test, ctx);
  const classes = ctx.classes ?? sortLabels([...trainScan.images.keys(), ...(testScan?.images.keys() ?? [])]);
  const all = await readImages(trainScan, classes, spec);
  if (all.n === 0) {
    throw new WorkerError('CONSORT_W_DATA_EMPTY', `site "${ctx.site}": ${spec.train} has no PNG or JPEG images in class folders`, {
      file: trainScan.resolved,
    });
  }
  const rejected: Record<string, number> = {};
  addCounts(rejected, trainScan.rejected);
  let train: Dataset;
  let test: Dataset;
  if (testScan !== undefined) {
    addCounts(rejected, testScan.rejected);
    train = all;
    test = await readImages(testScan, classes, spec);
    if (test.n === 0) {
      throw new WorkerError('CONSORT_W_DATA_EMPTY', `site "${ctx.site}": ${spec.test} has no PNG or JPEG images in class folders`, {
        file: testScan.resolved,
      });
    }
  } else {
    const split = splitIndices(all.n, spec.testFraction ?? DEFAULT_TEST_FRACTION, Rng.from(ctx.jobSeed, 'split', ctx.site));
    train = selectExamples(all, split.train);
    test = selectExamples(all, split.test);
  }
  const quality: DataQuality = {
    rowsUsed: train.n + test.n,
    rowsRejected: rejected,
    missing: {},
    labels: labelCounts(classes, train, test),
    trainLabels: labelCounts(classes, train),
    trainSamples: train.n,
    testSamples: test.n,
  };
  return { train, test, classes, quality };
}
