import { describe, expect, it } from 'vitest';
import { ArmedFailpoints, CoordinatorFailpoints, Failpoints } from '../../worker/nats/failpoints.ts';

describe('site failpoints (CONSORT_FAILPOINTS)', () => {
  it('parses a comma-separated list; empty is none', () => {
    expect(Failpoints.parse('')).toEqual([]);
    expect(Failpoints.parse('stop-after-ack:fit:3, stop-after-ack:evaluate:12')).toEqual([
      { task: 'fit', round: 3 },
      { task: 'evaluate', round: 12 },
    ]);
  });

  it('refuses anything else, saying what it expected', () => {
    for (const bad of [
      'stop-after-ack:fit:0',
      'stop:fit:3',
      'stop-after-ack:train:3',
      'stop-after-ack:fit:-1',
      'stop-after-ack:fit:3x',
      // An evaluation has no update to write before its answer.
      'stop-before-answer:evaluate:3',
    ]) {
      const r = Failpoints.safeParse(bad);
      expect(r.success, bad).toBe(false);
      expect(r.error?.issues[0]?.message).toMatch(
        /stop-after-ack:<fit\|evaluate>:<round>, stop-before-answer:fit:<round>, hold-before-answer:fit:<round> or fail:<fit\|evaluate>:<round>/,
      );
    }
  });

  it('fires once per point, only for its task type and round', () => {
    const armed = new ArmedFailpoints(Failpoints.parse('stop-after-ack:fit:2,stop-after-ack:evaluate:2'));
    expect(armed.hit({ type: 'fit', round: 1 })).toBe(false);
    expect(armed.hit({ type: 'fit', round: 2 })).toBe(true);
    expect(armed.hit({ type: 'fit', round: 2 })).toBe(false);
    expect(armed.hit({ type: 'evaluate', round: 2 })).toBe(true);
    expect(armed.hit({ type: 'evaluate', round: 2 })).toBe(false);
  });

  it('a fail point fires only as a failure, a stop point only as a stop', () => {
    const armed = new ArmedFailpoints(Failpoints.parse('fail:fit:1,stop-after-ack:fit:1'));
    expect(Failpoints.parse('fail:evaluate:4')).toEqual([{ action: 'fail', task: 'evaluate', round: 4 }]);
    expect(armed.fails({ type: 'fit', round: 1 })).toBe(true);
    expect(armed.fails({ type: 'fit', round: 1 })).toBe(false);
    expect(armed.hit({ type: 'fit', round: 1 })).toBe(true);
    expect(armed.hit({ type: 'fit', round: 1 })).toBe(false);
  });

  it('a stop point before the answer fires there only', () => {
    expect(Failpoints.parse('stop-before-answer:fit:2')).toEqual([{ action: 'before-answer', task: 'fit', round: 2 }]);
    const armed = new ArmedFailpoints(Failpoints.parse('stop-before-answer:fit:2'));
    expect(armed.hit({ type: 'fit', round: 2 })).toBe(false);
    expect(armed.fails({ type: 'fit', round: 2 })).toBe(false);
    expect(armed.beforeAnswer({ type: 'fit', round: 1 })).toBe(false);
    expect(armed.beforeAnswer({ type: 'fit', round: 2 })).toBe(true);
    expect(armed.beforeAnswer({ type: 'fit', round: 2 })).toBe(false);
  });

  it('a hold point before the answer fires there only, and is not a stop point', () => {
    expect(Failpoints.parse('hold-before-answer:fit:3')).toEqual([{ action: 'hold-before-answer', task: 'fit', round: 3 }]);
    const armed = new ArmedFailpoints(Failpoints.parse('hold-before-answer:fit:3'));
    expect(armed.beforeAnswer({ type: 'fit', round: 3 })).toBe(false);
    expect(armed.hit({ type: 'fit', round: 3 })).toBe(false);
    expect(armed.holdsAnswer({ type: 'fit', round: 3 })).toBe(true);
    expect(armed.holdsAnswer({ type: 'fit', round: 3 })).toBe(false);
    expect(Failpoints.safeParse('hold-before-answer:evaluate:3').success).toBe(false);
  });
});

describe('coordinator failpoints (CONSORT_COORDINATOR_FAILPOINTS)', () => {
  it('takes stop-before-outputs, or none; refuses a site point, saying what it expected', () => {
    expect(CoordinatorFailpoints.parse('')).toEqual([]);
    expect(CoordinatorFailpoints.parse(' stop-before-outputs ')).toEqual(['stop-before-outputs']);
    const r = CoordinatorFailpoints.safeParse('stop-after-ack:fit:3');
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.message).toMatch(/expected stop-before-outputs/);
  });
});
