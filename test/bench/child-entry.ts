// The child process of child.ts's inChild: imports test/bench/<module>, calls one exported
// function with a JSON argument and sends back its result (or error) over IPC.
//   node test/bench/child-entry.ts <module> <function> <JSON argument>
import { tuneGcForThroughput } from '../../core/gc-tuning.ts';

// The benchmarks measure what runs: V8 tuned as cli/consort.ts tunes it.
tuneGcForThroughput();
async function main(): Promise<void> {
  const [module, fn, json] = process.argv.slice(2);
  if (!module || !fn || json === undefined) throw new Error('usage: child-entry.ts <module> <function> <JSON argument>');
  const mod = (await import(new URL(`./${module}`, import.meta.url).href)) as Record<string, (arg: unknown) => Promise<unknown>>;
  const f = mod[fn];
  if (typeof f !== 'function') throw new Error(`${module} exports no function ${fn}`);
  let message: unknown;
  try {
    message = { ok: true, result: await f(JSON.parse(json)) };
  } catch (err) {
    message = { ok: false, error: err instanceof Error ? (err.stack ?? err.message) : String(err) };
  }
  // Native TF and pool threads may keep the event loop alive: leave once the answer is out.
  process.send!(message, () => process.exit(0));
}

if (!process.send) throw new Error('child-entry.ts runs as a child of test/bench/child.ts (it answers over IPC)');
await main();
