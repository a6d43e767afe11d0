// What a watcher of the round loop keeps of it, from its events alone: who joined, who was asked
// and who answered in the latest round, each site's run of missed rounds and latest update norm,
// each round's duration. The operator's runs and the local runner's metrics both keep it.
import type { RoundRecord } from '../../core/report/run-report.ts';
import type { RoundEvents } from './round-coordinator.ts';

export interface RoundTally {
  /** Rounds completed. */
  round: number;
  /** Every evaluated round so far, in order. */
  records: RoundRecord[];
  joined: string[];
  /** Sites asked to train in the latest round, and those that answered. */
  sampled: string[];
  participants: string[];
  /** Consecutive rounds each site was asked to train and sent nothing. */
  missed: Record<string, number>;
  /** L2 norm of each site's latest update. */
  norms: Record<string, number>;
  /** When the latest round finished (ms since the epoch), and the seconds each round took, in order. */
  lastRoundAt?: number;
  roundSeconds: number[];
}

export function emptyTally(): RoundTally {
  return { round: 0, records: [], joined: [], sampled: [], participants: [], missed: {}, norms: {}, roundSeconds: [] };
}

/** Round events that keep `t` up to date (siteUpdate makes the loop compute update norms). */
export function tallyRounds(t: RoundTally): Required<Pick<RoundEvents, 'roundStarted' | 'siteUpdate' | 'roundFinished'>> {
  let answered = new Set<string>();
  let startedAt = performance.now();
  return {
    roundStarted: (_round, sites) => {
      t.sampled = [...sites];
      for (const s of sites) if (!t.joined.includes(s)) t.joined.push(s);
      answered = new Set();
      startedAt = performance.now();
    },
    siteUpdate: (_round, site, u) => {
      answered.add(site);
      t.norms[site] = u.norm;
    },
    roundFinished: (record, round) => {
      t.round = round;
      t.participants = [...answered].sort();
      for (const s of t.sampled) t.missed[s] = answered.has(s) ? 0 : (t.missed[s] ?? 0) + 1;
      t.lastRoundAt = Date.now();
      t.roundSeconds.push((performance.now() - startedAt) / 1000);
      if (record) t.records.push(record);
    },
  };
}
