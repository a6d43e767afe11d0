// More than 10,000 generated malformed or hostile messages (test/helpers/hostile-messages.ts)
// thrown at the coordinator PROCESS over the real server, with site A's own credentials, on A's
// hello, update and evaluation subjects, while a round is open and waits for A: every one is
// refused and counted under its code, the process keeps answering and ends the job normally,
// the checkpoint does not move, and the final model is the bytes of a clean run.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ParameterLayout } from '../../core/model/layout.ts';
import { REJECTION_CODES, type RejectionCode } from '../../core/protocol/rejections.ts';
import { decodeCheckpoint } from '../../operator/coordinator/checkpoint.ts';
import { readOutput, useFederations } from '../helpers/federation.ts';
import { hostileMessages, type Probe, plant } from '../helpers/hostile-messages.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const ROUNDS = 4;
const A = 'st-mary';
const OPEN = 3;
const MESSAGES = 10_000;
const IN_FLIGHT = 32;

describe('a fuzz of the coordinator process over NATS', () => {
  const tmp = useTmpDirs();
  const federation = useFederations();

  it('refuses and counts every one of 10,000 hostile messages, never crashes, and leaves checkpoint and model untouched', { timeout: 180_000 }, async () => {
    const dir = tmp('nats-fuzz');
    const f = await federation({ rounds: ROUNDS, sampling: { minSites: 5 }, aggregation: { roundDeadlineSeconds: 150 } });
    const reference = f.run(join(dir, 'reference'));
    const out = join(dir, 'out');
    const sites = f.sites(undefined, { [A]: [`fit:${OPEN}`] });
    const coordinator = f.coordinator(out);
    const before = await f.hold(sites[A]!, A, OPEN);
    const checkpoint = (await f.checkpoint())!;
    const { layout } = decodeCheckpoint(checkpoint).transport as { layout: ParameterLayout };

    const { probes, planted } = hostileMessages(
      {
        job: f.key,
        site: A,
        seed: f.auth.sites[A]!.seed,
        other: { site: 'riverside', seed: f.auth.sites.riverside!.seed },
        layout,
        open: OPEN,
        counted: [1, 2],
        hello: f.hellos.find((h) => h.value.site === A)!.value,
      },
      { envelopes: MESSAGES },
    );
    expect(probes.length).toBeGreaterThanOrEqual(MESSAGES);

    // As A: its objects into its own bucket, then every message as a request, IN_FLIGHT at a time.
    const nc = await f.connectAsSite(A);
    // Its bucket holds the updates of the open rounds at most (nats-update-size.test.ts): far
    // fewer than the ~45 hostile objects planted here, which each envelope below names.
    await f.liftUpdateCap(A);
    await plant(nc, f.bucket.updates(A), planted);
    const subject = { hello: f.subj.hello(A), update: f.subj.update(A), evaluation: f.subj.evaluation(A) };
    const answers: Array<{ probe: Probe; accepted?: boolean; code?: string; error?: string }> = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (next < probes.length) {
          const probe = probes[next++]!;
          try {
            const reply = (await nc.request(subject[probe.channel], probe.body, { timeout: 30_000 })).json<{ accepted?: boolean; code?: string }>();
            answers.push({ probe, accepted: reply.accepted, code: reply.code });
          } catch (err) {
            answers.push({ probe, error: (err as Error).message });
          }
        }
      }),
    );

    // Still there, and every message it was given is counted under the code it was answered with.
    expect(coordinator.running, coordinator.tail()).toBe(true);
    const after = await f.statusWhere(() => true, 'the status after the fuzz');
    const answered = answers.filter((a) => a.error === undefined);
    // What the client could not deliver is what NATS itself will not carry (over max_payload), and nothing else.
    const undelivered = answers.filter((a) => a.error !== undefined);
    expect(undelivered.map((a) => a.probe.what)).toEqual(probes.filter((p) => p.expect === 'undeliverable').map((p) => p.what));
    expect(
      undelivered.every((a) => /payload/i.test(a.error!)),
      undelivered.map((a) => a.error).join('\n'),
    ).toBe(true);
    expect(answered.length).toBeGreaterThanOrEqual(MESSAGES);
    // Hellos past the site's hello budget are refused unread (CONSORT_R_HELLO_RATE): some of these are.
    const expected = (p: Probe, code: RejectionCode) =>
      p.expect === 'any' || (p.expect !== 'undeliverable' && p.expect.includes(code)) || (p.channel === 'hello' && code === 'CONSORT_R_HELLO_RATE');
    const wrong = answered.filter(
      (a) => a.accepted !== false || !REJECTION_CODES.includes(a.code as RejectionCode) || !expected(a.probe, a.code as RejectionCode),
    );
    expect(
      wrong.slice(0, 10).map((a) => `${a.probe.channel}: ${a.probe.what} → ${a.accepted ? 'accepted' : a.code} (expected ${a.probe.expect})`),
      `${wrong.length} messages answered otherwise than expected`,
    ).toEqual([]);
    const tally = new Map<string, number>();
    for (const a of answered) tally.set(a.code!, (tally.get(a.code!) ?? 0) + 1);
    const delta: Record<string, number> = Object.fromEntries(
      REJECTION_CODES.map((c) => [c, (after.rejections[c] ?? 0) - (before.rejections[c] ?? 0)]).filter(([, n]) => n !== 0),
    );
    expect(delta).toEqual(Object.fromEntries([...tally.entries()].sort()));
    expect(Object.values(delta).reduce((a, b) => a + b, 0)).toBe(answered.length);
    // Nothing else moved: the round still waits for A with the same four updates, nothing taken twice.
    expect(after).toMatchObject({ round: OPEN, accepted: before.accepted, duplicates: before.duplicates, done: false });
    expect(Buffer.compare(Buffer.from((await f.checkpoint())!), Buffer.from(checkpoint))).toBe(0);
    // Each (site, reason) logged once, however many times it came.
    const logged = coordinator.output().match(/refused (a message from )?site "st-mary".*\[CONSORT_R_[A-Z_]+\]/g) ?? [];
    const codes = logged.map((l) => `${l.startsWith('refused site') ? 'hello' : 'envelope'} ${l.match(/\[(CONSORT_R_[A-Z_]+)\]/)![1]}`);
    expect(codes.length).toBe(new Set(codes).size);

    // A comes back: its own update is taken, the job ends as a clean one does.
    sites[A]!.resume();
    const exit = await coordinator.exited;
    expect(exit.code, f.logs()).toBe(0);
    const result = readOutput(out);
    const clean = await reference;
    for (const r of result.report.rounds) expect(r.participants, `round ${r.round}`).toEqual([...f.siteNames].sort());
    expect(result.sha).toBe(clean.sha);
    expect(Buffer.compare(result.weights, clean.weights)).toBe(0);
  });
});
