import { NatsServer } from '../test/helpers/nats-server.ts';
import { natsAuthFor } from '../cli/nats/config.ts';
import { connectAs } from '../cli/nats/connect.ts';
import { COORDINATOR_USER } from '../cli/nats/permissions.ts';
import { Objm } from '@nats-io/obj';
import { buckets, jobKey } from '../core/protocol/subjects.ts';
const job = { metadata: { name: 'perm', namespace: 'lab' }, spec: { sites: [{ name: 'site-a' }] } } as any;
const auth = natsAuthFor(job);
const s = await NatsServer.start({ config: auth.config });
const b = buckets(jobKey(job.metadata));
const co = await connectAs(s.url, auth.coordinator.seed, COORDINATOR_USER);
(async () => { for await (const st of co.status()) if (st.type === 'error') console.log('STATUS', (st as any).error.message); })();
const os = await new Objm(co).create(b.models, { allowBatched: true } as any);
try { await os.putBlob({ name: 'm' }, new Uint8Array(500_000)); console.log('batched put ok'); } catch (e) { console.log('batched put failed:', (e as Error).message); }
await co.close(); await s.stop();
