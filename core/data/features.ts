// Whether two sites feed the model the same input: a weight of the first layer belongs to a
// feature by its position, so sites must name the same columns in the same order. A count alone
// would let one site's "heart rate" train the weights of another's "temperature".

const shown = (names: readonly string[]) => names.map((n) => `"${n}"`).join(', ');

/**
 * Why two sites' feature names disagree (what one has that the other lacks, or the first
 * position where their orders part), or undefined when they agree or either site's data has no
 * names (images, say).
 */
export function featuresDiffer(
  a: readonly string[] | undefined,
  b: readonly string[] | undefined,
  names: { a: string; b: string } = { a: 'the first', b: 'the second' },
): string | undefined {
  if (!a || !b) return undefined;
  if (a.length === b.length && a.every((f, i) => f === b[i])) return undefined;
  const onlyA = a.filter((f) => !b.includes(f));
  const onlyB = b.filter((f) => !a.includes(f));
  if (onlyA.length > 0 || onlyB.length > 0) {
    const parts = [onlyA.length > 0 ? `only ${names.a} has ${shown(onlyA)}` : '', onlyB.length > 0 ? `only ${names.b} has ${shown(onlyB)}` : ''];
    return `${parts.filter((p) => p !== '').join('; ')} (list the columns to use in each site's data.featureColumns)`;
  }
  const at = a.findIndex((f, i) => f !== b[i]);
  return `the same columns in another order: column ${at + 1} is "${a[at]}" at ${names.a} and "${b[at]}" at ${names.b} (list them in each site's data.featureColumns, in one order)`;
}
