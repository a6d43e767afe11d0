// Flag schemas shared by the commands. A module of its own, so that a command importing one does
// not load another command's dependencies (the operator importing the local runner would load
// TF.js and the site workers).
import { z } from 'zod';

/** A whole-number flag in [min, max]. */
export const intFlag = (min: number, max: number) =>
  z.string().regex(/^\d+$/, 'must be a whole number').transform(Number).pipe(z.number().int().min(min).max(max));
