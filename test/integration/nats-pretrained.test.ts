// A user's pre-trained model (a TF.js model.json with its weights file) is where training starts:
// over a real nats-server each site writes the weights its file carries into its own bucket and
// names them in its hello; the coordinator starts round 1 from them, and refuses a site whose
// file carries other weights, or none. The in-process run starts from the same weights, to the bit.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FederatedJob } from '../../core/job/federated-job.ts';
import { initialParameters } from '../../core/model/layout.ts';
import { Welcome } from '../../core/protocol/messages.ts';
import { decodeSafetensors } from '../../core/tensor/safetensors.ts';
import { HOSPITAL_FEATURES } from '../../worker/data/synthetic/hospital.ts';
import { runConsort, transcript } from '../helpers/consort-cli.ts';
import { hospitalSpec, jobManifest, writeJob } from '../helpers/jobs.ts';
import { jobOnServer, realSite, signedHello, siteModel, startCoordinator, useCleanup } from '../helpers/nats-job.ts';
import { writePretrainedDense } from '../helpers/site-data.ts';
import { useTmpDirs } from '../helpers/tmp-dirs.ts';

const cleanup = useCleanup();
const decoder = new TextDecoder();

describe("a user's pre-trained Layers model", () => {
  const tmp = useTmpDirs();

  it('starts round 1 from its weights, over NATS and in process alike; a site whose file carries other weights or none is refused', async () => {
    const dir = tmp('pretrained');
    const weights = await writePretrainedDense(dir, (i) => 0.05 + ((i * 37) % 23) / 100);
    // One round at a vanishing learning rate: the final model is the start, to within a step.
    const spec = hospitalSpec(
      [
        { name: 'real', samples: 80 },
        { name: 'by-hand', samples: 80 },
      ],
      {
        model: { type: 'layers', path: join(dir, 'model.json') },
        classes: ['no', 'yes'],
        rounds: 1,
        training: { epochs: 1, batchSize: 16, optimizer: 'sgd', learningRate: 1e-9 },
        sampling: { minSites: 1 },
      },
    );
    const job = FederatedJob.parse(jobManifest('pretrained', spec));
    const on = await jobOnServer(job, cleanup);
    const { key, subj, auth, as } = on;
    let joined!: () => void;
    const realJoined = new Promise<void>((resolve) => {
      joined = resolve;
    });
    const { logs, coordinator } = await startCoordinator(job, on, {
      log: (l) => {
        if (l.includes('site "real" joined')) joined();
      },
      // Site by-hand is refused: the round starts with site real alone once this has passed.
      joinTimeoutMs: 8_000,
    });
    const site = realSite(job, on);
    await realJoined;

    // Site by-hand says hello as a site whose model file carries no weights, then other weights.
    const byHand = await as('by-hand', auth.sites['by-hand']!.seed);
    const model = await siteModel(job, 1);
    const hello = async (initial?: { sha256: string; size: number }) =>
      Welcome.parse(
        JSON.parse(
          decoder.decode(
            (
              await byHand.request(
                subj.hello('by-hand'),
                signedHello(key, 'by-hand', auth.sites['by-hand']!.seed, model, { features: HOSPITAL_FEATURES, ...(initial ? { initial } : {}) }),
                { timeout: 5000 },
              )
            ).data,
          ),
        ),
      );
    const seeded = await hello();
    expect(seeded).toMatchObject({ accepted: false, code: 'CONSORT_R_WRONG_JOB' });
    expect(seeded.reason).toMatch(
      /^the site's model file carries no weights \(a seeded start\), the other sites' weights of SHA-256 [0-9a-f]{12}…; every site must have the same model file$/,
    );
    const other = await hello({ sha256: 'ab'.repeat(32), size: 1000 });
    expect(other).toMatchObject({ accepted: false, code: 'CONSORT_R_WRONG_JOB' });
    expect(other.reason).toMatch(/^the site's model file carries weights of SHA-256 abababababab…, the other sites' weights of SHA-256 /);

    const result = await coordinator;
    await site;
    expect(result.roundsCompleted).toBe(1);
    expect(result.rejections.CONSORT_R_WRONG_JOB).toBe(2);
    expect(logs.some((l) => l.startsWith(`round 1 starts from the weights of the sites' model file (site "real"'s copy`))).toBe(true);
    const seededStart = initialParameters(model.layout, job.spec.seed);
    let fromFile = 0;
    let fromSeed = 0;
    for (let i = 0; i < weights.length; i++) {
      fromFile = Math.max(fromFile, Math.abs(result.global[i]! - weights[i]!));
      fromSeed = Math.max(fromSeed, Math.abs(result.global[i]! - seededStart[i]!));
    }
    expect(result.global).toHaveLength(weights.length);
    expect(fromFile).toBeLessThan(1e-6);
    expect(fromSeed).toBeGreaterThan(0.1);

    // The same job in one process (one site): the same start, the same bytes as the NATS run's.
    const out = join(dir, 'out');
    const onlyReal = writeJob(dir, { ...spec, sites: [(spec.sites as unknown[])[0]] }, { name: 'pretrained' });
    const r = await runConsort(['run', onlyReal, '--quiet', '--out', out]);
    expect(r.code, transcript(r)).toBe(0);
    expect(result.initialWeights).toBe('model file');
    // Trained on the inputs as they are: they are not scaled for it.
    expect(result.inputScaler).toBeUndefined();
    expect(logs).toContain("inputs not scaled: the sites' model file carries weights, trained on the inputs as they are");
    expect(JSON.parse(readFileSync(join(out, 'report.json'), 'utf8')).model.inputScaler).toBeUndefined();
    expect(result.sites.real?.initialSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.parse(readFileSync(join(out, 'report.json'), 'utf8')).model.initialWeights).toBe('model file');
    expect(readFileSync(join(out, 'MODEL_CARD.md'), 'utf8')).toContain('- **Starting weights:** those of the model file (a pre-trained model)');
    const local = decodeSafetensors(new Uint8Array(readFileSync(join(out, 'model.safetensors')))).values;
    expect(
      Buffer.from(local.buffer, local.byteOffset, local.byteLength).equals(
        Buffer.from(result.global.buffer, result.global.byteOffset, result.global.byteLength),
      ),
    ).toBe(true);
  });
});
