import { run } from './test/bench/aggregation.ts';
await run({ quick: false });
