import { describe, expect, it } from 'vitest';
import { printable } from '../../core/printable.ts';

describe('printable: text from elsewhere as a terminal may show it', () => {
  it('writes control characters as escapes (but newline and tab) and cuts long text', () => {
    expect(printable('hr,\u001b[2J\u001b]0;PWNED\u0007x\r')).toBe('hr,\\x1b[2J\\x1b]0;PWNED\\x07x\\x0d');
    expect(printable('a\tb\nc')).toBe('a\tb\nc');
    expect(printable('x'.repeat(10), 4)).toBe('xxxx… (6 more characters)');
  });
});
