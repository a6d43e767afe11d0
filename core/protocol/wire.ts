// JSON on the wire, both ways. Decoding never throws: a garbled message is the sender's
// problem, refused by whoever reads it, never a crash of the reader.
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeJson(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

/** The JSON value in data, or undefined when it is not UTF-8 JSON. */
export function decodeJson(data: Uint8Array): unknown {
  try {
    return JSON.parse(decoder.decode(data));
  } catch {
    return undefined;
  }
}
