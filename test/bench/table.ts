// Plain-text tables for the benchmarks' output: a title, a header row, right-aligned numbers.

export type Cell = string | number | undefined;

export function fixed(v: number | undefined, digits: number): string {
  return v === undefined || !Number.isFinite(v) ? 'n/a' : v.toFixed(digits);
}

/** 1234567 -> "1,234,567" (grouping fixed, not the locale's). */
export function grouped(v: number): string {
  return Math.round(v)
    .toString()
    .replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

export function printTable(title: string, header: string[], rows: Cell[][], notes: string[] = []): void {
  const text = rows.map((r) => header.map((_, i) => cellText(r[i])));
  const numeric = header.map((_, i) =>
    rows.every((r) => r[i] === undefined || r[i] === '' || typeof r[i] === 'number' || /^[-+]?[\d,.]+(e[-+]?\d+)?[x%]?$/.test(String(r[i]))),
  );
  const widths = header.map((h, i) => Math.max(h.length, ...text.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ');
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  const out = ['', `== ${title}`, line(header), rule, ...text.map(line), ...notes.map((n) => `   ${n}`)];
  process.stdout.write(`${out.join('\n')}\n`);
}

function cellText(v: Cell): string {
  if (v === undefined) return 'n/a';
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toPrecision(4);
  return v;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
