/**
 * Reading token usage out of responses without buffering them, and checking it.
 *
 * Streams: an incremental SSE splitter watches each event for vLLM's usage chunk
 * (`choices: []` + `usage`). When the client did not ask for usage (the router asked on its
 * behalf), that one event is removed; every other byte passes through untouched, and the
 * upstream chunk itself is forwarded whenever nothing in it changes.
 *
 * JSON bodies: vLLM serialises `usage` last, so keeping the tail of the body is enough (a
 * whole body without it in its tail, a rerank answer, is read whole).
 */

import { maxContextTokens, maxTokensPerRequest } from "../protocol/index.ts";

/**
 * Token counts as the engine wrote them: a number (any number: `checkUsage` judges it), null
 * when absent, or the text of anything else found there (a string, an object).
 */
export type RawUsage = { promptTokens: unknown; completionTokens: unknown };
/** Token counts that passed `checkUsage`: whole numbers within the request's bounds, or null. */
export type Usage = { promptTokens: number | null; completionTokens: number | null };
/** The record fields the router checks before they leave it. */
export type CheckedField = "prompt_tokens" | "completion_tokens" | "latency_ms" | "ttft_ms";
export type Rejection = { field: CheckedField; value: unknown };

const encoder = new TextEncoder();
const eventBoundary = /\r?\n\r?\n/g;
const maxPendingChars = 4 * 1024 * 1024;

/**
 * The usage an event carries: a chat or completion chunk's `usage`, or the `response.usage`
 * of a Responses event (`response.completed`), whose counts are named `input_tokens` and
 * `output_tokens`.
 */
function usageFrom(value: unknown): RawUsage | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  let usage = (value as { usage?: unknown }).usage;
  if (usage === undefined) {
    const response = (value as { response?: unknown }).response;
    if (typeof response === "object" && response !== null) {
      usage = (response as { usage?: unknown }).usage;
    }
  }
  if (typeof usage !== "object" || usage === null) return undefined;
  const { prompt_tokens, completion_tokens, input_tokens, output_tokens } = usage as Record<
    string,
    unknown
  >;
  return {
    promptTokens: prompt_tokens ?? input_tokens ?? null,
    completionTokens: completion_tokens ?? output_tokens ?? null,
  };
}

/**
 * What one request may hold: `inputs` prompts (a batch of completions or embeddings counts
 * each), `choices` completions per prompt (`n`), each within the model's context.
 */
export type UsageBounds = { maxModelLen: number | null; inputs: number; choices: number };

/**
 * Token counts as a record may carry them: whole numbers from 0 up to what the request could
 * hold (its model's `max_model_len` per prompt and choice when the route knows it, else
 * `maxContextTokens`; never above `maxTokensPerRequest`). Anything else (negative, a
 * fraction, a string, 3e9) becomes null and is named in `rejected`, never passed on.
 */
export function checkUsage(
  raw: RawUsage | undefined,
  bounds: UsageBounds,
): { usage: Usage | undefined; rejected: Rejection[] } {
  if (!raw) return { usage: undefined, rejected: [] };
  const context = bounds.maxModelLen ?? maxContextTokens;
  const inputs = Math.max(1, bounds.inputs);
  const rejected: Rejection[] = [];
  const usage = {
    promptTokens: checkCount(
      "prompt_tokens",
      raw.promptTokens,
      Math.min(maxTokensPerRequest, context * inputs),
      rejected,
    ),
    completionTokens: checkCount(
      "completion_tokens",
      raw.completionTokens,
      Math.min(maxTokensPerRequest, context * inputs * Math.max(1, bounds.choices)),
      rejected,
    ),
  };
  return { usage, rejected };
}

function checkCount(
  field: CheckedField,
  value: unknown,
  limit: number,
  rejected: Rejection[],
): number | null {
  if (value === null || value === undefined) return null;
  if (typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= limit) {
    return value;
  }
  rejected.push({ field, value });
  return null;
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
  usage: RawUsage | undefined;
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

  usage(): RawUsage | undefined {
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
    return usageInJson(tail, 0);
  }
}

/**
 * The usage in a JSON body held whole, read from its last ~16 KiB as `JsonUsageTail` reads
 * it (without copying them out). A body whose tail has none is read whole once: vLLM's rerank
 * answer puts `usage` before its results, which may run long.
 */
export function usageInJsonBody(body: Uint8Array): RawUsage | undefined {
  if (body.byteLength === 0) return undefined;
  const tailFrom = Math.max(0, body.byteLength - tailBytes);
  return usageInJson(body, tailFrom) ?? (tailFrom > 0 ? usageInJson(body, 0) : undefined);
}

/**
 * `usage` from `bytes[from..]`: prompt and completion tokens, else a Responses answer's input
 * and output tokens, else `total_tokens` alone (vLLM's rerank: a reranker reads, it writes
 * nothing) as prompt tokens.
 */
function usageInJson(bytes: Uint8Array, from: number): RawUsage | undefined {
  // Inside JSON strings a quote is escaped, so `"prompt_tokens"` only matches real keys.
  // Searched as bytes from the end: no decoding, no regular expressions.
  const prompt = lastValueAfter(bytes, promptKey, from);
  const completion = lastValueAfter(bytes, completionKey, from);
  if (prompt !== null || completion !== null) {
    return { promptTokens: prompt, completionTokens: completion };
  }
  // A Responses answer names them input and output tokens.
  const input = lastValueAfter(bytes, inputKey, from);
  const output = lastValueAfter(bytes, outputKey, from);
  if (input !== null || output !== null) return { promptTokens: input, completionTokens: output };
  const total = lastValueAfter(bytes, totalKey, from);
  return total === null ? undefined : { promptTokens: total, completionTokens: null };
}

const promptKey = encoder.encode('"prompt_tokens"');
const completionKey = encoder.encode('"completion_tokens"');
const inputKey = encoder.encode('"input_tokens"');
const outputKey = encoder.encode('"output_tokens"');
const totalKey = encoder.encode('"total_tokens"');

const isSpace = (byte: number | undefined) =>
  byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d;
/** Bytes that may follow a JSON value: space, `,`, `}`, `]`. */
const endsValue = (byte: number | undefined) =>
  byte === undefined || isSpace(byte) || byte === 0x2c || byte === 0x7d || byte === 0x5d;
const decoder = new TextDecoder();
const jsonNumber = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$/;

/**
 * The value after the last `key` (then optional spaces, `:`, spaces) in `bytes[from..]`: a
 * number for a JSON number (any: `checkUsage` judges it), null for `null` or no such key, else
 * the first 32 characters of whatever stands there (a string, an object), which is not a count.
 */
function lastValueAfter(bytes: Uint8Array, key: Uint8Array, from: number): unknown {
  const last = key.byteLength - 1;
  for (let end = bytes.lastIndexOf(key[last] as number); end >= from + last; ) {
    let matches = true;
    for (let index = 1; index <= last; index++) {
      if (bytes[end - index] !== key[last - index]) {
        matches = false;
        break;
      }
    }
    if (matches) {
      let at = end + 1;
      while (isSpace(bytes[at])) at++;
      if (bytes[at] === 0x3a /* : */) {
        at++;
        while (isSpace(bytes[at])) at++;
        let stop = at;
        while (stop < bytes.byteLength && stop - at < 32 && !endsValue(bytes[stop])) stop++;
        const count = wholeNumber(bytes, at, stop);
        if (count !== undefined) return count;
        const text = decoder.decode(bytes.subarray(at, stop));
        if (text === "null") return null;
        if (jsonNumber.test(text)) return Number(text);
        if (text !== "") return text;
      }
    }
    end = end > 0 ? bytes.lastIndexOf(key[last] as number, end - 1) : -1;
  }
  return null;
}

/**
 * `bytes[at..stop]` as a number when it is plain digits (what engines send), up to 15 of
 * them so the value is exact; undefined for anything else, which the caller decodes.
 */
function wholeNumber(bytes: Uint8Array, at: number, stop: number): number | undefined {
  const length = stop - at;
  if (length < 1 || length > 15 || (length > 1 && bytes[at] === 0x30)) return undefined;
  let value = 0;
  for (let index = at; index < stop; index++) {
    const digit = (bytes[index] as number) - 0x30;
    if (digit < 0 || digit > 9) return undefined;
    value = value * 10 + digit;
  }
  return value;
}
