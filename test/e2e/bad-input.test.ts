// Bad input: each mistake a user can make in a job file, its data or the flags gives exit status
// 2, one clear message that names the field, flag, file or line, and no output folder (neither
// the result folder nor its staging sibling) that could pass for a result.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { type CliResult, REPO_ROOT, runConsort, transcript } from '../helpers/consort-cli.ts';
import { hospitalSpec, leftovers, writeJob } from '../helpers/jobs.ts';
import { csvData, hospitalCsvText, writeDataFile, writeHospitalCsvSite } from '../helpers/site-data.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

// The tests run concurrently (most of their time is process start-up): folders go after all.
const tmp = useTmpDirs('file');

/** Runs `consort run JOB --out DIR FLAGS...` in a fresh folder and checks the failure contract. */
async function expectBadInput(job: string, out: string, flags: string[] = []): Promise<{ message: string; result: CliResult }> {
  const result = await runConsort(['run', job, '--quiet', '--out', out, ...flags]);
  const why = transcript(result);
  expect(result.code, why).toBe(2);
  expect(result.stdout, why).toBe('');
  // One message: one line that says what is wrong (problem lines may follow it, indented), no
  // stack trace, no usage dump.
  const lines = result.stderr.split('\n').filter((l) => l.trim() !== '');
  const headlines = lines.filter((l) => /^(consort|error)\b/.test(l));
  expect(headlines, why).toHaveLength(1);
  expect(
    lines.every((l) => l === headlines[0] || /^ {2}\S/.test(l)),
    why,
  ).toBe(true);
  expect(result.stderr, why).not.toMatch(/^\s+at .+:\d+:\d+\)?$/m);
  expect(result.stderr, why).not.toContain('Usage:');
  expect(leftovers(out), why).toEqual([]);
  return { message: result.stderr, result };
}

/** A folder with a job over two good CSV sites and `broken` (whose data entry is given). */
function csvJob(dir: string, broken: Record<string, unknown>, extra: Record<string, unknown> = {}): string {
  const good = [
    writeHospitalCsvSite(dir, { name: 'north', train: 40, test: 15, prevalence: 0.3, shift: 0 }, 1),
    writeHospitalCsvSite(dir, { name: 'south', train: 40, test: 15, prevalence: 0.4, shift: 0.3 }, 2),
  ];
  return writeJob(dir, {
    model: { type: 'logistic' },
    sites: [...good.map((s) => ({ name: s.name, data: csvData(s) })), { name: 'broken-site', data: broken }],
    rounds: 2,
    ...extra,
  });
}

describe('a job file with a wrong field', () => {
  it.concurrent.each([
    ['a value of the wrong type', { training: { learningRate: 'fast' } }, ['spec.training.learningRate', 'number']],
    ['a number out of range', { training: { learningRate: -1 } }, ['spec.training.learningRate']],
    ['an unknown field', { training: { learningRat: 0.1 } }, ['spec.training', 'learningRat']],
    ['an unknown strategy', { strategy: { name: 'fedsgd' } }, ['spec.strategy.name', 'fedavg']],
    ['an unknown strategy parameter', { strategy: { name: 'fedavg', mu: 0.1 } }, ['spec.strategy', 'mu']],
    ['a site name that is not a DNS label', { sites: [{ name: 'St Mary', data: { type: 'synthetic', generator: 'hospital' } }] }, ['spec.sites[0].name']],
  ])('%s', async (_what, change, mentions) => {
    const dir = tmp('bad-spec');
    const job = writeJob(dir, hospitalSpec(undefined, change as Record<string, unknown>));
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toContain(job);
    for (const m of mentions) expect(message).toContain(m);
  });

  it.concurrent('every problem at once: the rules between sites are named beside a wrong field (they used to wait for it to be fixed)', async () => {
    const dir = tmp('bad-many');
    const spec = hospitalSpec(undefined, { seed: 3.5 });
    const sites = spec.sites as Array<{ name: string }>;
    sites[1]!.name = sites[0]!.name;
    const job = writeJob(dir, spec);
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toContain('(2 problems)');
    expect(message).toMatch(/^ {2}spec\.seed: /m);
    expect(message).toContain(`  spec.sites[1].name: duplicate site name "${sites[0]!.name}" (also sites[0])`);
  });

  it.concurrent('a document that is not a FederatedJob', async () => {
    const dir = tmp('bad-kind');
    const job = join(dir, 'job.yaml');
    writeFileSync(job, 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n');
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toContain('kind');
  });
});

describe('a job file that is not valid YAML', () => {
  it.concurrent('names the line', async () => {
    const dir = tmp('bad-yaml');
    const job = join(dir, 'job.yaml');
    // Line 7 repeats a key of line 6.
    writeFileSync(
      job,
      ['apiVersion: consort.dev/v1alpha1', 'kind: FederatedJob', 'metadata:', '  name: bad-yaml', 'spec:', '  rounds: 3', '  rounds: 4', ''].join('\n'),
    );
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toContain(`${job} line 7`);
    expect(message).toMatch(/yaml/i);
    expect(message).not.toContain(': [');
  });

  it.concurrent('an unclosed bracket names its line or the next', async () => {
    const dir = tmp('bad-yaml');
    const job = join(dir, 'job.yaml');
    writeFileSync(
      job,
      ['apiVersion: consort.dev/v1alpha1', 'kind: FederatedJob', 'metadata:', '  name: bad-yaml', 'spec:', '  model: { type: logistic', '  rounds: 3', ''].join(
        '\n',
      ),
    );
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toMatch(new RegExp(`${job.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} line [67]\\b`));
  });
});

describe('a job file that attacks the reader', () => {
  it.concurrent('an alias bomb ("billion laughs") is refused as YAML, not an unexpected failure', async () => {
    const dir = tmp('bad-yaml');
    const job = join(dir, 'job.yaml');
    const levels = 'abcdefghi'.split('');
    const lines = [`a: &a [${Array(9).fill('"lol"').join(', ')}]`];
    for (let i = 1; i < levels.length; i++)
      lines.push(
        `${levels[i]}: &${levels[i]} [${Array(9)
          .fill(`*${levels[i - 1]}`)
          .join(', ')}]`,
      );
    writeFileSync(job, `${lines.join('\n')}\napiVersion: consort.dev/v1alpha1\nkind: FederatedJob\nmetadata: { name: bomb }\nspec: *i\n`);
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toMatch(/not valid YAML: .*alias/i);
  });

  it.concurrent('a device, a FIFO or an oversized file as the job file is refused before it is read', async () => {
    const dir = tmp('bad-yaml');
    const fifo = join(dir, 'fifo.yaml');
    execFileSync('mkfifo', [fifo]);
    const huge = join(dir, 'huge.yaml');
    writeFileSync(huge, `# ${'x'.repeat(5 * 1024 * 1024)}\n`);
    for (const [job, why] of [
      ['/dev/zero', 'is not a regular file (a device)'],
      [fifo, 'is not a regular file (a FIFO)'],
      [huge, 'more than a job file may have'],
    ] as const) {
      const { message } = await expectBadInput(job, join(dir, 'out'));
      expect(message, job).toContain(`${job}: `);
      expect(message, job).toContain(why);
    }
  });
});

describe('bad site data', () => {
  it.concurrent('a device or a FIFO as a data file is refused before it is read (/dev/zero ran out of memory, a FIFO blocked for ever)', async () => {
    const dir = tmp('bad-data');
    const fifo = join(dir, 'fifo.csv');
    execFileSync('mkfifo', [fifo]);
    for (const [train, why] of [
      ['/dev/zero', 'is not a regular file (a device)'],
      [fifo, 'is not a regular file (a FIFO)'],
    ] as const) {
      const { message } = await expectBadInput(csvJob(dir, csvData({ train })), join(dir, `out-${why.length}`));
      expect(message, train).toContain(why);
    }
  });

  it.concurrent("a header's control characters reach the terminal as escapes (ESC sequences cleared the screen and printed fake text)", async () => {
    const dir = tmp('bad-data');
    const train = writeDataFile(dir, 'data/broken-site/train.csv', 'hr,\u001b[2J\u001b]0;PWNED\u0007fake,lab\n1,2,x\n');
    const { message } = await expectBadInput(csvJob(dir, csvData({ train })), join(dir, 'out'));
    expect(message).toContain('\\x1b[2J\\x1b]0;PWNED\\x07fake');
    // biome-ignore lint/suspicious/noControlCharactersInRegex: what must not reach the terminal
    expect(message).not.toMatch(/[\u0000-\u0008\u000b-\u001f]/);
  });

  it.concurrent('a missing CSV file names the path', async () => {
    const dir = tmp('bad-data');
    const job = csvJob(dir, csvData({ train: 'data/broken-site/nowhere.csv' }));
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toContain('data/broken-site/nowhere.csv');
    expect(message).toContain('not found');
  });

  it.concurrent('a non-numeric value names the file, the line and the column', async () => {
    const dir = tmp('bad-data');
    const good = '60,86,18,37.1,126,97,8.5,1.5,1.05,255,0.75,15,no';
    // Line 1 is the header; line 4 has "high" for lactate.
    const train = writeDataFile(
      dir,
      'data/broken-site/train.csv',
      hospitalCsvText([good, good, '61,90,19,37.5,120,96,9.1,high,1.1,240,0.8,15,yes', good, good]),
    );
    const job = csvJob(dir, csvData({ train }));
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toContain(`${train} line 4`);
    expect(message).toContain('lactate');
    expect(message).toContain('"high"');
  });

  it.concurrent.each(['1e400', '-1e200'])(
    'a number too large to read (%s: beyond a double, or beyond the float32 the model computes in) names the file, the line and the column',
    async (huge) => {
      const dir = tmp('bad-data');
      const good = '60,86,18,37.1,126,97,8.5,1.5,1.05,255,0.75,15,no';
      const train = writeDataFile(
        dir,
        'data/broken-site/train.csv',
        hospitalCsvText([good, good, `61,90,19,37.5,120,96,9.1,${huge},1.1,240,0.8,15,yes`, good]),
      );
      const { message } = await expectBadInput(csvJob(dir, csvData({ train })), join(dir, 'out'));
      expect(message).toContain(`${train} line 4: column "lactate" is "${huge}", too large for a number (the model computes in float32, up to ±3.4e38)`);
    },
  );

  it.concurrent('over --nats embedded, CSV sites without spec.classes are refused before anything starts', async () => {
    const dir = tmp('bad-data');
    const job = csvJob(dir, csvData({ train: 'data/broken-site/nowhere.csv' }));
    const { message } = await expectBadInput(job, join(dir, 'out'), ['--nats', 'embedded']);
    expect(message).toContain('with --nats, spec.classes: required when sites run apart with CSV or image data');
  });

  it.concurrent('over --nats embedded, a site that stops on bad data stops the run (no training without it)', async () => {
    const dir = tmp('bad-data');
    const job = csvJob(dir, csvData({ train: 'data/broken-site/nowhere.csv' }), { classes: ['no', 'yes'] });
    const { message } = await expectBadInput(job, join(dir, 'out'), ['--nats', 'embedded']);
    expect(message).toContain('site "broken-site" stopped on bad input, so the run stopped:');
    expect(message).toContain('data/broken-site/nowhere.csv');
  });

  it.concurrent('a row with a missing field names the file and the line', async () => {
    const dir = tmp('bad-data');
    const good = '60,86,18,37.1,126,97,8.5,1.5,1.05,255,0.75,15,no';
    const train = writeDataFile(
      dir,
      'data/broken-site/train.csv',
      hospitalCsvText([good, good, good, good, '60,86,18,37.1,126,97,8.5,1.5,1.05,255,yes', good]),
    );
    const job = csvJob(dir, csvData({ train }));
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toContain(`${train} line 6`);
  });

  it.concurrent('a bad row in the test file names that file', async () => {
    const dir = tmp('bad-data');
    const site = writeHospitalCsvSite(dir, { name: 'broken-site', train: 30, test: 10, prevalence: 0.3, shift: 0 }, 5);
    const good = '60,86,18,37.1,126,97,8.5,1.5,1.05,255,0.75,15,no';
    writeDataFile(dir, site.test, hospitalCsvText([good, '60,86,18,37.1,126,97,8.5,1.5,1.05,255,0.75,fifteen,no', good]));
    const job = csvJob(dir, csvData(site));
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toContain(`${site.test} line 3`);
    expect(message).toContain('gcs');
  });

  it.concurrent('a label column that is not there names the column', async () => {
    const dir = tmp('bad-data');
    const site = writeHospitalCsvSite(dir, { name: 'broken-site', train: 30, test: 10, prevalence: 0.3, shift: 0 }, 5);
    const job = csvJob(dir, csvData(site, 'diagnosis'));
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toContain('"diagnosis"');
    expect(message).toContain(site.train);
  });

  it.concurrent('an empty site (a header and no rows) names the site and the file', async () => {
    const dir = tmp('bad-data');
    const train = writeDataFile(dir, 'data/broken-site/train.csv', hospitalCsvText([]));
    const job = csvJob(dir, csvData({ train }));
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toContain('broken-site');
    expect(message).toContain(train);
  });

  it.concurrent('an empty CSV file (not even a header) names the file', async () => {
    const dir = tmp('bad-data');
    const train = writeDataFile(dir, 'data/broken-site/train.csv', '');
    const job = csvJob(dir, csvData({ train }));
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toContain(train);
  });
});

describe('bad flags', () => {
  it.concurrent.each([
    [['--rounds', '0'], '--rounds'],
    [['--rounds', '2.5'], '--rounds'],
    [['--seed', 'abc'], '--seed'],
    [['--threads', '-1'], '--threads'],
    [['--threads', '0'], '--threads'],
    [['--backend', 'x'], '--backend'],
    [['--colour', 'blue'], '--colour'],
  ])('%j names %s', async (flags, flag) => {
    const dir = tmp('bad-flag');
    const job = writeJob(dir, hospitalSpec());
    const { message } = await expectBadInput(job, join(dir, 'out'), flags);
    expect(message).toContain(flag);
  });
});

describe('a missing job file', () => {
  it.concurrent('names the path', async () => {
    const dir = tmp('no-job');
    const job = join(dir, 'no-such-job.yaml');
    const { message } = await expectBadInput(job, join(dir, 'out'));
    expect(message).toContain(job);
    expect(message).toContain('no such file');
  });

  it.concurrent('a folder given as the job file says so', async () => {
    const dir = tmp('job-folder');
    const { message } = await expectBadInput(dir, join(dir, 'out'));
    expect(message).toBe(`consort: ${dir}: a folder, not a file [CONSORT_CLI_JOB_FILE]\n`);
  });
});

describe('a malformed failpoint in the environment of `consort site`', () => {
  it.concurrent('names the variable and the form it takes, before connecting anywhere', async () => {
    const dir = tmp('bad-failpoint');
    const job = writeJob(dir, hospitalSpec());
    const result = await runConsort(['site', '--job', job, '--site', 'st-mary', '--nats', 'nats://127.0.0.1:1', '--creds', join(dir, 'none.nk')], {
      env: { CONSORT_FAILPOINTS: 'stop:fit:3' },
    });
    const why = transcript(result);
    expect(result.code, why).toBe(2);
    expect(result.stderr, why).toContain('CONSORT_FAILPOINTS');
    expect(result.stderr, why).toContain('stop-after-ack:<fit|evaluate>:<round>');
    expect(result.stderr, why).toContain('CONSORT_CLI_USAGE');
  });
});

describe('a --state folder that `consort site` cannot write', () => {
  it.concurrent('is refused at once, naming the flag and the folder', async () => {
    const dir = tmp('bad-state');
    const job = writeJob(dir, hospitalSpec());
    const file = join(dir, 'a-file');
    writeFileSync(file, 'not a folder');
    const result = await runConsort([
      'site',
      '--job',
      job,
      '--site',
      'north',
      '--nats',
      'nats://127.0.0.1:1',
      '--creds',
      join(dir, 'none.nk'),
      '--state',
      join(file, 'state'),
    ]);
    const why = transcript(result);
    expect(result.code, why).toBe(1);
    expect(result.stderr, why).toMatch(
      new RegExp(`^consort: --state: ${join(file, 'state').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: .+ \\[CONSORT_CLI_OUTPUT\\]\n$`),
    );
  });
});

describe('an output folder that the results would destroy', () => {
  /** Runs `consort run JOB --out OUT` (in `cwd`) and checks it is refused at once, naming the folder. */
  async function expectRefused(job: string, out: string, cwd?: string): Promise<string> {
    const result = await runConsort(['run', job, '--quiet', '--out', out], cwd ? { cwd } : {});
    const why = transcript(result);
    expect(result.code, why).toBe(2);
    expect(result.stderr, why).toContain('CONSORT_CLI_USAGE');
    expect(result.stderr, why).toContain(`--out ${resolve(cwd ?? REPO_ROOT, out)}`);
    expect(result.stderr, why).not.toMatch(/^\s+at .+:\d+:\d+\)?$/m);
    return result.stderr;
  }

  it.concurrent('a folder that holds other files: refused, and the files are left as they were', async () => {
    const dir = tmp('out-taken');
    const job = writeJob(dir, hospitalSpec(undefined, { rounds: 1 }));
    const out = join(dir, 'thesis');
    mkdirSync(join(out, 'chapters'), { recursive: true });
    writeFileSync(join(out, 'thesis.txt'), 'years of work\n');
    const message = await expectRefused(job, out);
    expect(message).toContain('thesis.txt');
    expect(readFileSync(join(out, 'thesis.txt'), 'utf8')).toBe('years of work\n');
    expect(readdirSync(out).sort()).toEqual(['chapters', 'thesis.txt']);
  });

  it.concurrent('a file: refused, and the file is left as it was', async () => {
    const dir = tmp('out-file');
    const job = writeJob(dir, hospitalSpec(undefined, { rounds: 1 }));
    const out = join(dir, 'notes.txt');
    writeFileSync(out, 'notes\n');
    expect(await expectRefused(job, out)).toContain('is a file');
    expect(readFileSync(out, 'utf8')).toBe('notes\n');
  });

  it.concurrent('the current folder, or one that holds it: refused', async () => {
    const dir = tmp('out-here');
    const job = writeJob(dir, hospitalSpec(undefined, { rounds: 1 }));
    mkdirSync(join(dir, 'inner'));
    await expectRefused(job, '.', dir);
    await expectRefused(job, '..', join(dir, 'inner'));
    expect(readdirSync(dir).sort()).toEqual(['inner', 'job.yaml']);
  });

  it.concurrent('an empty folder, then the same folder holding that result: both runs write their results there; not once a file of the user is added', async () => {
    const dir = tmp('out-again');
    const job = writeJob(dir, hospitalSpec(undefined, { rounds: 1 }));
    const out = join(dir, 'results');
    mkdirSync(out);
    for (let run = 0; run < 2; run++) {
      const result = await runConsort(['run', job, '--quiet', '--out', out]);
      expect(result.code, transcript(result)).toBe(0);
      expect(readdirSync(out).sort()).toEqual(['MODEL_CARD.md', 'model.safetensors', 'report.html', 'report.json', 'tfjs']);
    }
    writeFileSync(join(out, 'my-notes.md'), 'notes\n');
    expect(await expectRefused(job, out)).toContain('it holds my-notes.md');
    expect(readFileSync(join(out, 'my-notes.md'), 'utf8')).toBe('notes\n');
  });
});

describe('bad flags of consort coordinator and consort site', () => {
  it.concurrent.each([
    [
      ['coordinator', 'JOB', '--nats', 'nats://127.0.0.1:1', '--creds', 'c.nk', '--keys', 'k.json', '--join-timeout', 'soon'],
      '--join-timeout: must be a number of seconds',
    ],
    [['coordinator', 'JOB', '--nats', 'http://127.0.0.1:1', '--creds', 'c.nk', '--keys', 'k.json'], '--nats: must be a nats://, tls://, ws:// or wss:// URL'],
    [['site', '--job', 'JOB', '--site', 'st-mary', '--nats', 'nat://127.0.0.1:1', '--creds', 'c.nk'], '--nats: must be a nats://, tls://, ws:// or wss:// URL'],
    [['coordinator', 'JOB', '--nats', 'nats://127.0.0.1:1', '--creds', 'c.nk', '--keys', 'k.json', '--rounds', '0'], '--rounds: must be at least 1'],
    // A negative number is below the minimum, not "no whole number".
    [['coordinator', 'JOB', '--nats', 'nats://127.0.0.1:1', '--creds', 'c.nk', '--keys', 'k.json', '--rounds', '-5'], '--rounds: must be at least 1'],
    [
      ['site', '--job', 'JOB', '--site', 'st-mary', '--nats', 'nats://127.0.0.1:99999', '--creds', 'c.nk'],
      '--nats: must name a host and, if any, a port from 1 to 65535',
    ],
    [['run', 'JOB', '--nats', 'nats://127.0.0.1:99999', '--quiet'], '--nats: "nats://127.0.0.1:99999" is not "embedded", and as a URL it must name a host'],
  ])('%j: exit 2, naming the flag as typed', async (args, says) => {
    const dir = tmp('bad-federation-flag');
    const job = writeJob(dir, hospitalSpec());
    const result = await runConsort(args.map((a) => (a === 'JOB' ? job : a)));
    const why = transcript(result);
    expect(result.code, why).toBe(2);
    expect(result.stderr, why).toContain('[CONSORT_CLI_USAGE]');
    expect(result.stderr, why).toContain(says);
  });
});
