// What a label is as a class: a number in its shortest form, any other text as it is. pandas
// writes an integer column with a missing value as 1.0, R as 1, a spreadsheet as 1.00: one class.

// A decimal number as people write them; Number() alone would also take "0x1A", "Infinity" or "".
export const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** A label as a class name: "1.0", "1.00" and "1e0" are the class "1"; any other text as it is. */
export function className(label: string): string {
  return NUMBER.test(label) ? String(Number(label)) : label;
}
