import { NatsServer } from '../test/helpers/nats-server.ts';
const s = await NatsServer.start();
console.log('up', s.url);
process.exit(3);
