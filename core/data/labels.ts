// What a label is as a class: a number in its shortest form, any other text as it is. pandas
// writes an integer column with a missing value as 1.0, R as 1, a spreadsheet as 1.00: one class.
// The number is read as written, in decimal, never through a double: account numbers and product
// codes of 20 digits, which a double cannot hold, used to round into one another and become a
// class no file had ("12345678901234567890" and "…891" both "12345678901234567000"), and 1e400
// became "Infinity".

// A decimal number as people write them; Number() alone would also take "0x1A", "Infinity" or "".
export const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/**
 * A label as a class name: "1.0", "1.00" and "1e0" are the class "1"; any other text as it is
 * (in Unicode's composed form, NFC). A
 * number is written as JavaScript writes a number (String(1e21) is "1e+21", String(1.5e-7) is
 * "1.5e-7"), but from every significant digit it was written with.
 */
export function className(label: string): string {
  const m = NUMBER.exec(label);
  // One text, one class, however its accents are encoded: macOS writes "é" as e and a combining
  // accent (NFD), most else as one character (NFC); both print alike.
  if (!m) return label.normalize('NFC');
  const negative = label.startsWith('-');
  const [whole = '', fraction = ''] = m[1]!.split('.');
  let digits = whole + fraction;
  // The decimal point sits after the first `point` digits (ECMAScript's n).
  let point = BigInt(whole.length) + (m[2] ? BigInt(m[2].slice(1)) : 0n);
  const lead = /^0*/.exec(digits)![0].length;
  digits = digits.slice(lead).replace(/0+$/, '');
  point -= BigInt(lead);
  if (digits === '') return '0';
  return (negative ? '-' : '') + numberText(digits, point);
}

/** Number::toString's layout (ECMA-262 6.1.6.1.20) of the value 0.digits × 10^point. */
function numberText(digits: string, point: bigint): string {
  const k = BigInt(digits.length);
  if (k <= point && point <= 21n) return digits + '0'.repeat(Number(point - k));
  if (0n < point && point <= 21n) return `${digits.slice(0, Number(point))}.${digits.slice(Number(point))}`;
  if (-6n < point && point <= 0n) return `0.${'0'.repeat(Number(-point))}${digits}`;
  const e = point - 1n;
  const exponent = `e${e < 0n ? '-' : '+'}${e < 0n ? -e : e}`;
  return digits.length === 1 ? digits + exponent : `${digits[0]}.${digits.slice(1)}${exponent}`;
}
