// Sites for the NATS benchmarks (nats-goodput, nats-overhead, coordinator-rss), run in a process
// of their own (startSites), so that the coordinator's process holds only what the coordinator
// holds.
//
// - 'consort': each site speaks protocol v1 the way worker/nats/site-runner.ts does (signed
//   hello and heartbeat, task acknowledged, global model read from the models bucket with
//   readModelObject (direct get, its digest checked against the task's SHA-256), update encoded
//   with the job's codec, put into the site's own updates bucket with putObject, signed envelope
//   sent until acknowledged),
//   with no training: the "delta" is ready at once (zeros, the model itself, or bytes encoded
//   once for every site). What runSite adds on top, a SiteWorker and its TF.js model, is
//   exactly what these benchmarks leave out.
// - 'raw': the baseline of nats-goodput: plain nats.js publish/subscribe of the same bytes in
//   chunks on the same server, with the window flow control any sender of 100 MB needs (the
//   server cuts off a slow consumer that falls 64 MB behind).
// CONSORT_BENCH_DEBUG=1 prints each site's read times and the raw baseline's flow control.
import { type ChildProcess, fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, type Msg, type NatsConnection } from '@nats-io/transport-node';
import { connectAs } from '../../cli/nats/connect.ts';
import { tuneGcForModel } from '../../core/gc-tuning.ts';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { type ParameterLayout, layoutSize } from '../../core/model/layout.ts';
import { encodeUpdate, encodeUpdateParts } from '../../core/protocol/codecs.ts';
import { sha256Hex } from '../../core/protocol/digest.ts';
import { putObject } from '../../core/protocol/object-put.ts';
import { Ack, evaluationEnvelope, type Hello, type ObjectRef, RoundNotice, Task, updateEnvelope } from '../../core/protocol/messages.ts';
import { retrying } from '../../core/protocol/retry.ts';
import { newNonce, signEnvelope } from '../../core/protocol/signing.ts';
import { buckets, jobKey, OBJECT_PUT, objectNames, PROTOCOL_VERSION, subjects } from '../../core/protocol/subjects.ts';
import { decodeSafetensors } from '../../core/tensor/safetensors.ts';
import { objectWire } from '../../core/protocol/object-wire.ts';
import { readModelObject } from '../../worker/nats/site-runner.ts';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const json = (v: unknown) => encoder.encode(JSON.stringify(v));
/** Epoch milliseconds with sub-millisecond resolution, comparable across processes. */
export const now = () => performance.timeOrigin + performance.now();
const debug = (line: string) => {
  if (process.env.CONSORT_BENCH_DEBUG) process.stderr.write(`[${process.pid} ${new Date().toISOString()}] ${line}\n`);
};

// ---- jobs ---------------------------------------------------------------------------------

/** A job of `count` sites (site-00, site-01...) for the NATS benchmarks; its data and model are never built (the sites do not train). */
export function benchJob(name: string, count: number, spec: Record<string, unknown> = {}): FederatedJob {
  return FederatedJob.parse({
    apiVersion: 'consort.dev/v1alpha1',
    kind: 'FederatedJob',
    metadata: { name },
    spec: {
      model: { type: 'logistic' },
      sites: siteNames(count).map((s) => ({ name: s, data: { type: 'synthetic', generator: 'hospital', samples: 100 } })),
      rounds: 1,
      training: { epochs: 1, batchSize: 32, optimizer: 'sgd', learningRate: 0.1 },
      strategy: { name: 'fedavg' },
      seed: 1,
      ...spec,
    },
  });
}

/** User + system CPU seconds of this process so far. */
export function cpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** User + system CPU seconds of another process (Linux /proc), e.g. the nats-server; 0 where unknown. */
export function cpuSecondsOf(pid: number | undefined): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

export function siteNames(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `site-${String(i).padStart(2, '0')}`);
}

/** A flat float32 model of `n` parameters as `tensors` tensors of (nearly) equal size. */
export function benchLayout(n: number): ParameterLayout {
  // The job's own model (benchJob: logistic regression, 2 classes) for n / 2 - 1 inputs: the
  // coordinator takes only a layout the job's spec builds (its parameter count) for the sampleShape
  // a hello names (benchSampleShape).
  if (!Number.isInteger(n / 2) || n < 4) throw new RangeError(`benchLayout: ${n} parameters is no logistic model of 2 classes`);
  const inputs = n / 2 - 1;
  return [
    { name: 'dense_Dense1/kernel', shape: [inputs, 2] },
    { name: 'dense_Dense1/bias', shape: [2] },
  ];
}

/** The input shape whose logistic model of 2 classes is `layout` (benchLayout): what the sites' hellos name. */
export function benchSampleShape(layout: ParameterLayout): number[] {
  return [layout[0]!.shape[0]!];
}

/** Values in [-0.05, 0.05) (xorshift32): a model whose bytes do not compress. */
export function benchValues(n: number, seed = 1): Float32Array {
  const a = new Float32Array(n);
  let s = seed | 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    a[i] = ((s >>> 0) / 2 ** 32 - 0.5) * 0.1;
  }
  return a;
}

/** The job's nats-server configuration plus an account RAW (user raw, password raw) for the raw baseline, on the same server. */
export function withRawAccount(config: string): string {
  const end = config.lastIndexOf('}');
  if (end < 0) throw new Error('withRawAccount: no accounts block');
  return `${config.slice(0, end)}  RAW: { users: [ { user: "raw", password: "raw" } ] }\n}\n`;
}

export async function connectRaw(url: string, name: string): Promise<NatsConnection> {
  const nc = await connect({ servers: url, user: 'raw', pass: 'raw', name });
  // A receiver that falls too far behind loses messages: say so rather than wait for ever.
  void (async () => {
    for await (const s of nc.status()) if (s.type === 'slowConsumer' || s.type === 'error') process.stderr.write(`raw ${name}: ${JSON.stringify(s)}\n`);
  })();
  return nc;
}

// ---- the sites process --------------------------------------------------------------------

export interface SitesArgs {
  url: string;
  mode: 'consort' | 'raw';
  /** consort: the job manifest (as benchJob made it) and each site's NKey seed. */
  manifest?: unknown;
  seeds?: Record<string, string>;
  sites: string[];
  layout?: ParameterLayout;
  /** consort: read the global model of each task (as a site must) or skip it (a pure load generator, for the RSS benchmark). */
  fetchModel?: boolean;
  /** consort: what each site sends back: zeros, the model it read, or one update encoded once (random values) for every site. */
  update?: 'zeros' | 'model' | 'shared';
  /** raw: bytes per message, model and update size, repetitions, window. */
  raw?: RawPlan;
}

export interface TaskTiming {
  site: string;
  type: 'fit' | 'evaluate';
  round: number;
  /** Epoch ms: task received, model read and decoded, delta ready, update object written, envelope acknowledged. */
  received: number;
  modelRead: number;
  deltaReady: number;
  written: number;
  acked: number;
  /** The site's "training": producing the delta (zeros: allocating them). */
  workMs: number;
  accepted: boolean;
}

export interface SitesResult {
  timings: TaskTiming[];
  /** Reads and writes that failed and were tried again: "site what: error". */
  retries: string[];
  raw?: RawSiteTiming[];
  maxRssBytes: number;
  /** User + system CPU time of the sites process, from its start. */
  cpuSeconds: number;
}

/** Runs the sites until the job is done (consort) or every raw repetition is over; called in the sites process. */
export async function runSites(args: SitesArgs): Promise<SitesResult> {
  // The coordinator's process went away: so do we.
  process.on('disconnect', () => process.exit(3));
  if (args.mode === 'raw') {
    // The baseline runs as Consort's sites do for a model of this size (core/gc-tuning.ts).
    tuneGcForModel(args.raw!.modelBytes);
    const raw = await Promise.all(args.sites.map((s) => rawSite(args.url, s, args.raw!)));
    return { timings: [], retries: [], raw: raw.flat(), maxRssBytes: process.resourceUsage().maxRSS * 1024, cpuSeconds: cpuSeconds() };
  }
  const job = FederatedJob.parse(args.manifest);
  const layout = args.layout!;
  // As runSite does once its model is prepared.
  tuneGcForModel(4 * layoutSize(layout));
  let shared: { bytes: Uint8Array; sha256: string } | undefined;
  if (args.update === 'shared') {
    const bytes = encodeUpdate(benchValues(layoutSize(layout), 7), layout, job.spec.compression).bytes;
    shared = { bytes, sha256: sha256Hex(bytes) };
  }
  const timings: TaskTiming[] = [];
  const retries: string[] = [];
  await Promise.all(
    args.sites.map((site) =>
      consortSite({
        url: args.url,
        job,
        site,
        seed: args.seeds![site]!,
        layout,
        fetchModel: args.fetchModel ?? true,
        update: args.update ?? 'zeros',
        shared,
        timings,
        retries,
      }),
    ),
  );
  return { timings, retries, maxRssBytes: process.resourceUsage().maxRSS * 1024, cpuSeconds: cpuSeconds() };
}

export interface SitesProcess {
  result: Promise<SitesResult>;
  /** The process id (for its CPU time, cpuSecondsOf). */
  pid: number | undefined;
  /** Kills the process (SIGKILL) if it is still running. */
  kill(): void;
}

/** Forks the sites process (child-entry.ts calling runSites); its result comes back over IPC. */
export function startSites(args: SitesArgs, opts: { heapMb?: number } = {}): SitesProcess {
  const child: ChildProcess = fork(new URL('./child-entry.ts', import.meta.url), ['nats-sites.ts', 'runSites', JSON.stringify(args)], {
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    execArgv: opts.heapMb ? [`--max-old-space-size=${opts.heapMb}`] : [],
  });
  const result = new Promise<SitesResult>((resolve, reject) => {
    let settled = false;
    child.on('message', (m: { ok: true; result: SitesResult } | { ok: false; error: string }) => {
      settled = true;
      if (m.ok) resolve(m.result);
      else reject(new Error(`sites process: ${m.error}`));
    });
    child.on('exit', (code, signal) => {
      if (!settled) reject(new Error(`sites process exited with ${signal ?? `code ${code}`} before answering`));
      settled = true;
    });
  });
  result.catch(() => {});
  return {
    result,
    pid: child.pid,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

// ---- one consort site ---------------------------------------------------------------------

interface ConsortSiteOptions {
  url: string;
  job: FederatedJob;
  site: string;
  seed: string;
  layout: ParameterLayout;
  fetchModel: boolean;
  update: 'zeros' | 'model' | 'shared';
  shared: { bytes: Uint8Array; sha256: string } | undefined;
  timings: TaskTiming[];
  retries: string[];
}

async function consortSite(o: ConsortSiteOptions): Promise<void> {
  const { job, site, seed, layout, retries } = o;
  const key = jobKey(job.metadata);
  const subj = subjects(key);
  const bucket = buckets(key);
  const nc = await connectAs(o.url, seed, site);
  const modelsWire = objectWire(nc, bucket.models);
  const updatesWire = objectWire(nc, bucket.updates(site));
  let finish: () => void = () => {};
  const finished = new Promise<void>((r) => {
    finish = r;
  });

  const hello = () =>
    json(
      signEnvelope(
        {
          type: 'hello',
          protocol: PROTOCOL_VERSION,
          job: key,
          site,
          nonce: newNonce(),
          sentAt: Date.now(),
          sampleShape: benchSampleShape(layout),
          labels: ['0', '1'],
          layout,
          codecs: ['none', 'fp16', 'int8', 'topk'],
        } satisfies Omit<Hello, 'signature'>,
        seed,
      ),
    );
  const heartbeat = () =>
    nc
      .request(subj.hello(site), hello(), { timeout: 2000 })
      .then((m) => {
        const w = JSON.parse(decoder.decode(m.data)) as { done?: boolean };
        if (w.done) finish();
      })
      .catch(() => {});

  // As site-runner: reads and writes are tried again until the task's deadline.
  const patiently = <T>(what: string, deadline: number, attempt: () => Promise<T>): Promise<T> =>
    retrying(
      () =>
        attempt().catch((err: unknown) => {
          retries.push(`${site} ${what}: ${(err as Error).message}`);
          throw err;
        }),
      { until: deadline },
    );
  // As site-runner: one model buffer, used again every task.
  let buffer: Uint8Array | undefined;
  const readModel = async (ref: ObjectRef, deadline: number): Promise<Float32Array> => {
    if (!buffer || buffer.length < ref.size) buffer = new Uint8Array(ref.size);
    const into = buffer;
    const bytes = await patiently(`read ${ref.name}`, deadline, async () => {
      const t0 = now();
      const b = await readModelObject(modelsWire, ref, into);
      debug(`${site}: read ${(now() - t0).toFixed(0)} ms`);
      return b;
    });
    return decodeSafetensors(bytes).values;
  };

  const deliver = async (subject: string, body: Uint8Array, deadline: number): Promise<boolean> => {
    while (Date.now() < deadline + 60_000) {
      try {
        const reply = await nc.request(subject, body, { timeout: 5000 });
        const ack = Ack.safeParse(JSON.parse(decoder.decode(reply.data)));
        return ack.success && ack.data.accepted;
      } catch {
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    return false;
  };

  const handle = async (task: Task, received: number): Promise<void> => {
    const t: TaskTiming = { site, type: task.type, round: task.round, received, modelRead: 0, deltaReady: 0, written: 0, acked: 0, workMs: 0, accepted: false };
    const global = o.fetchModel ? await readModel(task.model, task.deadline) : undefined;
    t.modelRead = now();
    if (task.type === 'evaluate') {
      const env = evaluationEnvelope(key, site, task, { samples: 10, loss: 0.5, accuracy: 0.5 });
      t.deltaReady = t.written = t.modelRead;
      t.accepted = await deliver(subj.evaluation(site), json(signEnvelope(env, seed)), task.deadline);
      t.acked = now();
      o.timings.push(t);
      return;
    }
    // The "training": nothing but producing the delta.
    let parts: Uint8Array[];
    let size: number;
    let sha256: string;
    const w0 = now();
    if (o.update === 'shared') {
      t.workMs = now() - w0;
      t.deltaReady = now();
      parts = [o.shared!.bytes];
      size = o.shared!.bytes.length;
      sha256 = o.shared!.sha256;
    } else {
      const delta = o.update === 'model' && global ? global : new Float32Array(layoutSize(layout));
      t.workMs = now() - w0;
      t.deltaReady = now();
      ({ parts, size } = encodeUpdateParts(delta, layout, job.spec.compression));
      sha256 = '';
    }
    const nonce = newNonce();
    const name = objectNames.update(task.round, nonce);
    // As site-runner: written from the delta's own memory, hashed as it goes: that is the envelope's SHA-256.
    const stored = await patiently(`write ${name}`, task.deadline, () => putObject(updatesWire, bucket.updates(site), name, parts, OBJECT_PUT));
    sha256 ||= stored.sha256;
    t.written = now();
    const env = updateEnvelope(key, site, task, nonce, {
      samples: 100,
      trainLoss: 0.5,
      steps: 1,
      codec: job.spec.compression.codec,
      object: { bucket: bucket.updates(site), name, sha256, size },
    });
    t.accepted = await deliver(subj.update(site), json(signEnvelope(env, seed)), task.deadline);
    t.acked = now();
    o.timings.push(t);
  };

  let queue: Promise<void> = Promise.resolve();
  nc.subscribe(subj.task(site), {
    callback: (err, msg) => {
      if (err) return;
      const received = now();
      const task = Task.safeParse(JSON.parse(decoder.decode(msg.data)));
      msg.respond(json({ type: 'ack', accepted: task.success }));
      if (!task.success) return;
      queue = queue
        .then(() => handle(task.data, received))
        .catch((e: unknown) => {
          process.stderr.write(`bench site ${site}: ${(e as Error).message}\n`);
        });
    },
  });
  nc.subscribe(subj.round, {
    callback: (err, msg) => {
      if (err) return;
      const n = RoundNotice.safeParse(JSON.parse(decoder.decode(msg.data)));
      if (n.success && n.data.phase === 'done') finish();
    },
  });
  await nc.flush();
  await heartbeat();
  const beat = setInterval(() => void heartbeat(), 1000);
  try {
    await finished;
    await queue;
  } finally {
    clearInterval(beat);
    await nc.close();
  }
}

// ---- the raw baseline ---------------------------------------------------------------------

export interface RawPlan {
  modelBytes: number;
  updateBytes: number;
  chunkBytes: number;
  /** Chunks a sender may have unacknowledged. */
  window: number;
  /** The receiver acknowledges every `ackEvery` chunks (and the last). */
  ackEvery: number;
  reps: number;
}

export interface RawSiteTiming {
  site: string;
  rep: number;
  /** Epoch ms: the whole model received; the whole update sent and acknowledged. */
  modelReceived: number;
  updateSent: number;
}

/** Sends `data` on `subject` in chunks, at most `window` chunks ahead of what `acked()` says the slowest receiver has. */
async function sendWindowed(
  nc: NatsConnection,
  subject: string,
  data: Uint8Array,
  plan: RawPlan,
  acked: () => number,
  progress: { wait: () => Promise<void> },
): Promise<void> {
  const chunks = Math.ceil(data.length / plan.chunkBytes);
  for (let i = 0; i < chunks; i++) {
    let waited = 0;
    const watch = process.env.CONSORT_BENCH_DEBUG
      ? setInterval(() => debug(`${subject}: at chunk ${i}, acked ${acked()}, waited ${++waited}`), 3000)
      : undefined;
    while (i - acked() >= plan.window) await progress.wait();
    clearInterval(watch);
    nc.publish(subject, data.subarray(i * plan.chunkBytes, Math.min(data.length, (i + 1) * plan.chunkBytes)));
  }
  while (acked() < chunks) {
    debug(`${subject}: waiting for the last acknowledgements (${acked()} of ${chunks})`);
    await progress.wait();
  }
}

/** A promise that is resolved (and renewed) whenever an acknowledgement arrives. */
function signal(): { wait: () => Promise<void>; fire: () => void } {
  let resolve: () => void = () => {};
  let p = new Promise<void>((r) => {
    resolve = r;
  });
  return {
    wait: () => p,
    fire: () => {
      resolve();
      p = new Promise<void>((r) => {
        resolve = r;
      });
    },
  };
}

/** Receives chunks of one stream into a buffer and acknowledges them; resolves when all are in. */
function receiver(nc: NatsConnection, size: number, plan: RawPlan, ackSubject: string, rep: number) {
  const chunks = Math.ceil(size / plan.chunkBytes);
  const buffer = new Uint8Array(size);
  let got = 0;
  let last = Date.now();
  let done: () => void = () => {};
  let fail: (err: Error) => void = () => {};
  const complete = new Promise<void>((resolve, reject) => {
    done = resolve;
    fail = reject;
  });
  // Core NATS drops what a reader cannot take in time: a stream that stops short never completes.
  const watchdog = setInterval(() => {
    if (Date.now() - last > 30_000) fail(new Error(`${ackSubject}: ${got} of ${chunks} chunks, then nothing for 30 s (messages dropped?)`));
  }, 1000);
  complete.then(
    () => clearInterval(watchdog),
    () => clearInterval(watchdog),
  );
  return {
    complete,
    buffer,
    got: () => got,
    take(msg: Msg): void {
      last = Date.now();
      buffer.set(msg.data, got * plan.chunkBytes);
      got++;
      if (got % plan.ackEvery === 0 || got === chunks) nc.publish(ackSubject, encoder.encode(`${rep} ${got}`));
      if (got === chunks) done();
    },
  };
}

async function rawSite(url: string, site: string, plan: RawPlan): Promise<RawSiteTiming[]> {
  const nc = await connectRaw(url, `raw ${site}`);
  const update = benchValues(plan.updateBytes / 4, 11);
  const updateBytes = new Uint8Array(update.buffer, 0, plan.updateBytes);
  const out: RawSiteTiming[] = [];
  let acked = 0;
  const progress = signal();
  nc.subscribe(`raw.ack.up.${site}`, {
    callback: (_e, m) => {
      acked = Number(decoder.decode(m.data).split(' ')[1]);
      progress.fire();
    },
  });
  const models = new Map<number, ReturnType<typeof receiver>>();
  const modelFor = (rep: number) => {
    let r = models.get(rep);
    if (!r) models.set(rep, (r = receiver(nc, plan.modelBytes, plan, `raw.ack.model.${site}`, rep)));
    return r;
  };
  nc.subscribe('raw.data.*.model', { callback: (_e, m) => modelFor(Number(m.subject.split('.')[2])).take(m) });
  // Ready: the coordinator counts these before it starts.
  await nc.flush();
  nc.publish('raw.ready', encoder.encode(site));
  debug(`raw ${site} ready`);
  for (let rep = 0; rep < plan.reps; rep++) {
    await modelFor(rep).complete;
    const modelReceived = now();
    debug(`raw ${site} has model ${rep}`);
    models.delete(rep);
    acked = 0;
    await sendWindowed(nc, `raw.data.${rep}.up.${site}`, updateBytes, plan, () => acked, progress);
    out.push({ site, rep, modelReceived, updateSent: now() });
  }
  await nc.close();
  return out;
}

/** The coordinator's side of the raw baseline: waits for the sites, then per repetition broadcasts the model and collects every site's update. */
export async function rawCoordinator(url: string, sites: string[], plan: RawPlan): Promise<Array<{ rep: number; start: number; end: number }>> {
  const nc = await connectRaw(url, 'raw coordinator');
  try {
    const ready = new Set<string>();
    const readyAll = new Promise<void>((resolve) => {
      nc.subscribe('raw.ready', {
        callback: (_e, m) => {
          ready.add(decoder.decode(m.data));
          if (ready.size === sites.length) resolve();
        },
      });
    });
    const acks = new Map<string, number>();
    const progress = signal();
    nc.subscribe('raw.ack.model.*', {
      callback: (_e, m) => {
        const [rep, count] = decoder.decode(m.data).split(' ').map(Number);
        acks.set(`${rep}/${m.subject.split('.').pop()}`, count!);
        progress.fire();
      },
    });
    const updates = new Map<string, ReturnType<typeof receiver>>();
    const updateFor = (rep: number, site: string) => {
      let r = updates.get(`${rep}/${site}`);
      if (!r) updates.set(`${rep}/${site}`, (r = receiver(nc, plan.updateBytes, plan, `raw.ack.up.${site}`, rep)));
      return r;
    };
    nc.subscribe('raw.data.*.up.*', {
      callback: (_e, m) => {
        const parts = m.subject.split('.');
        updateFor(Number(parts[2]), parts[4]!).take(m);
      },
    });
    await nc.flush();
    debug('raw coordinator waiting for sites');
    await readyAll;
    debug('raw coordinator: sites ready');
    const model = new Uint8Array(benchValues(plan.modelBytes / 4, 5).buffer, 0, plan.modelBytes);
    const reps: Array<{ rep: number; start: number; end: number }> = [];
    for (let rep = 0; rep < plan.reps; rep++) {
      const start = now();
      const collected = Promise.all(sites.map((s) => updateFor(rep, s).complete));
      const slowest = () => Math.min(...sites.map((s) => acks.get(`${rep}/${s}`) ?? 0));
      await sendWindowed(nc, `raw.data.${rep}.model`, model, plan, slowest, progress);
      debug(`raw coordinator: model ${rep} sent`);
      const watch = process.env.CONSORT_BENCH_DEBUG
        ? setInterval(() => debug(`collected: ${sites.map((s) => updateFor(rep, s).got()).join(' ')}`), 2000)
        : undefined;
      await collected;
      clearInterval(watch);
      debug(`raw coordinator: rep ${rep} collected`);
      reps.push({ rep, start, end: now() });
      for (const s of sites) updates.delete(`${rep}/${s}`);
    }
    return reps;
  } finally {
    await nc.close();
  }
}
