import { consortRoundsForProbe } from './test/bench/nats-overhead.ts';
for (const p of [10_000, 1_000_000]) {
  const r = await consortRoundsForProbe(8, p, 10);
  const plain = r.figures
    .filter((f) => f.round < 8)
    .map((f) => f.overheadMs)
    .sort((a, b) => a - b);
  console.log(p, 'median overhead', plain[plain.length >> 1]!.toFixed(0), JSON.stringify(r.figures[3]));
}
process.exit(0);
