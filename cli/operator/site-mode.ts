// Site mode of `consort operator`: written next.
import type { OperatorFlags } from './command.ts';

export async function runSiteOperator(_f: OperatorFlags, _log: (line: string) => void): Promise<number> {
  throw new Error('site mode is not implemented yet');
}
