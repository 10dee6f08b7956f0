import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { metricAt } from "../../devkit/metrics.ts";
import { stopAll } from "../../devkit/proc.ts";
import { type Sim, startSim } from "./sim-helpers.ts";

let sim: Sim;
let client: OpenAI;

beforeAll(async () => {
  sim = await startSim([
    "--served-model-name",
    "chat-a",
    "chat-b",
    "--max-model-len",
    "256",
    "--time-to-first-token",
    "5",
    "--inter-token-latency",
    "2",
  ]);
  client = new OpenAI({ baseURL: `${sim.base}/v1`, apiKey: "unused", maxRetries: 0 });
});
afterAll(stopAll);

describe("engine simulator: OpenAI surface", () => {
  test("lists one model card per served name with max_model_len", async () => {
    const models = await client.models.list();
    const ids = models.data.map((model) => model.id);
    expect(ids).toEqual(["chat-a", "chat-b"]);
    const card = models.data[0] as unknown as Record<string, unknown>;
    expect(card.owned_by).toBe("vllm");
    expect(card.max_model_len).toBe(256);
    expect(card.root).toBe("/models/sim-model");
  });

  test("chat echoes the last user message and names the first served model", async () => {
    const completion = await client.chat.completions.create({
      model: "chat-b",
      messages: [
        { role: "system", content: "be brief" },
        { role: "user", content: "hello fleet" },
      ],
    });
    expect(completion.id).toStartWith("chatcmpl-");
    expect(completion.object).toBe("chat.completion");
    expect(completion.model).toBe("chat-a");
    expect(completion.choices[0]?.message.content).toBe("hello fleet");
    expect(completion.choices[0]?.finish_reason).toBe("stop");
    // 11 chars = 3 tokens of output; prompt = 3 + (4 + 2) + (4 + 3).
    expect(completion.usage).toMatchObject({
      completion_tokens: 3,
      prompt_tokens: 16,
      total_tokens: 19,
    });
  });

  test("max_tokens cuts the answer with finish_reason length; ignore_eos fills it", async () => {
    const cut = await client.chat.completions.create({
      model: "chat-a",
      messages: [{ role: "user", content: "a long enough message" }],
      max_tokens: 2,
    });
    expect(cut.choices[0]?.message.content).toBe("a long e");
    expect(cut.choices[0]?.finish_reason).toBe("length");
    const filled = await client.chat.completions.create({
      model: "chat-a",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 7,
      // vLLM extension, passed through the SDK's extra body.
      ...({ ignore_eos: true } as object),
    });
    expect(filled.usage?.completion_tokens).toBe(7);
    expect(filled.choices[0]?.finish_reason).toBe("length");
  });

  test("streams chat chunks, finish_reason on the last content chunk, usage, then [DONE]", async () => {
    const stream = await client.chat.completions.create({
      model: "chat-a",
      messages: [{ role: "user", content: "stream me please" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const ids = new Set(chunks.map((chunk) => chunk.id));
    expect(ids.size).toBe(1);
    expect(chunks[0]?.choices[0]?.delta.role).toBe("assistant");
    const text = chunks.map((chunk) => chunk.choices[0]?.delta.content ?? "").join("");
    expect(text).toBe("stream me please");
    const contentChunks = chunks.filter((chunk) => chunk.choices.length > 0);
    expect(contentChunks.at(-1)?.choices[0]?.finish_reason).toBe("stop");
    const last = chunks.at(-1);
    expect(last?.choices).toEqual([]);
    expect(last?.usage).toMatchObject({
      completion_tokens: 4,
      total_tokens: (last?.usage?.prompt_tokens ?? 0) + 4,
    });
  });

  test("raw stream ends with data: [DONE] and has no usage chunk unless asked", async () => {
    const response = await fetch(`${sim.base}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify({
        model: "chat-a",
        stream: true,
        messages: [{ role: "user", content: "abc" }],
      }),
    });
    expect(response.headers.get("content-type")).toStartWith("text/event-stream");
    const text = await response.text();
    expect(text.endsWith("data: [DONE]\n\n")).toBe(true);
    expect(text).not.toContain('"usage"');
    for (const event of text.trim().split("\n\n")) expect(event).toStartWith("data: ");
  });

  test("completions default to 16 tokens max and stream too", async () => {
    const completion = await client.completions.create({
      model: "chat-a",
      prompt: "x".repeat(100),
    });
    expect(completion.object).toBe("text_completion");
    expect(completion.usage).toMatchObject({ prompt_tokens: 25, completion_tokens: 16 });
    expect(completion.choices[0]?.finish_reason).toBe("length");

    const stream = await client.completions.create({
      model: "chat-a",
      prompt: "once upon",
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe("once upon");
    expect(usage?.completion_tokens).toBe(3);
  });

  test("embeddings are deterministic unit vectors", async () => {
    const first = await client.embeddings.create({ model: "chat-a", input: ["alpha", "beta"] });
    const again = await client.embeddings.create({ model: "chat-a", input: "alpha" });
    expect(first.data).toHaveLength(2);
    const vector = first.data[0]?.embedding ?? [];
    expect(vector.length).toBeGreaterThan(0);
    expect(again.data[0]?.embedding).toEqual(vector);
    expect(first.data[1]?.embedding).not.toEqual(vector);
    const norm = Math.sqrt(vector.reduce((sum, value) => sum + value * value, 0));
    expect(norm).toBeCloseTo(1, 5);
  });

  test("the Responses API answers whole and streamed, as the official client reads it", async () => {
    const whole = await client.responses.create({
      model: "chat-a",
      instructions: "Answer briefly.",
      input: [{ role: "user", content: "echo this back" }],
    });
    expect(whole.object).toBe("response");
    expect(whole.status).toBe("completed");
    expect(whole.output_text).toBe("echo this back");
    expect(whole.usage?.output_tokens).toBeGreaterThan(0);
    expect(whole.usage?.total_tokens).toBe(
      (whole.usage?.input_tokens ?? 0) + (whole.usage?.output_tokens ?? 0),
    );

    const stream = await client.responses.create({
      model: "chat-a",
      input: "stream this",
      stream: true,
    });
    const types: string[] = [];
    let text = "";
    let usage: { input_tokens: number; output_tokens: number } | null | undefined;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "response.output_text.delta") text += event.delta;
      if (event.type === "response.completed") usage = event.response.usage;
    }
    expect(text).toBe("stream this");
    expect(types[0]).toBe("response.created");
    expect(types.at(-1)).toBe("response.completed");
    expect(usage?.output_tokens).toBeGreaterThan(0);

    // Capped by max_output_tokens: incomplete, and says why.
    const capped = await client.responses.create({
      model: "chat-a",
      input: "one two three four five",
      max_output_tokens: 2,
    });
    expect(capped.status).toBe("incomplete");
    expect(capped.incomplete_details?.reason).toBe("max_output_tokens");
  });

  test("rerank and score answer in vLLM's shapes: usage first for rerank, pairs in order for score", async () => {
    const post = (path: string, body: unknown) =>
      fetch(`${sim.base}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    const documents = ["cats purr", { text: "dogs bark loudly at night" }, "the dogs bark"];
    const reranked = await post("/v1/rerank", {
      model: "chat-a",
      query: "why do dogs bark",
      documents,
      top_n: 2,
    });
    expect(reranked.status).toBe(200);
    const text = await reranked.text();
    expect(Object.keys(JSON.parse(text))).toEqual(["id", "model", "usage", "results"]);
    const rerank = JSON.parse(text) as {
      id: string;
      model: string;
      usage: { total_tokens: number };
      results: { index: number; document: { text: string }; relevance_score: number }[];
    };
    expect(rerank.id).toStartWith("rerank-");
    expect(rerank.model).toBe("chat-a");
    expect(rerank.results.map((result) => result.index)).toEqual([2, 1]);
    expect(rerank.results[1]?.document.text).toBe("dogs bark loudly at night");
    expect(rerank.usage.total_tokens).toBeGreaterThan(0);

    const scored = await post("/v1/score", {
      model: "chat-a",
      text_1: ["dogs bark", "cats purr"],
      text_2: ["the dogs bark", "dogs bark"],
    });
    const score = (await scored.json()) as {
      object: string;
      data: { index: number; object: string; score: number }[];
      usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
    };
    expect(score.object).toBe("list");
    expect(score.data.map((item) => [item.index, item.object])).toEqual([
      [0, "score"],
      [1, "score"],
    ]);
    expect(score.data[0]?.score).toBeGreaterThan(score.data[1]?.score ?? 1);
    expect(score.usage.completion_tokens).toBe(0);
    expect(score.usage.total_tokens).toBe(score.usage.prompt_tokens);

    // Lists of different lengths, a missing query, a pair over the context: vLLM's 400s.
    const mismatched = await post("/v1/score", { text_1: ["a", "b"], text_2: ["c"] });
    expect(mismatched.status).toBe(400);
    expect((await post("/v1/rerank", { documents: ["d"] })).status).toBe(400);
    const long = await post("/v1/rerank", { query: "q", documents: ["word ".repeat(400)] });
    expect(long.status).toBe(400);
    expect(((await long.json()) as { error: { message: string } }).error.message).toContain(
      "maximum context length",
    );
  });

  test("unknown model is a 404 NotFoundError naming the model", async () => {
    const error = await client.chat.completions
      .create({ model: "nope", messages: [{ role: "user", content: "x" }] })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(OpenAI.NotFoundError);
    const apiError = error as InstanceType<typeof OpenAI.NotFoundError>;
    expect(apiError.status).toBe(404);
    expect(apiError.message).toContain("The model `nope` does not exist.");
    expect(apiError.param).toBe("model");
  });

  test("prompt plus max_tokens beyond max-model-len is a 400 about the context length", async () => {
    const error = await client.chat.completions
      .create({
        model: "chat-a",
        messages: [{ role: "user", content: "x".repeat(400) }],
        max_tokens: 200,
      })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(OpenAI.BadRequestError);
    const apiError = error as InstanceType<typeof OpenAI.BadRequestError>;
    expect(apiError.message).toMatch(/maximum context length is 256 tokens/);
    expect(apiError.param).toBe("input_tokens");
  });

  test("malformed JSON and invalid bodies are 400 in the nested error shape", async () => {
    const bad = await fetch(`${sim.base}/v1/chat/completions`, {
      method: "POST",
      body: "{not json",
    });
    expect(bad.status).toBe(400);
    const body = (await bad.json()) as { error: { type: string; code: number } };
    expect(body.error).toMatchObject({ type: "BadRequestError", code: 400 });
    const invalid = await fetch(`${sim.base}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify({ model: "chat-a", messages: [] }),
    });
    expect(invalid.status).toBe(400);
    expect(((await invalid.json()) as { error: { param: string } }).error.param).toBe("messages");
  });

  test("health is 200 with an empty body; version, tokenize and unknown paths answer like vLLM", async () => {
    const health = await fetch(`${sim.base}/health`);
    expect(health.status).toBe(200);
    expect(await health.text()).toBe("");
    const version = (await (await fetch(`${sim.base}/version`)).json()) as { version: string };
    expect(version.version).toMatch(/^\d+\.\d+\.\d+$/);
    const tokens = (await (
      await fetch(`${sim.base}/tokenize`, {
        method: "POST",
        body: JSON.stringify({ prompt: "12345678" }),
      })
    ).json()) as { count: number; max_model_len: number };
    expect(tokens).toMatchObject({ count: 2, max_model_len: 256 });
    const missing = await fetch(`${sim.base}/v1/nothing`);
    expect(missing.status).toBe(404);
  });

  test("serves the same API under /proxy/{served-name}/v1 and 404s an unknown name", async () => {
    const proxied = new OpenAI({
      baseURL: `${sim.base}/proxy/chat-b/v1`,
      apiKey: "x",
      maxRetries: 0,
    });
    const completion = await proxied.chat.completions.create({
      model: "chat-b",
      messages: [{ role: "user", content: "via proxy" }],
    });
    expect(completion.choices[0]?.message.content).toBe("via proxy");
    const unknown = await fetch(`${sim.base}/proxy/other/v1/models`);
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { error: { type: string } }).error.type).toBe(
      "NotFoundError",
    );
  });

  test("metrics use vLLM names and labels and count tokens", async () => {
    const before = await metricAt(`${sim.base}/metrics`, "vllm:generation_tokens_total", {
      model_name: "chat-a",
    });
    await client.chat.completions.create({
      model: "chat-a",
      messages: [{ role: "user", content: "12345678" }],
    });
    const after = await metricAt(`${sim.base}/metrics`, "vllm:generation_tokens_total", {
      model_name: "chat-a",
      engine: "0",
    });
    expect(after - before).toBe(2);
    const text = await (await fetch(`${sim.base}/metrics`)).text();
    expect(text).toContain("# TYPE vllm:time_to_first_token_seconds histogram");
    expect(text).toMatch(
      /vllm:request_success_total\{finished_reason="stop",engine="0",model_name="chat-a"\} \d+\.0/,
    );
    expect(text).toContain('vllm:num_requests_running{engine="0",model_name="chat-a"} ');
    expect(text).toContain("vllm:kv_cache_usage_perc{");
    expect(text).toContain("vllm:prompt_tokens_total{");
  });
});
