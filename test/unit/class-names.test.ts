import { describe, expect, it } from 'vitest';
import { className } from '../../core/data/labels.ts';

describe('className: a label as a class', () => {
  it('one class however a number is written; text as it is', () => {
    for (const [label, name] of [
      ['1.0', '1'],
      ['1.00', '1'],
      ['1e0', '1'],
      ['+1', '1'],
      ['007', '7'],
      ['-0', '0'],
      ['0.10', '0.1'],
      ['.5', '0.5'],
      ['5.', '5'],
      ['-2.50', '-2.5'],
      ['1e20', '100000000000000000000'],
      ['1e21', '1e+21'],
      ['123e-9', '1.23e-7'],
      ['0.000001', '0.000001'],
      ['1.5E3', '1500'],
      ['yes', 'yes'],
      ['0x1A', '0x1A'],
      ['Infinity', 'Infinity'],
      ['', ''],
      [' 1', ' 1'],
    ] as const)
      expect(className(label), label).toBe(name);
  });

  it('numbers a double cannot hold stay apart, written with every digit', () => {
    // They used to round into one class, "12345678901234567000", which no file had.
    expect(className('12345678901234567890')).toBe('12345678901234567890');
    expect(className('12345678901234567891')).toBe('12345678901234567891');
    expect(className('90071992547409931')).not.toBe(className('90071992547409932'));
    expect(className('1e400')).toBe('1e+400');
    expect(className('-1.50e-400')).toBe('-1.5e-400');
    expect(className('1e99999999999999999999')).toBe('1e+99999999999999999999');
  });

  it('writes what String(Number()) writes for any number a double holds', () => {
    let seed = 7;
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    for (let i = 0; i < 5000; i++) {
      const x = (random() - 0.5) * 10 ** Math.floor(random() * 60 - 30);
      const shortest = String(x);
      expect(className(shortest)).toBe(shortest);
      // The same value written otherwise: trailing zeros, an exponent, a leading plus.
      const [m, e = '0'] = shortest.split('e');
      const padded = `${m!.includes('.') ? m : `${m}.`}000e${Number(e)}`;
      expect(className(padded), padded).toBe(shortest);
      const integer = Math.round(Math.abs(x) * 1000) % 2 ** 53;
      expect(className(`+${BigInt(integer)}.0`)).toBe(String(integer));
    }
  });
});
