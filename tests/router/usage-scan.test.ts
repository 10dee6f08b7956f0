import { describe, expect, test } from "bun:test";
import { JsonUsageTail, SseUsageFilter } from "../../router/usage-scan.ts";

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

  test("accepts whitespace around the colon and skips a key without a number", () => {
    const pretty = '{"usage": {\n  "prompt_tokens" :\t7,\n  "completion_tokens": null\n}}';
    expect(tailOf(pretty).usage()).toEqual({ promptTokens: 7, completionTokens: null });
    const earlier = '{"a":{"completion_tokens": 3},"usage":{"completion_tokens": null}}';
    expect(tailOf(earlier).usage()).toEqual({ promptTokens: null, completionTokens: 3 });
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
});
