// Which refusals of an update tell the site that it will never count (so that it takes back its
// state for it), and which leave its fate open.
import { describe, expect, it } from 'vitest';
import { REJECTION_CODES, refusedForGood } from '../../core/protocol/rejections.ts';

describe('refusedForGood', () => {
  it('is every catalogue code but NOT_READY and DUPLICATE', () => {
    const open = REJECTION_CODES.filter((c) => !refusedForGood(c));
    expect(open.sort()).toEqual(['CONSORT_R_DUPLICATE', 'CONSORT_R_NOT_READY']);
    expect(refusedForGood('CONSORT_R_STALE_ROUND')).toBe(true);
  });

  it('tells nothing for a code it does not know, or none', () => {
    expect(refusedForGood('CONSORT_R_FROM_A_NEWER_COORDINATOR')).toBe(false);
    expect(refusedForGood(undefined)).toBe(false);
    expect(refusedForGood('toString')).toBe(false);
  });
});
