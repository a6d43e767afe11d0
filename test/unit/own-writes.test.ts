// The echoes of the controller's own writes: an informer event that carries exactly the version
// our write left is not news; any other version, or an object we never wrote, is.
import { describe, expect, it } from 'vitest';
import { OwnWrites } from '../../operator/kube/own-writes.ts';

const obj = (name: string, resourceVersion?: string, namespace = 'default') => ({
  metadata: { name, namespace, ...(resourceVersion ? { resourceVersion } : {}) },
});

describe('OwnWrites', () => {
  it('recognises the echo of our write once, and nothing else as one', () => {
    const own = new OwnWrites();
    own.wrote('pods', obj('a', '10'));
    expect(own.isEcho('pods', obj('a', '9'))).toBe(false); // an older event still in flight
    expect(own.isEcho('secrets', obj('a', '10'))).toBe(false); // another resource
    expect(own.isEcho('pods', obj('a', '10', 'other'))).toBe(false); // another namespace
    expect(own.isEcho('pods', obj('a', '10'))).toBe(true);
    // A second event with that version (a re-list) is news again: the record is spent.
    expect(own.isEcho('pods', obj('a', '10'))).toBe(false);
    expect(own.size).toBe(0);
  });

  it('a later change by anyone has a newer version, so it is never taken for our echo', () => {
    const own = new OwnWrites();
    own.wrote('federatedjobs', obj('job', '5'));
    expect(own.isEcho('federatedjobs', obj('job', '6'))).toBe(false);
    // Our next write replaces the record.
    own.wrote('federatedjobs', obj('job', '7'));
    expect(own.isEcho('federatedjobs', obj('job', '5'))).toBe(false);
    expect(own.isEcho('federatedjobs', obj('job', '7'))).toBe(true);
  });

  it('forgets a deleted object, and ignores writes whose answer has no version', () => {
    const own = new OwnWrites();
    own.wrote('configmaps', obj('c', '3'));
    own.forget('configmaps', obj('c'));
    expect(own.size).toBe(0);
    own.wrote('configmaps', obj('d'));
    expect(own.size).toBe(0);
    expect(own.isEcho('configmaps', obj('d'))).toBe(false);
  });
});
