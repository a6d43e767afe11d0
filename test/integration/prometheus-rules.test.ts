// The alert rules of manifests/prometheus/rules.yaml through promtool (Prometheus 3.x, built by
// scripts/prometheus.sh): `check rules` is clean, and `test rules` passes the unit tests of
// test/prometheus/rules.test.yaml, where each alert fires, and does not where it must not.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { promtool } from '../helpers/prometheus.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const RULES = 'manifests/prometheus/rules.yaml';
const TESTS = 'test/prometheus/rules.test.yaml';

interface Rule {
  alert: string;
  expr: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
const rules = (parse(readFileSync(resolve(ROOT, RULES), 'utf8')) as { groups: { rules: Rule[] }[] }).groups.flatMap((g) => g.rules);

describe('the alert rules', () => {
  it('promtool check rules is clean (no lint findings either)', () => {
    const r = promtool(['check', 'rules', '--lint=all', '--lint-fatal', RULES]);
    expect(r.code, `${r.stdout}${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`SUCCESS: ${rules.length} rules found`));
  });

  it('promtool test rules: each alert fires, and stays silent where it must', () => {
    const r = promtool(['test', 'rules', TESTS]);
    expect(r.code, `${r.stdout}${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/SUCCESS/);
  });

  it('every alert has a severity, a summary, a description and a runbook section that exists, and a unit test', () => {
    const runbooks = readFileSync(resolve(ROOT, 'docs/runbooks.md'), 'utf8');
    const anchors = new Set([...runbooks.matchAll(/^## (.+)$/gm)].map((m) => m[1]!.trim().toLowerCase().replace(/\s+/g, '-')));
    const tests = parse(readFileSync(resolve(ROOT, TESTS), 'utf8')) as { tests: { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[] };
    const cases = tests.tests.flatMap((t) => t.alert_rule_test);
    expect(rules.map((r) => r.alert)).toEqual([
      'ConsortJobStalled',
      'ConsortSiteMissingRounds',
      'ConsortRejectedUpdatesBurst',
      'ConsortAccuracyFalling',
      'ConsortPrivacyBudgetNearlySpent',
    ]);
    for (const rule of rules) {
      expect(rule.labels?.severity, rule.alert).toMatch(/^(critical|warning|info)$/);
      expect(rule.annotations?.summary, rule.alert).toBeTruthy();
      expect(rule.annotations?.description, rule.alert).toBeTruthy();
      expect(rule.annotations?.runbook_url, rule.alert).toBe(`docs/runbooks.md#${rule.alert.toLowerCase()}`);
      expect(anchors.has(rule.alert.toLowerCase()), `docs/runbooks.md has a section ${rule.alert}`).toBe(true);
      const mine = cases.filter((c) => c.alertname === rule.alert);
      expect(
        mine.some((c) => c.exp_alerts.length > 0),
        `${rule.alert} fires in a unit test`,
      ).toBe(true);
      expect(
        mine.some((c) => c.exp_alerts.length === 0),
        `${rule.alert} stays silent in a unit test`,
      ).toBe(true);
    }
  });
});
