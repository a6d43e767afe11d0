import { NatsServer } from '../test/helpers/nats-server.ts';
import { natsAuthFor } from '../cli/nats/config.ts';
import { connectAs } from '../cli/nats/connect.ts';
import { COORDINATOR_USER } from '../cli/nats/permissions.ts';
import { Objm } from '@nats-io/obj';
import { jetstreamManager } from '@nats-io/jetstream';
import { buckets, jobKey, objectNames, subjects } from '../core/protocol/subjects.ts';
const job = { metadata: { name: 'perm', namespace: 'lab' }, spec: { sites: [{ name: 'site-a' }, { name: 'site-b' }] } } as any;
const auth = natsAuthFor(job);
const s = await NatsServer.start({ config: auth.config });
const key = jobKey(job.metadata); const b = buckets(key); const subj = subjects(key);
const co = await connectAs(s.url, auth.coordinator.seed, COORDINATOR_USER);
const a = await connectAs(s.url, auth.sites['site-a'].seed, 'site-a');
const models = await new Objm(co).create(b.models);
const info = await models.putBlob({ name: objectNames.global(1) }, new TextEncoder().encode('MODEL BYTES'));
co.subscribe(subj.updateAll, { callback: (_e, m) => console.log('coordinator got on', m.subject, JSON.stringify(m.string())) });
co.subscribe(subj.update('site-b'), { callback: (_e, m) => console.log('coordinator exact got', m.subject, JSON.stringify(m.string())) });
a.subscribe('_INBOX_site-a.evil2', { callback: (_e, m) => console.log('a got', m.subject, JSON.stringify(m.string())) });
await co.flush(); await a.flush();
const jsm = await jetstreamManager(a);
const filter = `$O.${b.models}.C.${info.nuid}`;
try {
  const ci = await jsm.consumers.add(`OBJ_${b.models}`, { name: 'evil', deliver_subject: subj.update('site-b'), filter_subject: filter, ack_policy: 'none' as any });
  console.log('consumer created', ci.name);
  await jsm.consumers.add(`OBJ_${b.models}`, { name: 'evil2', deliver_subject: '_INBOX_site-a.evil2', filter_subject: filter, ack_policy: 'none' as any });
} catch (e) { console.log('create failed', (e as Error).message); }
await new Promise((r) => setTimeout(r, 1500)); console.log(JSON.stringify((await (await jetstreamManager(co)).consumers.info(`OBJ_${b.models}`, "evil")).delivered), (await (await jetstreamManager(co)).consumers.info(`OBJ_${b.models}`, "evil")).push_bound);
await a.close(); await co.close(); await s.stop();
