// Which sites' updates the rounds aggregated: what a report says of a site that crashed, was
// left out at a deadline, or was not sampled. A run's site list alone ("trained across 3 sites")
// hid a site that took part in one round of five.
import type { RunReport } from './run-report.ts';

/** Per site of the run, the rounds whose aggregate took its update (on time, or late in buffered mode). */
export function roundsTakenPart(report: Pick<RunReport, 'sites' | 'rounds'>): Map<string, number> {
  const counts = new Map(report.sites.map((s) => [s.site, 0]));
  for (const r of report.rounds) {
    for (const site of new Set(r.participants.map((p) => p.split('@')[0]!))) counts.set(site, (counts.get(site) ?? 0) + 1);
  }
  return counts;
}

/** "s3 took part in 1 of 5 rounds" for each site that missed any; undefined when every site took part in every round. */
export function participationNote(report: Pick<RunReport, 'sites' | 'rounds'>): string | undefined {
  const rounds = report.rounds.length;
  const short = [...roundsTakenPart(report)].filter(([, n]) => n < rounds);
  if (rounds === 0 || short.length === 0) return undefined;
  const all = short.length === report.sites.length;
  return `${short.map(([site, n]) => `${site} took part in ${n} of ${rounds} rounds`).join(', ')}${all ? '' : '; the other sites in every round'}`;
}
