// Text from elsewhere (a data file's header, a remote site's reason) as a terminal or a log may
// show it: control characters written as escapes, since ESC sequences in a CSV header cleared the
// screen and printed fake output, and long text cut.

/** `text` with its control characters (but newline and tab) as \xNN, cut past `max` characters. */
export function printable(text: string, max = 4000): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the control characters are the point
  const safe = text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return safe.length <= max ? safe : `${safe.slice(0, max)}… (${safe.length - max} more characters)`;
}
