// A site's state kept on its disk between rounds (consort site --state): what a task of round r
// starts from, what is kept, and what is refused.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { encodeTensors } from '../../core/tensor/safetensors.ts';
import { SITE_STATE_FORMAT, SiteStateStore } from '../../worker/nats/site-state.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const tmp = useTmpDirs();
const id = { job: 'default_hospitals', site: 'north', parameters: 5 };
const values = (k: number) => Float32Array.from({ length: 5 }, (_, i) => k * 10 + i + 0.25);

describe('SiteStateStore', () => {
  it('gives the newest state of a round before the task, bit for bit, and none before the first', () => {
    const store = new SiteStateStore(tmp('site-state'), id);
    expect(store.before(1)).toBeUndefined();
    store.save({ round: 1, residual: values(1), control: values(-1) });
    store.save({ round: 3, residual: values(3), control: values(-3) });
    expect(store.before(1)).toBeUndefined();
    expect(store.before(2)).toEqual({ round: 1, residual: values(1), control: values(-1) });
    // Round 3 trained again (its update never counted): from round 1's state, not its own.
    expect(store.before(3)).toEqual({ round: 1, residual: values(1), control: values(-1) });
    expect(store.before(4)).toEqual({ round: 3, residual: values(3), control: values(-3) });
    // A job with only one of the two keeps only that one.
    store.save({ round: 4, residual: values(4) });
    expect(store.before(5)).toEqual({ round: 4, residual: values(4) });
  });

  it('keeps the last two rounds, and drops a later round than the one it writes (a timeline that did not happen)', () => {
    const store = new SiteStateStore(tmp('site-state'), id);
    for (const r of [1, 2, 3, 5]) store.save({ round: r, residual: values(r) });
    expect(store.rounds()).toEqual([5, 3]);
    // The coordinator resumed from round 3's checkpoint: round 4 is trained again.
    store.save({ round: 4, residual: values(4) });
    expect(store.rounds()).toEqual([4, 3]);
    expect(store.before(6)?.round).toBe(4);
    expect(readdirSync(store.dir).sort()).toEqual(['after-round-3.safetensors', 'after-round-4.safetensors']);
  });

  it("refuses another job's, another site's, another model's or a damaged state, saying why, and takes the next older one", () => {
    const root = tmp('site-state');
    const store = new SiteStateStore(root, id);
    store.save({ round: 1, residual: values(1) });
    store.save({ round: 2, residual: values(2) });
    const file = join(store.dir, 'after-round-2.safetensors');
    const good = readFileSync(file);
    const meta = { format: SITE_STATE_FORMAT, job: id.job, site: id.site, round: '2', parameters: '5' };
    const cases: Array<[string, Uint8Array, RegExp]> = [
      [
        'another job',
        encodeTensors([{ name: 'residual', dtype: 'F32', shape: [5], data: values(2) }], { ...meta, job: 'default_other' }),
        /the state of job default_other, not default_hospitals/,
      ],
      [
        'another site',
        encodeTensors([{ name: 'residual', dtype: 'F32', shape: [5], data: values(2) }], { ...meta, site: 'south' }),
        /the state of site south, not north/,
      ],
      [
        'another model',
        encodeTensors([{ name: 'residual', dtype: 'F32', shape: [6], data: new Float32Array(6) }], { ...meta, parameters: '6' }),
        /a model of 6 parameters, this job's has 5/,
      ],
      [
        'another round',
        encodeTensors([{ name: 'residual', dtype: 'F32', shape: [5], data: values(2) }], { ...meta, round: '7' }),
        /says round 7 in a file named for round 2/,
      ],
      ['not ours', encodeTensors([{ name: 'residual', dtype: 'F32', shape: [5], data: values(2) }], {}), /not a Consort site state \(format: /],
      [
        'a stray tensor',
        encodeTensors([{ name: 'weights', dtype: 'F32', shape: [5], data: values(2) }], meta),
        /tensor weights \(F32 \[5\]\) is not a residual or control variate/,
      ],
      ['truncated', good.subarray(0, good.length - 3), /./],
    ];
    for (const [what, bytes, why] of cases) {
      writeFileSync(file, bytes);
      const refused: Array<[string, string]> = [];
      expect(
        store.before(3, (f, w) => refused.push([f, w])),
        what,
      ).toEqual({ round: 1, residual: values(1) });
      expect(refused, what).toHaveLength(1);
      expect(refused[0]![0]).toBe(file);
      expect(refused[0]![1], what).toMatch(why);
    }
    // A state of the right job and site but the wrong length is refused before it is written.
    expect(() => store.save({ round: 3, control: new Float32Array(4) })).toThrow('site state: control has 4 values, the model 5');
  });

  it('drops the state of a refused round: the next round starts from the one before, and keeps it beside its own', () => {
    const store = new SiteStateStore(tmp('site-state'), id);
    for (const r of [1, 2, 3]) store.save({ round: r, residual: values(r), control: values(-r) });
    store.drop(3);
    expect(store.rounds()).toEqual([2]);
    expect(store.before(4)).toEqual({ round: 2, residual: values(2), control: values(-2) });
    store.save({ round: 4, residual: values(4) });
    expect(store.rounds()).toEqual([4, 2]);
    // None to drop (a fit that failed before its state was written): nothing happens.
    store.drop(5);
    expect(store.rounds()).toEqual([4, 2]);
  });

  it('keeps each job and site apart under one folder', () => {
    const root = tmp('site-state');
    new SiteStateStore(root, id).save({ round: 1, residual: values(1) });
    new SiteStateStore(root, { ...id, site: 'south' }).save({ round: 1, residual: values(7) });
    expect(new SiteStateStore(root, id).before(2)?.residual).toEqual(values(1));
    expect(new SiteStateStore(root, { ...id, site: 'south' }).before(2)?.residual).toEqual(values(7));
    expect(new SiteStateStore(root, { ...id, job: 'default_other' }).before(2)).toBeUndefined();
  });
});
