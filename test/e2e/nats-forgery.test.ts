// Against the real server with the job's generated configuration, a site's own credentials
// (site A may publish on A's update subject, nothing else) used to send what the coordinator must
// not believe: an envelope signed with another key, one without a signature, and replays of what
// A sent before. Each is answered with its reason and counted once under it in the coordinator's
// status; an exact redelivery of a counted update is a duplicate, counted as such and not folded
// in again; and the job ends in the bytes of a clean run.
import { Objm } from '@nats-io/obj';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Ack, type UpdateEnvelope } from '../../core/protocol/messages.ts';
import type { RejectionCode } from '../../core/protocol/rejections.ts';
import { newNonce, signEnvelope } from '../../core/protocol/signing.ts';
import { objectNames } from '../../core/protocol/subjects.ts';
import { readOutput, useFederations } from '../helpers/federation.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const ROUNDS = 5;
/** Site A: paused while its credentials are used, so that round 4 is open and waits for its update. */
const A = 'st-mary';
const OPEN = 4;

describe("forged, unsigned and replayed updates on site A's subject", () => {
  const tmp = useTmpDirs();
  const federation = useFederations();

  it('are refused, each counted under its code, and change nothing', async () => {
    const dir = tmp('nats-forgery');
    // maxStaleness 1: the coordinator keeps the nonces of the last 3 rounds; round 1 is older.
    const f = await federation({ rounds: ROUNDS, sampling: { minSites: 5 }, aggregation: { roundDeadlineSeconds: 60, maxStaleness: 1 } });
    const reference = f.run(join(dir, 'reference'));
    const out = join(dir, 'out');
    const sites = f.sites(undefined, { [A]: [`fit:${OPEN}`] });
    const coordinator = f.coordinator(out);

    const before = await f.hold(sites[A]!, A, OPEN);
    // What A sent before, as the coordinator's user saw it on the wire (both were counted: every
    // round needs all five sites).
    const previous = await f.updateOf(A, OPEN - 1);
    const oldest = await f.updateOf(A, 1);

    const nc = await f.connectAsSite(A);
    const send = async (body: Uint8Array | string) => Ack.parse((await nc.request(f.subj.update(A), body, { timeout: 10_000 })).json());
    const seedOf = (site: string) => f.auth.sites[site]!.seed;

    // A well-formed update of A for the open round: its object in A's bucket (A's own update of
    // the round before, put again under the new name), everything as the protocol wants it.
    const nonce = newNonce();
    const name = objectNames.update(OPEN, nonce);
    const bytes = await (await new Objm(f.observer).open(f.bucket.updates(A))).getBlob(previous.value.object.name);
    await (await new Objm(nc).open(f.bucket.updates(A))).putBlob({ name }, bytes!);
    const { signature: _, ...unsigned } = { ...previous.value, round: OPEN, nonce, object: { ...previous.value.object, name } } as UpdateEnvelope;

    // 1. Signed with another key: another site's (a real key of the job) and a stranger's.
    const byB = await send(JSON.stringify(signEnvelope(unsigned, seedOf('riverside'))));
    expect(byB).toMatchObject({ accepted: false, code: 'CONSORT_R_BAD_SIGNATURE' });
    // 2. Not signed at all.
    expect(await send(JSON.stringify(unsigned))).toMatchObject({ accepted: false, code: 'CONSORT_R_MISSING_SIGNATURE' });
    // 3. Replays. A's counted update of round 3, byte for byte: a duplicate, not counted again.
    expect(await send(previous.data)).toEqual({ type: 'ack', accepted: true, duplicate: true });
    // ...of round 1, older than the coordinator remembers nonces for: stale.
    expect(await send(oldest.data)).toMatchObject({ accepted: false, code: 'CONSORT_R_STALE_ROUND' });
    // ...and round 3's nonce in a new envelope for the open round, even signed with A's own key.
    const reused = { ...unsigned, nonce: previous.value.nonce, object: { ...unsigned.object, name: objectNames.update(OPEN, previous.value.nonce) } };
    expect(await send(JSON.stringify(signEnvelope(reused, seedOf(A))))).toMatchObject({ accepted: false, code: 'CONSORT_R_REPLAYED_NONCE' });

    const after = await f.statusWhere(() => true, 'the status');
    const rose: Partial<Record<RejectionCode, number>> = {
      CONSORT_R_BAD_SIGNATURE: 1,
      CONSORT_R_MISSING_SIGNATURE: 1,
      CONSORT_R_STALE_ROUND: 1,
      CONSORT_R_REPLAYED_NONCE: 1,
    };
    for (const [code, n] of Object.entries(after.rejections))
      expect(n, code).toBe((before.rejections[code as RejectionCode] ?? 0) + (rose[code as RejectionCode] ?? 0));
    expect(after.duplicates).toBe(before.duplicates + 1);
    expect(after.accepted).toBe(before.accepted);
    expect(after.round).toBe(OPEN);

    // A comes back; its own update of round 4 is taken, and the job ends as a clean run does.
    sites[A]!.resume();
    const exit = await coordinator.exited;
    expect(exit.code, f.logs()).toBe(0);
    expect(coordinator.output()).toMatch(/rejected messages: .*CONSORT_R_BAD_SIGNATURE 1/);
    const result = readOutput(out);
    const clean = await reference;
    for (const r of result.report.rounds) expect(r.participants, `round ${r.round}`).toEqual([...f.siteNames].sort());
    expect(result.sha).toBe(clean.sha);
    expect(Buffer.compare(result.weights, clean.weights)).toBe(0);
  });
});
