/**
 * Reading token usage out of responses without buffering them.
 *
 * Streams: an incremental SSE splitter watches each event for vLLM's usage chunk
 * (`choices: []` + `usage`). When the client did not ask for usage (the router asked on its
 * behalf), that one event is removed; every other byte passes through untouched, and the
 * upstream chunk itself is forwarded whenever nothing in it changes.
 *
 * JSON bodies: vLLM serialises `usage` last, so keeping the tail of the body is enough.
 */

export type Usage = { promptTokens: number | null; completionTokens: number | null };

const encoder = new TextEncoder();
const eventBoundary = /\r?\n\r?\n/g;
const maxPendingChars = 4 * 1024 * 1024;

function usageFrom(value: unknown): Usage | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const usage = (value as { usage?: unknown }).usage;
  if (typeof usage !== "object" || usage === null) return undefined;
  const { prompt_tokens, completion_tokens } = usage as Record<string, unknown>;
  return {
    promptTokens: typeof prompt_tokens === "number" ? prompt_tokens : null,
    completionTokens: typeof completion_tokens === "number" ? completion_tokens : null,
  };
}

/** The JSON payload of an SSE event's `data:` lines, or undefined. */
function eventData(event: string): unknown {
  let data = "";
  for (const line of event.split(/\r?\n/)) {
    if (line.startsWith("data:")) {
      data += (data ? "\n" : "") + line.slice(line.charCodeAt(5) === 32 ? 6 : 5);
    }
  }
  if (!data || data === "[DONE]") return undefined;
  try {
    return JSON.parse(data);
  } catch {
    return undefined;
  }
}

export class SseUsageFilter {
  usage: Usage | undefined;
  /** Text of the trailing event not yet terminated by a blank line. */
  private pending = "";
  /** Made on the first chunk that needs decoding: most streams never need one. */
  private decoder: TextDecoder | undefined;

  /** `hide`: drop the usage event (the client did not ask for it). */
  constructor(private readonly hide: boolean) {}

  /** Bytes to forward for this upstream chunk (possibly the chunk itself, possibly none). */
  push(chunk: Uint8Array): Uint8Array | undefined {
    // Fast path, taken for almost every vLLM chunk: whole events, no usage key; no decoding.
    if (this.pending === "" && endsWithBlankLine(chunk) && !containsUsageKey(chunk)) return chunk;
    const wasAligned = this.pending === "";
    this.decoder ??= new TextDecoder();
    const text = this.pending + this.decoder.decode(chunk, { stream: true });
    let end = -1;
    eventBoundary.lastIndex = 0;
    for (let match = eventBoundary.exec(text); match; match = eventBoundary.exec(text)) {
      end = match.index + match[0].length;
    }
    if (end === -1) {
      if (text.length > maxPendingChars) {
        // Not SSE as we know it (no event boundary in megabytes): stop inspecting.
        this.pending = "";
        return this.hide ? encoder.encode(text) : chunk;
      }
      this.pending = text;
      // When hiding, an unfinished event might be the usage chunk: hold it back.
      return this.hide ? undefined : chunk;
    }
    const complete = text.slice(0, end);
    this.pending = text.slice(end);
    const aligned = wasAligned && this.pending === "";
    if (!complete.includes('"usage"')) {
      if (!this.hide || aligned) return chunk;
      return encoder.encode(complete);
    }
    let kept = "";
    let dropped = false;
    let start = 0;
    eventBoundary.lastIndex = 0;
    for (let match = eventBoundary.exec(complete); match; match = eventBoundary.exec(complete)) {
      const stop = match.index + match[0].length;
      const event = complete.slice(start, stop);
      start = stop;
      if (event.includes('"usage"')) {
        const data = eventData(event);
        const usage = usageFrom(data);
        if (usage) {
          this.usage = usage;
          const choices = (data as { choices?: unknown }).choices;
          if (this.hide && Array.isArray(choices) && choices.length === 0) {
            dropped = true;
            continue;
          }
        }
      }
      kept += event;
    }
    if (!this.hide || (aligned && !dropped)) return chunk;
    return kept ? encoder.encode(kept) : undefined;
  }

  /** Whatever is left when the upstream ends (an unterminated last event). */
  finish(): Uint8Array | undefined {
    const rest = this.pending + (this.decoder?.decode() ?? "");
    this.pending = "";
    if (!this.hide || !rest) return undefined;
    return encoder.encode(rest);
  }
}

function endsWithBlankLine(chunk: Uint8Array): boolean {
  const n = chunk.byteLength;
  return n >= 2 && chunk[n - 1] === 0x0a && chunk[n - 2] === 0x0a;
}

/** `"usage"` (with the quotes) anywhere in the bytes. */
const usageKey = [0x22, 0x75, 0x73, 0x61, 0x67, 0x65, 0x22];
function containsUsageKey(chunk: Uint8Array): boolean {
  let from = 0;
  for (;;) {
    const at = chunk.indexOf(0x75, from);
    if (at === -1 || at + 6 > chunk.byteLength) return false;
    if (chunk[at - 1] === 0x22 && usageKey.every((byte, index) => chunk[at - 1 + index] === byte)) {
      return true;
    }
    from = at + 1;
  }
}

const tailBytes = 16 * 1024;

/** Keeps the last ~16 KiB of a JSON body and reads `usage` from it at the end. */
export class JsonUsageTail {
  private chunks: Uint8Array[] = [];
  private size = 0;

  push(chunk: Uint8Array): void {
    this.chunks.push(chunk);
    this.size += chunk.byteLength;
    while (this.chunks.length > 1 && this.size - (this.chunks[0]?.byteLength ?? 0) >= tailBytes) {
      this.size -= this.chunks.shift()?.byteLength ?? 0;
    }
  }

  usage(): Usage | undefined {
    if (this.size === 0) return undefined;
    let tail = this.chunks[0] as Uint8Array;
    if (this.chunks.length > 1) {
      tail = new Uint8Array(this.size);
      let offset = 0;
      for (const chunk of this.chunks) {
        tail.set(chunk, offset);
        offset += chunk.byteLength;
      }
    }
    // Inside JSON strings a quote is escaped, so `"prompt_tokens"` only matches real keys.
    // Searched as bytes from the end: no decoding, no regular expressions.
    const prompt = lastNumberAfter(tail, promptKey);
    const completion = lastNumberAfter(tail, completionKey);
    if (prompt === null && completion === null) return undefined;
    return { promptTokens: prompt, completionTokens: completion };
  }
}

const promptKey = encoder.encode('"prompt_tokens"');
const completionKey = encoder.encode('"completion_tokens"');

/** The integer after the last `key` (then optional spaces, `:`, spaces) in `bytes`, or null. */
function lastNumberAfter(bytes: Uint8Array, key: Uint8Array): number | null {
  const last = key.byteLength - 1;
  for (let end = bytes.lastIndexOf(key[last] as number); end >= last; ) {
    let matches = true;
    for (let index = 1; index <= last; index++) {
      if (bytes[end - index] !== key[last - index]) {
        matches = false;
        break;
      }
    }
    if (matches) {
      let at = end + 1;
      while (bytes[at] === 0x20 || bytes[at] === 0x09 || bytes[at] === 0x0a || bytes[at] === 0x0d)
        at++;
      if (bytes[at] === 0x3a /* : */) {
        at++;
        while (bytes[at] === 0x20 || bytes[at] === 0x09 || bytes[at] === 0x0a || bytes[at] === 0x0d)
          at++;
        let value = 0;
        let digits = 0;
        for (
          let byte = bytes[at];
          byte !== undefined && byte >= 0x30 && byte <= 0x39;
          byte = bytes[++at]
        ) {
          value = value * 10 + (byte - 0x30);
          digits++;
        }
        if (digits > 0 && digits <= 15) return value;
      }
    }
    end = end > 0 ? bytes.lastIndexOf(key[last] as number, end - 1) : -1;
  }
  return null;
}
