import { describe, expect, test } from "bun:test";
import { maxContextTokens, maxTokensPerRequest } from "../../protocol/index.ts";
import {
  checkUsage,
  JsonUsageTail,
  SseUsageFilter,
  type UsageBounds,
  usageInJsonBody,
} from "../../router/usage-scan.ts";

const encoder = new TextEncoder();

function tailOf(...parts: string[]): JsonUsageTail {
  const tail = new JsonUsageTail();
  for (const part of parts) tail.push(encoder.encode(part));
  return tail;
}

describe("JsonUsageTail", () => {
  const completion = JSON.stringify({
    id: "chatcmpl-1",
    choices: [{ index: 0, message: { role: "assistant", content: 'say "prompt_tokens": 999' } }],
    usage: {
      prompt_tokens: 14,
      total_tokens: 30,
      completion_tokens: 16,
      prompt_tokens_details: null,
    },
  });

  test("reads vLLM's usage, not look-alikes inside strings or longer keys", () => {
    expect(tailOf(completion).usage()).toEqual({ promptTokens: 14, completionTokens: 16 });
  });

  test("reads it across chunk boundaries anywhere in the body", () => {
    for (let cut = 1; cut < completion.length; cut += 7) {
      const usage = tailOf(completion.slice(0, cut), completion.slice(cut)).usage();
      expect(usage).toEqual({ promptTokens: 14, completionTokens: 16 });
    }
  });

  test("accepts whitespace around the colon; the last key counts, even when it is null", () => {
    const pretty = '{"usage": {\n  "prompt_tokens" :\t7,\n  "completion_tokens": null\n}}';
    expect(tailOf(pretty).usage()).toEqual({ promptTokens: 7, completionTokens: null });
    const earlier = '{"a":{"completion_tokens": 3},"usage":{"completion_tokens": null}}';
    expect(tailOf(earlier).usage()).toBeUndefined();
  });

  test("reads every JSON number as written and anything else as its text, for checkUsage to judge", () => {
    const body = (prompt: string, completion: string) =>
      `{"usage":{"prompt_tokens":${prompt},"completion_tokens":${completion},"total_tokens":1}}`;
    expect(tailOf(body("3000000000", "-5")).usage()).toEqual({
      promptTokens: 3e9,
      completionTokens: -5,
    });
    expect(tailOf(body("1.5", "2e3")).usage()).toEqual({
      promptTokens: 1.5,
      completionTokens: 2000,
    });
    expect(tailOf(body('"12"', '"many"')).usage()).toEqual({
      promptTokens: '"12"',
      completionTokens: '"many"',
    });
    // Once, a float read as its integer part (1.5 became 1) and a long number as 15 digits.
    expect(tailOf(body("12345678901234567890", "0")).usage()?.promptTokens).toBe(
      1.2345678901234567e19,
    );
  });

  test("answers undefined for a body without usage, and for no body", () => {
    expect(tailOf('{"object":"list","data":[]}').usage()).toBeUndefined();
    expect(new JsonUsageTail().usage()).toBeUndefined();
  });

  test("keeps only the tail of a large body and still finds the usage at its end", () => {
    const big = `{"data":"${"x".repeat(100_000)}",`;
    const tail = tailOf(big, big, '"usage":{"prompt_tokens":5,"completion_tokens":6}}');
    expect(tail.usage()).toEqual({ promptTokens: 5, completionTokens: 6 });
  });
});

describe("usageInJsonBody", () => {
  const body = (prompt: string, completion: string) =>
    `{"usage":{"prompt_tokens":${prompt},"completion_tokens":${completion},"total_tokens":1}}`;

  test("reads a whole body as JsonUsageTail reads its last 16 KiB", () => {
    const bodies = [
      body("14", "16"),
      body("0", "007"),
      body("123456789012345", "1234567890123456"),
      body("-5", "1.5"),
      body("2e3", '"12"'),
      body("null", "{}"),
      '{"usage": {\n  "prompt_tokens" :\t7,\n  "completion_tokens": null\n}}',
      '{"object":"list","data":[]}',
      "",
      `{"data":"${"x".repeat(20_000)}","usage":{"prompt_tokens":5,"completion_tokens":6}}`,
    ];
    for (const text of bodies) {
      const bytes = encoder.encode(text);
      const tail = new JsonUsageTail();
      tail.push(bytes.subarray(Math.max(0, bytes.byteLength - 16 * 1024)));
      expect(usageInJsonBody(bytes)).toEqual(tail.usage());
    }
    // A usage before the last 16 KiB is out of a stream's sight, but a whole body with none in
    // its tail is read whole (vLLM's rerank puts usage before its results).
    const early = encoder.encode(`{"usage":{"prompt_tokens":5},"data":"${"x".repeat(20_000)}"}`);
    const tail = new JsonUsageTail();
    tail.push(early.subarray(early.byteLength - 16 * 1024));
    expect(tail.usage()).toBeUndefined();
    expect(usageInJsonBody(early)).toEqual({ promptTokens: 5, completionTokens: null });
    // A usage of total_tokens alone (a reranker reads, it writes nothing) is prompt tokens.
    expect(
      usageInJsonBody(encoder.encode('{"id":"r","usage":{"total_tokens":42},"results":[]}')),
    ).toEqual({
      promptTokens: 42,
      completionTokens: null,
    });
    expect(usageInJsonBody(encoder.encode(body("0", "007")))).toEqual({
      promptTokens: 0,
      completionTokens: "007",
    });
    expect(usageInJsonBody(encoder.encode(body("123456789012345", "1234567890123456")))).toEqual({
      promptTokens: 123456789012345,
      completionTokens: 1234567890123456,
    });
  });
});

describe("SseUsageFilter", () => {
  const event = (data: unknown) => `data: ${JSON.stringify(data)}\n\n`;
  const token = event({ choices: [{ index: 0, delta: { content: "Hi" } }] });
  const usage = event({ choices: [], usage: { prompt_tokens: 3, completion_tokens: 1 } });

  test("passes token chunks through as the same bytes and drops the usage event when hiding", () => {
    const filter = new SseUsageFilter(true);
    const chunk = encoder.encode(token);
    expect(filter.push(chunk)).toBe(chunk);
    const rest = filter.push(encoder.encode(`${usage}data: [DONE]\n\n`));
    expect(new TextDecoder().decode(rest)).toBe("data: [DONE]\n\n");
    expect(filter.usage).toEqual({ promptTokens: 3, completionTokens: 1 });
  });

  test("keeps the usage event for a client that asked, and reads it split across chunks", () => {
    const filter = new SseUsageFilter(false);
    const whole = token + usage;
    let out = "";
    for (let at = 0; at < whole.length; at += 5) {
      const piece = filter.push(encoder.encode(whole.slice(at, at + 5)));
      if (piece) out += new TextDecoder().decode(piece);
    }
    expect(out).toBe(whole);
    expect(filter.usage).toEqual({ promptTokens: 3, completionTokens: 1 });
  });

  /** Feeds `whole` in pieces cut at `cuts`, returning what the client would receive. */
  function relay(filter: SseUsageFilter, whole: string, cuts: number[]): string {
    const decoder = new TextDecoder();
    let out = "";
    let from = 0;
    for (const cut of [...cuts, whole.length]) {
      const piece = filter.push(encoder.encode(whole.slice(from, cut)));
      if (piece) out += decoder.decode(piece, { stream: true });
      from = cut;
    }
    const rest = filter.finish();
    if (rest) out += decoder.decode(rest);
    return out;
  }

  test("hides the usage event however the stream is split, and passes every other byte", () => {
    const done = "data: [DONE]\n\n";
    const whole = token + token + usage + done;
    for (let a = 1; a < whole.length; a += 3) {
      for (const b of [a + 1, a + 7, a + 40]) {
        const filter = new SseUsageFilter(true);
        const cuts = b < whole.length ? [a, b] : [a];
        expect(relay(filter, whole, cuts)).toBe(token + token + done);
        expect(filter.usage).toEqual({ promptTokens: 3, completionTokens: 1 });
      }
    }
  });

  test("hides the usage event split byte by byte, with CRLF event boundaries", () => {
    const crlf = (text: string) => text.replaceAll("\n", "\r\n");
    const whole = crlf(`${token}${usage}data: [DONE]\n\n`);
    const filter = new SseUsageFilter(true);
    const cuts = Array.from({ length: whole.length - 1 }, (_, index) => index + 1);
    expect(relay(filter, whole, cuts)).toBe(crlf(`${token}data: [DONE]\n\n`));
    expect(filter.usage).toEqual({ promptTokens: 3, completionTokens: 1 });
  });

  test("when hiding, keeps chunks that carry usage next to content (continuous usage stats)", () => {
    const withContent = event({
      choices: [{ index: 0, delta: { content: "Hi" } }],
      usage: { prompt_tokens: 3, completion_tokens: 1 },
    });
    const final = event({ choices: [], usage: { prompt_tokens: 3, completion_tokens: 2 } });
    const filter = new SseUsageFilter(true);
    const whole = withContent + final;
    expect(relay(filter, whole, [withContent.length - 3, withContent.length + 5])).toBe(
      withContent,
    );
    expect(filter.usage).toEqual({ promptTokens: 3, completionTokens: 2 });
  });

  test("an unterminated last event is flushed at the end when hiding", () => {
    const filter = new SseUsageFilter(true);
    expect(relay(filter, `${token}data: {"partial":`, [token.length + 4])).toBe(
      `${token}data: {"partial":`,
    );
  });
});

describe("checkUsage", () => {
  const one: UsageBounds = { maxModelLen: null, inputs: 1, choices: 1 };
  const counts = (promptTokens: unknown, completionTokens: unknown, bounds = one) =>
    checkUsage({ promptTokens, completionTokens }, bounds);

  test("passes whole counts within bounds, and null for counts not sent", () => {
    expect(counts(14, 16)).toEqual({
      usage: { promptTokens: 14, completionTokens: 16 },
      rejected: [],
    });
    expect(counts(null, undefined)).toEqual({
      usage: { promptTokens: null, completionTokens: null },
      rejected: [],
    });
    expect(checkUsage(undefined, one)).toEqual({ usage: undefined, rejected: [] });
  });

  test("absurd, negative, fractional and non-numeric counts become null and are named", () => {
    for (const bad of [3e9, -1, 1.5, "12", '"12"', {}, Number.NaN, Number.POSITIVE_INFINITY]) {
      const { usage, rejected } = counts(bad, 5);
      expect(usage).toEqual({ promptTokens: null, completionTokens: 5 });
      expect(rejected).toEqual([{ field: "prompt_tokens", value: bad }]);
    }
    const both = counts(-3, 0.25);
    expect(both.usage).toEqual({ promptTokens: null, completionTokens: null });
    expect(both.rejected.map((r) => r.field)).toEqual(["prompt_tokens", "completion_tokens"]);
  });

  test("the model's context bounds each count, per prompt and per choice", () => {
    const ctx = { maxModelLen: 4096, inputs: 1, choices: 1 };
    expect(counts(4096, 4096, ctx).rejected).toEqual([]);
    expect(counts(4097, 10, ctx).rejected).toEqual([{ field: "prompt_tokens", value: 4097 }]);
    // Three prompts (a batch), two choices each: up to 3 x 4096 prompt tokens, 6 x 4096 out.
    const batch = { maxModelLen: 4096, inputs: 3, choices: 2 };
    expect(counts(3 * 4096, 6 * 4096, batch).rejected).toEqual([]);
    expect(counts(3 * 4096 + 1, 6 * 4096 + 1, batch).rejected.map((r) => r.field)).toEqual([
      "prompt_tokens",
      "completion_tokens",
    ]);
  });

  test("without a known context the largest the manager accepts bounds it, never past the hard cap", () => {
    expect(counts(maxContextTokens, 0).rejected).toEqual([]);
    expect(counts(maxContextTokens + 1, 0).rejected).toHaveLength(1);
    const huge = { maxModelLen: null, inputs: 1000, choices: 1000 };
    expect(counts(maxTokensPerRequest, maxTokensPerRequest, huge).rejected).toEqual([]);
    expect(counts(maxTokensPerRequest + 1, maxTokensPerRequest + 1, huge).rejected).toHaveLength(2);
  });
});
