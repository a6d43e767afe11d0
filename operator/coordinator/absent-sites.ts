// Sites that will not come, asked of the operator by a coordinator in a Pod of its own. In site
// mode a hospital's own operator may refuse a job (its policy); the job's operator hears that
// refusal, and a coordinator running inside the operator is told directly (notComing). One
// placed in a Pod asks on the job's absent subject while the sites join, so that it starts the
// rounds once every other site is here instead of waiting out its join timeout (300 s by
// default) for a site that has said no. No answer (no operator: `consort coordinator` run by
// hand) is no news.
import type { NatsConnection } from '@nats-io/transport-node';
import { describeIssues } from '../../core/job/issues.ts';
import { AbsentSites } from '../../core/protocol/messages.ts';
import { subjects } from '../../core/protocol/subjects.ts';
import { decodeJson } from '../../core/protocol/wire.ts';

/** How often the operator is asked while the sites join. */
export const ABSENT_ASK_MS = 2000;
const ANSWER_TIMEOUT_MS = 1500;

export interface AbsentSitesAsker {
  /** The sites the operator last said will not come (none until it answers). */
  current(): ReadonlySet<string>;
  stop(): void;
}

/** Asks the operator every ABSENT_ASK_MS until stopped; says once each time the answer changes. */
export function askAbsentSites(nc: NatsConnection, job: string, log: (line: string) => void, everyMs = ABSENT_ASK_MS): AbsentSitesAsker {
  let sites: ReadonlySet<string> = new Set();
  let said = '';
  let problem = '';
  let asking = false;
  let stopped = false;
  const ask = async () => {
    if (asking || stopped) return;
    asking = true;
    try {
      const reply = await nc.request(subjects(job).absent, '', { timeout: ANSWER_TIMEOUT_MS }).catch(() => undefined);
      if (!reply || stopped) return;
      const parsed = AbsentSites.safeParse(decodeJson(reply.data));
      if (!parsed.success || parsed.data.job !== job) {
        const why = parsed.success ? `it is of job ${parsed.data.job}` : describeIssues(parsed.error, []).join('; ');
        if (why !== problem) log(`the operator's answer on who will not come cannot be read: ${why}`);
        problem = why;
        return;
      }
      sites = new Set(parsed.data.sites.map((s) => s.site));
      const now = parsed.data.sites.map((s) => `${s.site} (${s.reason})`).join(', ');
      if (now !== said && now !== '') log(`not waiting for sites whose own operator refused the job: ${now}`);
      said = now;
    } finally {
      asking = false;
    }
  };
  void ask();
  const timer = setInterval(() => void ask(), everyMs);
  timer.unref();
  return {
    current: () => sites,
    stop: () => {
      stopped = true;
      clearInterval(timer);
    },
  };
}
