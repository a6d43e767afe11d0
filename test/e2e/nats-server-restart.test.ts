// nats-server killed (SIGKILL) and started again on the same port with the same JetStream store,
// twice in one job: once as a round starts (tasks, model reads and update uploads in flight),
// once with a round half collected. The coordinator and the sites reconnect, the job completes,
// and nothing is counted twice: an update delivered again after the outage is answered as a
// duplicate, and the final model is the bytes of an uninterrupted run.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Ack } from '../../core/protocol/messages.ts';
import { readOutput, useFederations } from '../helpers/federation.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const ROUNDS = 8;
const HELD = 'st-mary';

describe('nats-server restarted mid-job (SIGKILL, JetStream on disk)', () => {
  const tmp = useTmpDirs();
  const federation = useFederations();

  it('the coordinator and the sites reconnect, the job completes, and no update is counted twice', async () => {
    const dir = tmp('nats-server-restart');
    // Every round needs all five sites: an update lost in the outage would fail the job, not hide.
    const f = await federation({ rounds: ROUNDS, sampling: { minSites: 5 }, aggregation: { roundDeadlineSeconds: 60 } });
    const reference = f.run(join(dir, 'reference'));
    const out = join(dir, 'out');
    const sites = f.sites(undefined, { [HELD]: ['fit:6'] });
    const coordinator = f.coordinator(out);

    // 1. As round 3 starts: the model is being read and updates trained and uploaded.
    await f.notice(3);
    await f.server.restart({ signal: 'SIGKILL', downMs: 300 });

    // 2. With round 6 half collected: four updates counted, the fifth site paused.
    const before = await f.hold(sites[HELD]!, HELD, 6);
    await f.server.restart({ signal: 'SIGKILL', downMs: 300 });
    // Back: the coordinator answers again, with what it had counted.
    const after = await f.statusWhere(() => true, 'the coordinator to answer after the restart');
    expect(after).toMatchObject({ round: 6, accepted: 4 });

    // An update counted before the outage, delivered again (as a site whose ack was lost does):
    // answered as a duplicate, counted as one, and not folded in a second time.
    const counted = f.updates.find((u) => u.value.round === 6 && u.value.site !== HELD)!;
    const site = await f.connectAsSite(counted.value.site);
    const ack = Ack.parse((await site.request(f.subj.update(counted.value.site), counted.data, { timeout: 10_000 })).json());
    expect(ack).toEqual({ type: 'ack', accepted: true, duplicate: true });
    const redelivered = await f.statusWhere(() => true, 'the status after the redelivery');
    expect(redelivered.accepted).toBe(4);
    expect(redelivered.duplicates).toBe(after.duplicates + 1);
    expect(redelivered.rejections).toEqual(after.rejections);
    expect(before.duplicates).toBeLessThanOrEqual(after.duplicates);
    sites[HELD]!.resume();

    const exit = await coordinator.exited;
    expect(exit.code, f.logs()).toBe(0);
    for (const s of Object.values(sites)) expect((await s.exited).code, s.tail()).toBe(0);
    // Each process said that its server went and came back (a site's "no coordinator has
    // answered" alone would blame the coordinator).
    for (const p of [coordinator, ...Object.values(sites)]) {
      expect(p.output(), p.label).toMatch(/lost the connection to the NATS server \S+; reconnecting\n/);
      expect(p.output(), p.label).toMatch(/reconnected to the NATS server \S+ after \d+\.\d s\n/);
    }

    const resumed = readOutput(out);
    const uninterrupted = await reference;
    for (const r of resumed.report.rounds) expect(r.participants, `round ${r.round}`).toEqual([...f.siteNames].sort());
    expect(resumed.sha).toBe(uninterrupted.sha);
    expect(Buffer.compare(resumed.weights, uninterrupted.weights)).toBe(0);
  });
});
