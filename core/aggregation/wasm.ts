// A tiny WebAssembly binary encoder: just the instructions the aggregation kernels use
// (exact-kernel.ts), so that they ship as readable TypeScript rather than a compiled blob. See
// the WebAssembly core specification (binary format) and its SIMD proposal for the opcodes.

export type ValueType = 'i32' | 'i64' | 'f32' | 'f64' | 'v128';
const TYPE_CODE: Record<ValueType, number> = { i32: 0x7f, i64: 0x7e, f32: 0x7d, f64: 0x7c, v128: 0x7b };

/** Unsigned LEB128. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

/** Signed LEB128 of a 32-bit integer. */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

const vec = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
const name = (s: string): number[] => [...uleb(s.length), ...new TextEncoder().encode(s)];
const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];
const simd = (opcode: number): number[] => [0xfd, ...uleb(opcode)];
/** A memory argument: log2 of the natural alignment, then the static offset. */
const memarg = (align: number, offset: number): number[] => [align, ...uleb(offset)];

/** Instructions, each as its bytes. Locals are numbered parameters first. */
export const op = {
  localGet: (i: number) => [0x20, ...uleb(i)],
  localSet: (i: number) => [0x21, ...uleb(i)],
  localTee: (i: number) => [0x22, ...uleb(i)],
  i32Const: (v: number) => [0x41, ...sleb(v)],
  f64Const: (v: number) => [0x44, ...new Uint8Array(new Float64Array([v]).buffer)],
  /** block / loop with no result; `br n` leaves the n-th enclosing block, or repeats the n-th enclosing loop. */
  block: [0x02, 0x40],
  loop: [0x03, 0x40],
  br: (depth: number) => [0x0c, ...uleb(depth)],
  brIf: (depth: number) => [0x0d, ...uleb(depth)],
  end: [0x0b],
  i32Add: [0x6a],
  i32GeU: [0x4f],
  i64Load: (offset = 0) => [0x29, ...memarg(3, offset)],
  i64Store: (offset = 0) => [0x37, ...memarg(3, offset)],
  f64Load: (offset = 0) => [0x2b, ...memarg(3, offset)],
  f64Store: (offset = 0) => [0x39, ...memarg(3, offset)],
  f64Add: [0xa0],
  f64Mul: [0xa2],
  f64Div: [0xa3],
  f64ConvertI64S: [0xb9],
  i64TruncF64S: [0xb0],
  v128Load: (offset = 0) => [...simd(0x00), ...memarg(4, offset)],
  v128Store: (offset = 0) => [...simd(0x0b), ...memarg(4, offset)],
  /** Loads 8 bytes into the low half, zeroes the high half. */
  v128Load64Zero: (offset = 0) => [...simd(0x5d), ...memarg(3, offset)],
  /** Loads two int32, each sign-extended into an i64 lane. */
  v128Load32x2S: (offset = 0) => [...simd(0x05), ...memarg(3, offset)],
  /** A vector of lanes of a and b (0-15: a's bytes, 16-31: b's). */
  i8x16Shuffle: (lanes: readonly number[]) => [...simd(0x0d), ...lanes],
  i32x4ExtractLane: (lane: number) => [...simd(0x1b), lane],
  f64x2ExtractLane: (lane: number) => [...simd(0x21), lane],
  i32x4Splat: simd(0x11),
  f64x2Splat: simd(0x14),
  i64x2Splat: simd(0x12),
  i64x2Shl: simd(0xcb),
  i64x2ShrS: simd(0xcc),
  i64x2Add: simd(0xce),
  i64x2Sub: simd(0xd1),
  i32x4MaxU: simd(0xb9),
  v128And: simd(0x4e),
  f64x2Add: simd(0xf0),
  f64x2Sub: simd(0xf1),
  f64x2Mul: simd(0xf2),
  f64x2PromoteLowF32x4: simd(0x5f),
  /**
   * a * b + c, rounded once (fused) or twice (a * b rounded first): relaxed SIMD leaves the choice
   * to the engine and the CPU, the same for every call (V8: fused where the CPU has FMA).
   */
  f64x2RelaxedMadd: simd(0x107),
  f32ReinterpretI32: [0xbe],
};

export interface WasmFunction {
  name: string;
  params: ValueType[];
  results: ValueType[];
  /** Extra locals, numbered after the parameters. */
  locals: ValueType[];
  body: number[][];
}

/** Pages (64 KiB) of the largest memory wasm32 addresses: 4 GiB. */
const MAX_PAGES = 65536;

/**
 * A module that imports its memory as env.memory and exports `functions` by name. `shared`: the
 * memory is a shared one (threads proposal: a maximum, which is wasm32's), so that instances in
 * several threads work on the same bytes.
 */
export function encodeModule(functions: readonly WasmFunction[], opts: { shared?: boolean } = {}): Uint8Array {
  const types = section(1, vec(functions.map((f) => [0x60, ...vec(f.params.map((p) => [TYPE_CODE[p]])), ...vec(f.results.map((r) => [TYPE_CODE[r]]))])));
  const limits = opts.shared ? [0x03, ...uleb(1), ...uleb(MAX_PAGES)] : [0x00, ...uleb(1)];
  const imports = section(2, vec([[...name('env'), ...name('memory'), 0x02, ...limits]]));
  const funcs = section(3, vec(functions.map((_, i) => uleb(i))));
  const exports = section(7, vec(functions.map((f, i) => [...name(f.name), 0x00, ...uleb(i)])));
  const code = section(
    10,
    vec(
      functions.map((f) => {
        const body = [...vec(f.locals.map((t) => [1, TYPE_CODE[t]])), ...f.body.flat(), ...op.end];
        return [...uleb(body.length), ...body];
      }),
    ),
  );
  return new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, ...types, ...imports, ...funcs, ...exports, ...code]);
}
