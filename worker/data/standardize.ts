// Feature scaling fitted on a site's own train split only, so that nothing about the test split
// (or another site) leaks into training. Missing values (NaN) are ignored when fitting and become
// the train mean, i.e. 0 after scaling.

export interface Standardizer {
  mean: Float64Array;
  std: Float64Array;
}

/** Per-column mean and population standard deviation of n rows of d values; NaN is missing. */
export function fitStandardizer(rows: Float64Array, n: number, d: number): Standardizer {
  const mean = new Float64Array(d);
  const std = new Float64Array(d);
  const count = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) {
      const v = rows[i * d + j]!;
      if (Number.isNaN(v)) continue;
      count[j]!++;
      mean[j]! += v;
    }
  }
  for (let j = 0; j < d; j++) mean[j] = count[j]! > 0 ? mean[j]! / count[j]! : 0;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) {
      const v = rows[i * d + j]!;
      if (Number.isNaN(v)) continue;
      const dv = v - mean[j]!;
      std[j]! += dv * dv;
    }
  }
  for (let j = 0; j < d; j++) {
    const s = count[j]! > 0 ? Math.sqrt(std[j]! / count[j]!) : 0;
    // A constant (or absent) column carries no information; dividing by 1 keeps it at 0.
    std[j] = s > 1e-12 && Number.isFinite(s) ? s : 1;
  }
  return { mean, std };
}

/** (v - mean) / std per column as float32; a missing value (NaN) becomes 0, the train mean. */
export function applyStandardizer(rows: Float64Array, n: number, d: number, s: Standardizer): Float32Array {
  const out = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) {
      const v = rows[i * d + j]!;
      out[i * d + j] = Number.isNaN(v) ? 0 : (v - s.mean[j]!) / s.std[j]!;
    }
  }
  return out;
}
