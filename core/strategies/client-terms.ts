// The client-side corrections, as plain arrays: the reference that the TF.js worker's tensor
// implementation is tested against. Computed in float64, rounded to float32 once.

function sameLength(what: string, ...arrays: Float32Array[]): number {
  const n = arrays[0]!.length;
  for (const a of arrays) if (a.length !== n) throw new RangeError(`${what}: arrays of different lengths`);
  return n;
}

/** FedProx (Li et al. 2020): the gradient of loss + mu/2 ||w - wGlobal||^2 is grad + mu (w - wGlobal). */
export function proximalGradient(grad: Float32Array, w: Float32Array, wGlobal: Float32Array, mu: number): Float32Array {
  const n = sameLength('proximalGradient', grad, w, wGlobal);
  if (!(mu >= 0 && mu < Infinity)) throw new RangeError(`proximalGradient: mu must be finite and >= 0, got ${mu}`);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = grad[i]! + mu * (w[i]! - wGlobal[i]!);
  return out;
}

/** SCAFFOLD (Karimireddy et al. 2020, Algorithm 1 line 10): the local step uses grad - c_i + c. */
export function scaffoldCorrectedGradient(grad: Float32Array, cLocal: Float32Array, cServer: Float32Array): Float32Array {
  const n = sameLength('scaffoldCorrectedGradient', grad, cLocal, cServer);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = grad[i]! - cLocal[i]! + cServer[i]!;
  return out;
}

/**
 * SCAFFOLD option II (Karimireddy et al. 2020, Algorithm 1 line 12):
 * c_i+ = c_i - c + (x - y_i) / (K lr), with x the received global weights, y_i the trained
 * ones, K the local steps taken and lr the local learning rate. That is the mean of the K local
 * gradients (x - y_i = lr Sum_k (g_k - c_i + c)) when each step is lr times its gradient, i.e.
 * under plain SGD only: under momentum or Adam the worker sums the gradients themselves.
 */
export function scaffoldControlUpdate(
  cLocal: Float32Array,
  cServer: Float32Array,
  globalW: Float32Array,
  localW: Float32Array,
  steps: number,
  lr: number,
): Float32Array {
  const n = sameLength('scaffoldControlUpdate', cLocal, cServer, globalW, localW);
  if (!Number.isSafeInteger(steps) || steps < 1) throw new RangeError(`scaffoldControlUpdate: steps must be a positive integer, got ${steps}`);
  if (!(lr > 0 && lr < Infinity)) throw new RangeError(`scaffoldControlUpdate: lr must be finite and > 0, got ${lr}`);
  const kLr = steps * lr;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = cLocal[i]! - cServer[i]! + (globalW[i]! - localW[i]!) / kLr;
  return out;
}
