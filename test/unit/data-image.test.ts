import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { crc32, deflateSync } from 'node:zlib';
import { join } from 'node:path';
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DataSpec } from '../../core/job/federated-job.ts';
import { WorkerError } from '../../worker/errors.ts';
import { toSample } from '../../worker/data/image-folder.ts';
import { loadSiteData } from '../../worker/data/load.ts';

type Rgb = [number, number, number];

function pngBytes(width: number, height: number, pixel: (x: number, y: number) => Rgb): Buffer {
  const png = new PNG({ width, height });
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const [r, g, b] = pixel(x, y);
      png.data.set([r, g, b, 255], 4 * (y * width + x));
    }
  }
  return PNG.sync.write(png);
}

function jpegBytes(width: number, height: number, rgb: Rgb): Buffer {
  const data = Buffer.alloc(width * height * 4);
  for (let p = 0; p < width * height; p++) data.set([...rgb, 255], 4 * p);
  return jpeg.encode({ width, height, data }, 95).data;
}

const RED: Rgb = [255, 0, 0];
const WHITE: Rgb = [255, 255, 255];
const GREY: Rgb = [128, 128, 128];

async function failure(p: Promise<unknown>): Promise<WorkerError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WorkerError);
  return err as WorkerError;
}

describe('image-folder loader', () => {
  let root: string;
  const ctx = () => ({ site: 'clinic', jobSeed: 1, baseDir: root });
  const spec = (fields: Record<string, unknown>) => DataSpec.parse({ type: 'imageFolder', width: 4, height: 4, ...fields });

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'consort-img-'));
    // train/: "cat" holds red PNGs and a grey JPEG, "dog" white PNGs of another size and a JPEG.
    await mkdir(join(root, 'train/cat'), { recursive: true });
    await mkdir(join(root, 'train/dog'), { recursive: true });
    await writeFile(
      join(root, 'train/cat/a.png'),
      pngBytes(4, 4, () => RED),
    );
    await writeFile(
      join(root, 'train/cat/b.png'),
      pngBytes(8, 6, () => RED),
    );
    await writeFile(join(root, 'train/cat/c.jpg'), jpegBytes(8, 8, GREY));
    await writeFile(
      join(root, 'train/dog/a.png'),
      pngBytes(2, 2, () => WHITE),
    );
    await writeFile(join(root, 'train/dog/b.jpeg'), jpegBytes(16, 16, WHITE));
    await writeFile(join(root, 'train/dog/notes.txt'), 'not an image');
    await writeFile(join(root, 'train/dog/.DS_Store'), 'ignored');
    await writeFile(join(root, 'train/README'), 'not in a class folder');
    // Images further down (class/patient/slice.png) are the class's too.
    await mkdir(join(root, 'train/dog/2019'), { recursive: true });
    await writeFile(
      join(root, 'train/dog/2019/c.png'),
      pngBytes(2, 2, () => WHITE),
    );
    await mkdir(join(root, 'test/cat'), { recursive: true });
    await mkdir(join(root, 'test/dog'), { recursive: true });
    await writeFile(
      join(root, 'test/cat/x.png'),
      pngBytes(4, 4, () => RED),
    );
    await writeFile(join(root, 'test/dog/y.jpg'), jpegBytes(4, 4, WHITE));
    await mkdir(join(root, 'bad/cat'), { recursive: true });
    await writeFile(
      join(root, 'bad/cat/ok.png'),
      pngBytes(4, 4, () => RED),
    );
    await writeFile(join(root, 'bad/cat/broken.png'), Buffer.from('definitely not a png'));
    await mkdir(join(root, 'empty/cat'), { recursive: true });
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('loads class folders, decodes PNG and JPEG, resizes, converts to luminance', async () => {
    const data = await loadSiteData(spec({ train: 'train', test: 'test', channels: 1 }), ctx());
    expect(data.classes).toEqual(['cat', 'dog']);
    expect(data.train).toMatchObject({ n: 6, sampleShape: [4, 4, 1] });
    expect(data.train.x.length).toBe(6 * 16);
    expect(Array.from(data.train.y)).toEqual([0, 0, 0, 1, 1, 1]);
    // red → ITU-R 601 luminance 0.299; white → 1; grey JPEG about 128/255.
    for (let p = 0; p < 16; p++) {
      expect(data.train.x[p]).toBeCloseTo(0.299, 3);
      expect(data.train.x[16 + p]).toBeCloseTo(0.299, 3);
      expect(data.train.x[32 + p]).toBeCloseTo(128 / 255, 1);
      expect(data.train.x[48 + p]).toBeCloseTo(1, 5);
    }
    expect(data.test.n).toBe(2);
    expect(Array.from(data.test.y)).toEqual([0, 1]);
    expect(data.quality).toEqual({
      rowsUsed: 8,
      rowsRejected: {
        'not a PNG or JPEG file': 1,
        'not in a class folder': 1,
      },
      missing: {},
      labels: { cat: 4, dog: 4 },
      trainLabels: { cat: 3, dog: 3 },
      trainSamples: 6,
      testSamples: 2,
    });
  });

  it('keeps three channels, scaled to [0, 1]', async () => {
    const data = await loadSiteData(spec({ train: 'train', test: 'test', channels: 3, width: 3, height: 2 }), ctx());
    expect(data.train.sampleShape).toEqual([2, 3, 3]);
    expect(Array.from(data.train.x.subarray(0, 3))).toEqual([1, 0, 0]);
    expect(data.train.x.every((v) => v >= 0 && v <= 1)).toBe(true);
  });

  it('resizes bilinearly with half-pixel centres', () => {
    // A 2×1 black|white image stretched to 4×1: 0, 0.25, 0.75, 1.
    const img = { width: 2, height: 1, rgba: Uint8Array.from([0, 0, 0, 255, 255, 255, 255, 255]) };
    expect(Array.from(toSample(img, 4, 1, 1))).toEqual([0, 0.25, 0.75, 1]);
    // Halving averages neighbours: 4×1 of 0, 255, 0, 255 → 2×1 of 0.5, 0.5.
    const stripes = { width: 4, height: 1, rgba: Uint8Array.from([0, 0, 0, 0, 255, 255, 255, 0, 0, 0, 0, 0, 255, 255, 255, 0]) };
    expect(Array.from(toSample(stripes, 2, 1, 1))).toEqual([0.5, 0.5]);
  });

  it('holds out testFraction by a seeded shuffle', async () => {
    const s = spec({ train: 'train', testFraction: 0.4 });
    const a = await loadSiteData(s, ctx());
    const b = await loadSiteData(s, ctx());
    expect(a.train.n).toBe(4);
    expect(a.test.n).toBe(2);
    expect(a.test.x).toEqual(b.test.x);
    expect(a.test.y).toEqual(b.test.y);
  });

  it('names an image that cannot be decoded', async () => {
    const err = await failure(loadSiteData(spec({ train: 'bad' }), ctx()));
    expect(err.code).toBe('CONSORT_W_DATA_FILE');
    expect(err.message).toContain(join('bad', 'cat', 'broken.png'));
    expect(err.file).toBe(join(root, 'bad/cat/broken.png'));
  });

  it('refuses a PNG whose pixel data stops short of its header, or whose header declares a giant, before decoding it', async () => {
    // pngjs decoded the short one without a word, its last row from leftover memory (other pixels each read).
    const chunk = (type: string, body: Buffer) => {
      const head = Buffer.alloc(8);
      head.writeUInt32BE(body.length, 0);
      head.write(type, 4, 'latin1');
      const crc = Buffer.alloc(4);
      crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), body])), 0);
      return Buffer.concat([head, body, crc]);
    };
    const png = (width: number, height: number, rows: number) => {
      const ihdr = Buffer.alloc(13);
      ihdr.writeUInt32BE(width, 0);
      ihdr.writeUInt32BE(height, 4);
      ihdr[8] = 8; // bit depth
      ihdr[9] = 0; // greyscale
      const pixels = Buffer.alloc(rows * (1 + width), 0x80);
      for (let r = 0; r < rows; r++) pixels[r * (1 + width)] = 0; // filter: none
      return Buffer.concat([
        Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
        chunk('IHDR', ihdr),
        chunk('IDAT', deflateSync(pixels)),
        chunk('IEND', Buffer.alloc(0)),
      ]);
    };
    await mkdir(join(root, 'short/cat'), { recursive: true });
    // The same file whole loads (its pixels 0x80 grey).
    await writeFile(join(root, 'short/cat/whole.png'), png(16, 16, 16));
    await writeFile(join(root, 'short/cat/whole2.png'), png(16, 16, 16));
    const whole = await loadSiteData(spec({ train: 'short', testFraction: 0.5 }), ctx());
    expect(whole.train.x[0]).toBeCloseTo(128 / 255, 5);
    await writeFile(join(root, 'short/cat/short.png'), png(16, 16, 15));
    let err = await failure(loadSiteData(spec({ train: 'short', testFraction: 0.5 }), ctx()));
    expect(err.code).toBe('CONSORT_W_DATA_FILE');
    expect(err.message).toBe(
      `image ${join('short', 'cat', 'short.png')}: cannot decode it: truncated: 255 bytes of pixel data where its 16 × 16 header needs 272`,
    );
    await mkdir(join(root, 'giant/cat'), { recursive: true });
    await writeFile(join(root, 'giant/cat/bomb.png'), png(20_000, 20_000, 1));
    err = await failure(loadSiteData(spec({ train: 'giant', testFraction: 0.5 }), ctx()));
    expect(err.message).toContain('bomb.png: cannot decode it: 20000 × 20000 pixels, more than the 100 megapixels Consort decodes: downscale it first');
  });

  it('reads a number folder name as a CSV label is read: "1.0" and "1" are the class "1"', async () => {
    await mkdir(join(root, 'numbers/1'), { recursive: true });
    await mkdir(join(root, 'numbers/1.0'), { recursive: true });
    await mkdir(join(root, 'numbers/2'), { recursive: true });
    for (const [dir, colour] of [
      ['1', RED],
      ['1.0', RED],
      ['2', WHITE],
      ['2', WHITE],
    ] as const) {
      await writeFile(
        join(root, 'numbers', dir, `${Math.random().toString(36).slice(2)}.png`),
        pngBytes(4, 4, () => colour),
      );
    }
    const data = await loadSiteData(spec({ train: 'numbers', testFraction: 0.25 }), ctx());
    expect(data.classes).toEqual(['1', '2']);
    expect(data.quality.labels).toEqual({ '1': 2, '2': 2 });
    // The job's classes as the user spelled them.
    const listed = await loadSiteData(spec({ train: 'numbers', testFraction: 0.25 }), { ...ctx(), classes: ['1.0', '2'] });
    expect(listed.train.n + listed.test.n).toBe(4);
  });

  it("rejects a class folder outside the job's classes, a missing folder and an empty one", async () => {
    let err = await failure(loadSiteData(spec({ train: 'train' }), { ...ctx(), classes: ['cat', 'bird'] }));
    expect(err.code).toBe('CONSORT_W_DATA_LABEL');
    expect(err.message).toContain('"dog"');
    err = await failure(loadSiteData(spec({ train: 'nowhere' }), ctx()));
    expect(err.code).toBe('CONSORT_W_DATA_FILE');
    expect(err.message).toContain('nowhere');
    err = await failure(loadSiteData(spec({ train: 'empty' }), ctx()));
    expect(err.code).toBe('CONSORT_W_DATA_EMPTY');
    expect(err.message).toContain('clinic');
  });
});
