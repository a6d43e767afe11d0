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

/**
 * The pieces as one stream of arrays of at most `pieceBytes` (views, no copy): a writer that
 * gathers chunks of that size (the NATS Object Store's put) then copies one chunk at a time, not
 * the whole object.
 */
export function streamOfParts(parts: readonly Uint8Array[], pieceBytes: number): ReadableStream<Uint8Array> {
  let part = 0;
  let at = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      while (part < parts.length && at >= parts[part]!.length) {
        part++;
        at = 0;
      }
      if (part >= parts.length) {
        controller.close();
        return;
      }
      const p = parts[part]!;
      const end = Math.min(p.length, at + pieceBytes);
      controller.enqueue(p.subarray(at, end));
      at = end;
    },
  });
}
