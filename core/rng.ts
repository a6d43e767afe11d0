// A small, fast, seedable RNG (xoshiro128**) whose whole state is four uint32s, so that a
// checkpoint can carry it and a resumed job draws exactly what an uninterrupted one would.
// Streams are derived by hashing (seed, ...keys): the data of site "st-mary" or the batch order
// of round 7 never depend on how many numbers some other part of the program drew first.

export type RngState = readonly [number, number, number, number];

function splitmix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** FNV-1a over the keys' text, mixed with the seed: a stable 32-bit stream id. */
export function streamHash(seed: number, keys: readonly (string | number)[]): number {
  let h = 0x811c9dc5 ^ (seed >>> 0);
  const text = keys.join('\u0000');
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  private constructor(state: RngState) {
    [this.s0, this.s1, this.s2, this.s3] = state;
  }

  /** A generator for the stream named by keys under the job's seed. */
  static from(seed: number, ...keys: (string | number)[]): Rng {
    let x = streamHash(seed, keys);
    const s: number[] = [];
    for (let i = 0; i < 4; i++) {
      x = splitmix32(x + i);
      s.push(x);
    }
    if ((s[0]! | s[1]! | s[2]! | s[3]!) === 0) s[0] = 1; // the all-zero state is a fixed point
    return new Rng(s as unknown as RngState);
  }

  static restore(state: RngState): Rng {
    return new Rng(state);
  }

  state(): RngState {
    return [this.s0, this.s1, this.s2, this.s3];
  }

  uint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number {
    const hi = this.uint32() >>> 5; // 27 bits
    const lo = this.uint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform integer in [0, n), without modulo bias. */
  int(n: number): number {
    if (!(n > 0 && n <= 2 ** 32)) throw new RangeError(`Rng.int: n must be in (0, 2^32], got ${n}`);
    const limit = 2 ** 32 - (2 ** 32 % n);
    for (;;) {
      const x = this.uint32();
      if (x < limit) return x % n;
    }
  }

  /** Standard normal by Box–Muller (no cached spare, so the state stays four words). */
  normal(mean = 0, sd = 1): number {
    let u = 0;
    while (u === 0) u = this.uniform();
    const v = this.uniform();
    return mean + sd * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  lognormal(mu: number, sigma: number): number {
    return Math.exp(this.normal(mu, sigma));
  }

  /** Fisher–Yates, in place. */
  shuffle<T>(items: T[] | Int32Array | Uint32Array): typeof items {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = items[i]!;
      items[i] = items[j]!;
      items[j] = tmp;
    }
    return items;
  }

  /** k distinct indices of [0, n), in ascending order (the order sites are listed in). */
  sample(n: number, k: number): number[] {
    if (k > n) throw new RangeError(`Rng.sample: k=${k} > n=${n}`);
    const idx = Array.from({ length: n }, (_, i) => i);
    for (let i = 0; i < k; i++) {
      const j = i + this.int(n - i);
      const tmp = idx[i]!;
      idx[i] = idx[j]!;
      idx[j] = tmp;
    }
    return idx.slice(0, k).sort((a, b) => a - b);
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
