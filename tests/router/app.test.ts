import { describe, expect, test } from "bun:test";
import { createSimApp } from "../../agent/sim/app.ts";
import { parseServeArgs } from "../../agent/sim/config.ts";
import { metric } from "../../devkit/metrics.ts";
import { eventually } from "../../devkit/net.ts";
import { sseData as events } from "../../devkit/sse.ts";
import { Cors } from "../../kit/cors.ts";
import { Metrics } from "../../kit/metrics.ts";
import type { RouteEntry, RouteSnapshot, UsageRecord } from "../../protocol/index.ts";
import { type AppDeps, createApp } from "../../router/app.ts";
import { OpenStreams } from "../../router/open-streams.ts";
import { route } from "./route-entry.ts";

/**
 * The router app driven with `app.request`: no listener, no process. Its replicas are the
 * engine simulator's own fetch handler (which answers `/proxy/{alias}/v1/*` like a worker),
 * plus a replica that refuses connections and one that answers 503.
 */

/** The simulator serving `qwen` and `loading`, instant tokens, in this process. */
const sim = createSimApp(
  parseServeArgs(
    [
      "serve",
      "org/qwen",
      "--served-model-name",
      "qwen",
      "loading",
      "--time-to-first-token",
      "0",
      "--inter-token-latency",
      "0",
      "--max-model-len",
      "2048",
    ],
    { SIM_FAIL_STARTUP: false, SIM_ACCESS_LOG: false },
  ),
);

type Upstream = { url: string; headers: Headers; body: string };

const keyHash = (key: string) => new Bun.CryptoHasher("sha256").update(key).digest("hex");

/**
 * A router over a fixed route table: `live.test` is the simulator, `down.test` refuses
 * connections, `sick.test` answers 503 like an agent whose engine is not serving.
 */
function router(
  options: {
    routes?: RouteEntry[];
    apiKeys?: RouteSnapshot["api_keys"];
    loaded?: boolean;
    deps?: Partial<AppDeps>;
  } = {},
) {
  const snapshot: RouteSnapshot = {
    version: "1",
    routes: options.routes ?? [
      route({ alias: "qwen", workerId: "live", url: "http://live.test" }),
      route({ alias: "loading", workerId: "live", url: "http://live.test", ready: false }),
    ],
    api_keys: options.apiKeys ?? [],
  };
  const usage: UsageRecord[] = [];
  const upstream: Upstream[] = [];
  const app = createApp({
    routes: { current: () => (options.loaded === false ? undefined : snapshot) },
    usage: { record: (record) => usage.push(record) },
    fetch: async (input, init) => {
      const request = new Request(input, init);
      const host = new URL(request.url).hostname;
      upstream.push({
        url: request.url,
        headers: request.headers,
        body: await request.clone().text(),
      });
      if (host === "down.test") throw new TypeError("fetch failed: connection refused");
      if (host === "short.test") return shortAnswer(new URL(request.url).pathname);
      if (host === "endless.test") return endlessAnswer(request.signal);
      if (host === "framed.test") return framed(await sim.fetch(request));
      if (host === "sick.test") {
        return Response.json(
          { error: { message: "engine not ready", type: "server_error", param: null, code: 503 } },
          { status: 503 },
        );
      }
      return sim.fetch(request);
    },
    ...options.deps,
  });
  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    app.request(path, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });
  return { app, usage, upstream, post };
}

/** The simulator's answer with its Content-Length, as it comes over HTTP (then read whole). */
async function framed(answer: Response): Promise<Response> {
  const bytes = await answer.bytes();
  const headers = new Headers(answer.headers);
  headers.set("content-length", String(bytes.byteLength));
  return new Response(bytes, { status: answer.status, headers });
}

const chat = (extra: Record<string, unknown> = {}) => ({
  model: "qwen",
  messages: [{ role: "user", content: "hello there" }],
  max_tokens: 5,
  ...extra,
});

/**
 * An answer whose body ends, cleanly, a few bytes into what its Content-Length promised
 * (100,000 bytes, or 99,999,999,999,999 for embeddings): what a client that does not check
 * framing itself would hand over.
 */
function shortAnswer(path: string): Response {
  const sse = path.endsWith("/chat/completions");
  const first = sse
    ? 'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    : '{"partial":';
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new TextEncoder().encode(first));
      controller.close();
    },
  });
  return new Response(body, {
    headers: {
      "content-type": sse ? "text/event-stream" : "application/json",
      "content-length": path.endsWith("/embeddings") ? "99999999999999" : "100000",
    },
  });
}

/** An event stream that sends one whole event and half of the next, then waits for ever. */
function endlessAnswer(signal: AbortSignal): Response {
  const encoder = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(
        encoder.encode('data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'),
      );
      controller.enqueue(encoder.encode('data: {"choices":[{"index":0,"delta":{"conte'));
      signal.addEventListener("abort", () => controller.error(signal.reason));
    },
  });
  return new Response(body, { headers: { "content-type": "text/event-stream" } });
}

type ErrorBody = { error: { message: string; type: string; param: string | null; code: string } };

describe("router app: token metrics", () => {
  test("counts each request's prompt and completion tokens by alias and API key", async () => {
    const key = "sk-tokens";
    const { app, post, usage } = router({ apiKeys: [{ id: "key_1", key_hash: keyHash(key) }] });
    const auth = { authorization: `Bearer ${key}` };
    for (const extra of [{}, { stream: true }]) {
      const response = await post("/v1/chat/completions", chat(extra), auth);
      expect(response.status).toBe(200);
      await response.arrayBuffer();
    }
    const text = await (await app.request("/metrics", { headers: auth })).text();
    const sum = (field: "prompt_tokens" | "completion_tokens") =>
      usage.reduce((total, record) => total + (record[field] ?? 0), 0);
    expect(sum("prompt_tokens")).toBeGreaterThan(0);
    const labels = { alias: "qwen", api_key_id: "key_1" };
    expect(metric(text, "fleet_router_tokens_total", { ...labels, kind: "prompt" })).toBe(
      sum("prompt_tokens"),
    );
    expect(metric(text, "fleet_router_tokens_total", { ...labels, kind: "completion" })).toBe(
      sum("completion_tokens"),
    );
  });
});

describe("router app: upstream clients", () => {
  test("streamed requests go through streamFetch, whole answers through fetch", async () => {
    const streamed: string[] = [];
    const { post, upstream } = router({
      deps: {
        streamFetch: async (input, init) => {
          streamed.push(String(input));
          return sim.fetch(new Request(input, init));
        },
      },
    });
    const whole = await post("/v1/chat/completions", chat());
    expect(whole.status).toBe(200);
    await whole.arrayBuffer();
    const stream = await post("/v1/chat/completions", chat({ stream: true }));
    expect(stream.status).toBe(200);
    expect(events(await stream.text()).at(-1)).toBe("[DONE]");
    expect(upstream.map((u) => u.url)).toEqual(["http://live.test/proxy/qwen/v1/chat/completions"]);
    expect(streamed).toEqual(["http://live.test/proxy/qwen/v1/chat/completions"]);
  });
});

describe("router app: proxying", () => {
  test("answers a chat completion from a replica and records its usage", async () => {
    const { post, usage, upstream } = router();
    const response = await post("/v1/chat/completions", chat(), {
      authorization: "Bearer client-secret",
      "x-request-id": "req-abc.1",
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("x-request-id")).toBe("req-abc.1");
    const body = (await response.json()) as {
      choices: { message: { content: string } }[];
      usage: { prompt_tokens: number; completion_tokens: number };
    };
    expect(body.choices[0]?.message.content).toBe("hello there");
    // The replica got its own worker's agent credential, never the client's key.
    expect(upstream.map((u) => u.url)).toEqual(["http://live.test/proxy/qwen/v1/chat/completions"]);
    expect(upstream[0]?.headers.get("authorization")).toBe("Bearer fa_agent-of-live");
    expect(usage).toEqual([
      expect.objectContaining({
        api_key_id: null,
        alias: "qwen",
        worker_id: "live",
        status: 200,
        stream: false,
        prompt_tokens: body.usage.prompt_tokens,
        completion_tokens: body.usage.completion_tokens,
      }),
    ]);
    expect(usage[0]?.ttft_ms).not.toBeNull();
  });

  test("a stream that did not ask for usage gets none, yet its tokens are recorded", async () => {
    const { post, usage, upstream } = router();
    const response = await post("/v1/chat/completions", chat({ stream: true, ignore_eos: true }));
    expect(response.headers.get("content-type")).toContain("text/event-stream");
    const data = events(await response.text());
    expect(data.at(-1)).toBe("[DONE]");
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d) as { usage?: unknown });
    expect(chunks.length).toBeGreaterThan(1);
    expect(chunks.filter((chunk) => chunk.usage)).toEqual([]);
    // The router asked the replica for usage on the client's behalf...
    expect(JSON.parse(upstream[0]?.body ?? "{}").stream_options).toEqual({ include_usage: true });
    // ...and recorded it.
    expect(usage).toEqual([
      expect.objectContaining({ status: 200, stream: true, completion_tokens: 5 }),
    ]);
  });

  test("include_usage: false is honoured the same way, other stream options kept", async () => {
    const { post, usage, upstream } = router();
    const response = await post(
      "/v1/chat/completions",
      chat({
        stream: true,
        ignore_eos: true,
        stream_options: { include_usage: false, continuous_usage_stats: false },
      }),
    );
    const data = events(await response.text());
    expect(data.some((d) => d.includes('"usage"'))).toBe(false);
    expect(JSON.parse(upstream[0]?.body ?? "{}").stream_options).toEqual({
      include_usage: true,
      continuous_usage_stats: false,
    });
    expect(usage[0]?.completion_tokens).toBe(5);
  });

  test("a stream that asked for usage gets the usage chunk once, as sent", async () => {
    const { post, usage, upstream } = router();
    const response = await post(
      "/v1/chat/completions",
      chat({ stream: true, ignore_eos: true, stream_options: { include_usage: true } }),
    );
    const data = events(await response.text());
    const withUsage = data.filter((d) => d.includes('"usage"'));
    expect(withUsage).toHaveLength(1);
    expect(JSON.parse(withUsage[0] ?? "{}").choices).toEqual([]);
    // Passed through as the client wrote it.
    expect(JSON.parse(upstream[0]?.body ?? "{}").stream_options).toEqual({ include_usage: true });
    expect(usage[0]?.completion_tokens).toBe(5);
  });

  test("a 503 from one replica is retried on another; the client never sees it", async () => {
    const { post, usage, upstream } = router({
      routes: [
        route({ alias: "qwen", workerId: "sick", url: "http://sick.test" }),
        route({ alias: "qwen", workerId: "live", url: "http://live.test" }),
      ],
    });
    for (let index = 0; index < 6; index++) {
      const response = await post("/v1/chat/completions", chat());
      expect(response.status).toBe(200);
      await response.text();
    }
    expect(upstream.some((u) => u.url.startsWith("http://sick.test"))).toBe(true);
    expect(usage.map((r) => [r.status, r.worker_id])).toEqual(Array(6).fill([200, "live"]));
    // Each attempt carried the credential of the worker it went to, retries included.
    for (const u of upstream) {
      const worker = u.url.startsWith("http://sick.test") ? "sick" : "live";
      expect([u.url, u.headers.get("authorization")]).toEqual([
        u.url,
        `Bearer fa_agent-of-${worker}`,
      ]);
    }
  });

  test("no replica reachable: 502 after trying each once; all answering 503: the 503 with Retry-After", async () => {
    const down = router({
      routes: [
        route({ alias: "qwen", workerId: "down-1", url: "http://down.test" }),
        route({ alias: "qwen", workerId: "down-2", url: "http://down.test:81" }),
      ],
    });
    const unreachable = await down.post("/v1/chat/completions", chat());
    expect(unreachable.status).toBe(502);
    expect(((await unreachable.json()) as ErrorBody).error.code).toBe("upstream_error");
    expect(down.upstream.map((u) => new URL(u.url).host).sort()).toEqual([
      "down.test",
      "down.test:81",
    ]);
    expect(down.usage.map((r) => r.status)).toEqual([502]);

    const sick = router({
      routes: [route({ alias: "qwen", workerId: "sick", url: "http://sick.test" })],
    });
    const busy = await sick.post("/v1/chat/completions", chat());
    expect(busy.status).toBe(503);
    expect(busy.headers.get("retry-after")).toBe("1");
    expect(((await busy.json()) as ErrorBody).error.message).toBe("engine not ready");
  });

  test("a body that ends short of its Content-Length ends the response as a failure, and the replica is counted", async () => {
    const { post, usage, app } = router({
      routes: [route({ alias: "qwen", workerId: "short", url: "http://short.test" })],
      deps: { ejection: { after: 3 } },
    });
    // An event stream: the text so far, then vLLM's mid-stream error event and [DONE].
    const stream = await post("/v1/chat/completions", chat({ stream: true }));
    expect(stream.status).toBe(200);
    expect(stream.headers.get("content-length")).toBeNull();
    const seen = events(await stream.text());
    expect(seen.at(-1)).toBe("[DONE]");
    const error = JSON.parse(seen.at(-2) ?? "{}") as ErrorBody;
    expect(error.error).toMatchObject({ type: "server_error", code: 502 });
    // A small JSON answer is read whole before anything reaches the client: a plain 502.
    const small = await post("/v1/completions", { model: "qwen", prompt: "hi" });
    expect(small.status).toBe(502);
    expect(((await small.json()) as ErrorBody).error.message).toContain("malformed answer");
    // A large one is relayed as it comes: the client's read fails rather than ending on half
    // a document, and the lying length never reaches it.
    const large = await post("/v1/embeddings", { model: "qwen", input: "hi" });
    expect(large.status).toBe(200);
    expect(large.headers.get("content-length")).toBeNull();
    expect(large.text()).rejects.toThrow();
    await eventually(() => usage.length === 3);
    expect(usage.map((record) => record.status)).toEqual([502, 502, 502]);
    // Three broken answers in a row eject the replica (ejection.after = 3).
    const metrics = await (await app.request("/metrics")).text();
    expect(metric(metrics, "fleet_router_ejections_total", { worker_id: "short" })).toBe(1);
    expect(metric(metrics, "fleet_router_malformed_answers_total", { worker_id: "short" })).toBe(3);
  });

  test("endAll() ends an open stream with an error event and [DONE], closing a half-sent event first", async () => {
    const streams = new OpenStreams();
    const { post, usage } = router({
      routes: [route({ alias: "qwen", workerId: "endless", url: "http://endless.test" })],
      deps: { streams },
    });
    // The client asked for usage, so every byte passes through as it comes.
    const response = await post(
      "/v1/chat/completions",
      chat({ stream: true, stream_options: { include_usage: true } }),
    );
    expect(response.status).toBe(200);
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = "";
    while (!text.includes('"conte"') && !text.endsWith('"conte')) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    expect(streams.size).toBe(1);
    expect(streams.endAll()).toBe(1);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    expect(streams.size).toBe(0);
    // The half event is closed by a blank line, so the error event stands on its own.
    expect(text).toContain('"conte\n\ndata: {"error"');
    const seen = events(text);
    expect(seen.at(-1)).toBe("[DONE]");
    const error = JSON.parse(seen.at(-2) ?? "{}") as ErrorBody;
    expect(error.error).toMatchObject({ type: "server_error", code: 503 });
    expect(error.error.message).toContain("shutting down");
    await eventually(() => usage.length === 1);
    expect(usage[0]?.status).toBe(503);
  });

  test("an engine's 400 reaches the client as is and is not retried", async () => {
    const { post, upstream } = router({
      routes: [
        route({ alias: "qwen", workerId: "a", url: "http://live.test" }),
        route({ alias: "qwen", workerId: "b", url: "http://live.test:81" }),
      ],
    });
    const response = await post("/v1/chat/completions", chat({ max_tokens: 1_000_000 }));
    expect(response.status).toBe(400);
    expect(((await response.json()) as ErrorBody).error.message).toMatch(
      /maximum context length is 2048/,
    );
    expect(upstream).toHaveLength(1);
  });
});

describe("router app: what it refuses before any replica is asked", () => {
  test("API keys: none configured is open; once one exists, missing or wrong keys get 401", async () => {
    const key = "sk-fleet-app-test";
    const { post, usage, upstream } = router({
      apiKeys: [{ id: "key_1", key_hash: keyHash(key) }],
    });
    const missing = await post("/v1/chat/completions", chat());
    expect(missing.status).toBe(401);
    const wrong = await post("/v1/chat/completions", chat(), { authorization: "Bearer sk-nope" });
    expect(wrong.status).toBe(401);
    expect(((await wrong.json()) as ErrorBody).error).toMatchObject({
      type: "authentication_error",
      code: "invalid_api_key",
    });
    expect(upstream).toHaveLength(0);
    const ok = await post("/v1/chat/completions", chat(), { authorization: `Bearer ${key}` });
    expect(ok.status).toBe(200);
    await ok.text();
    expect(usage.map((r) => r.api_key_id)).toEqual(["key_1"]);
    const models = await router({ apiKeys: [{ id: "key_1", key_hash: keyHash(key) }] }).app.request(
      "/v1/models",
    );
    expect(models.status).toBe(401);
  });

  test("requireApiKey refuses a keyless request even when no key exists", async () => {
    const { post, upstream } = router({ deps: { requireApiKey: true } });
    expect((await post("/v1/chat/completions", chat())).status).toBe(401);
    expect(upstream).toHaveLength(0);
  });

  test("400 for a body that is not JSON, not an object, or has no model; the field is named", async () => {
    const { post, upstream } = router();
    const notJson = await post("/v1/chat/completions", "{nope");
    expect(notJson.status).toBe(400);
    expect(notJson.headers.get("x-request-id")).toMatch(/^[\w.:-]+$/);
    expect(((await notJson.json()) as ErrorBody).error.code).toBe("invalid_json");
    const array = await post("/v1/chat/completions", "[1,2]");
    expect(array.status).toBe(400);
    expect(((await array.json()) as ErrorBody).error.type).toBe("invalid_request_error");
    const noModel = await post("/v1/chat/completions", { messages: [] });
    expect(noModel.status).toBe(400);
    expect(((await noModel.json()) as ErrorBody).error.param).toBe("model");
    const badStream = await post("/v1/chat/completions", chat({ stream: "yes" }));
    expect(badStream.status).toBe(400);
    expect(((await badStream.json()) as ErrorBody).error.param).toBe("stream");
    expect(upstream).toHaveLength(0);
  });

  test("404 for an unknown model (param: model) and for an unknown path", async () => {
    const { app, post } = router();
    const model = await post("/v1/chat/completions", chat({ model: "nope" }));
    expect(model.status).toBe(404);
    expect(((await model.json()) as ErrorBody).error).toMatchObject({
      code: "model_not_found",
      param: "model",
    });
    const path = await app.request("/v1/nowhere");
    expect(path.status).toBe(404);
    expect(((await path.json()) as ErrorBody).error.code).toBe("not_found");
  });

  test("an unknown model's name is quoted up to 256 characters, not echoed whole", async () => {
    const { post } = router();
    const huge = `m${"x".repeat(1024 * 1024)}`;
    const response = await post("/v1/chat/completions", chat({ model: huge }));
    expect(response.status).toBe(404);
    const text = await response.text();
    expect(text.length).toBeLessThan(1024);
    const { error } = JSON.parse(text) as ErrorBody;
    expect(error.message).toContain(`\`${huge.slice(0, 256)}…\``);
    expect(error.code).toBe("model_not_found");
  });

  test("413 for a body over maxBodyBytes, declared or streamed", async () => {
    const { app, upstream } = router({ deps: { maxBodyBytes: 1024 } });
    const big = JSON.stringify(chat({ padding: "x".repeat(2048) }));
    const declared = await app.request("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json", "content-length": String(big.length) },
      body: big,
    });
    expect(declared.status).toBe(413);
    expect(((await declared.json()) as ErrorBody).error.code).toBe("payload_too_large");
    const bytes = new TextEncoder().encode(big);
    const streamed = await app.request("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: new ReadableStream<Uint8Array>({
        start(controller) {
          for (let at = 0; at < bytes.length; at += 256)
            controller.enqueue(bytes.slice(at, at + 256));
          controller.close();
        },
      }),
    });
    expect(streamed.status).toBe(413);
    expect(upstream).toHaveLength(0);
  });

  test("503 with Retry-After before the route table is loaded, and for a model with no ready replica", async () => {
    const empty = router({ loaded: false });
    const early = await empty.post("/v1/chat/completions", chat());
    expect(early.status).toBe(503);
    expect(early.headers.get("retry-after")).toBe("1");
    expect((await empty.app.request("/healthz")).status).toBe(503);

    const { post, usage, upstream } = router();
    const loading = await post("/v1/chat/completions", chat({ model: "loading" }));
    expect(loading.status).toBe(503);
    expect(((await loading.json()) as ErrorBody).error.code).toBe("no_ready_replica");
    expect(Number(loading.headers.get("retry-after"))).toBeGreaterThan(0);
    expect(upstream).toHaveLength(0);
    expect(usage.map((r) => [r.alias, r.status, r.worker_id])).toEqual([["loading", 503, null]]);
  });

  test("/v1/models lists only aliases with a ready replica, with max_model_len as vLLM's card has it", async () => {
    const { app } = router({
      routes: [
        route({ alias: "qwen", workerId: "live", url: "http://live.test", maxModelLen: 8192 }),
        route({ alias: "bare", workerId: "live", url: "http://live.test" }),
        route({ alias: "loading", workerId: "live", url: "http://live.test", ready: false }),
      ],
    });
    const response = await app.request("/v1/models");
    const body = (await response.json()) as {
      object: string;
      data: { id: string; max_model_len?: number }[];
    };
    expect(body.object).toBe("list");
    expect(body.data.map((model) => model.id)).toEqual(["bare", "qwen"]);
    expect(body.data.find((model) => model.id === "qwen")?.max_model_len).toBe(8192);
    // Registered without one: the engine's own default, which the router does not know.
    expect(body.data.find((model) => model.id === "bare")).not.toHaveProperty("max_model_len");
  });
});

describe("router app: token counts it cannot trust", () => {
  /** A replica that answers every request with `usage` as given, as JSON or as a stream. */
  const hostile = (usage: Record<string, unknown>) => {
    const metrics = new Metrics();
    const records: UsageRecord[] = [];
    const app = createApp({
      routes: {
        current: () => ({
          version: "1",
          routes: [
            route({ alias: "bad", workerId: "evil", url: "http://evil.test", maxModelLen: 4096 }),
          ],
          api_keys: [],
        }),
      },
      usage: { record: (record) => records.push(record) },
      metrics,
      fetch: async (input, init) => {
        const request = new Request(input, init);
        const body = JSON.parse(await request.text()) as { stream?: boolean };
        const answer = { id: "x", object: "chat.completion", choices: [], usage };
        if (!body.stream) return Response.json(answer);
        return new Response(`data: ${JSON.stringify(answer)}\n\ndata: [DONE]\n\n`, {
          headers: { "content-type": "text/event-stream" },
        });
      },
    });
    const post = (body: unknown, path = "/v1/chat/completions") =>
      app.request(path, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    return { post, records, metrics };
  };
  const rejected = (metrics: Metrics, field: string) =>
    metric(metrics.render(), "fleet_router_usage_values_rejected_total", { field }) || 0;

  test("absurd, negative, float and string counts are recorded as null and counted by field", async () => {
    for (const stream of [false, true]) {
      const cases: [unknown, unknown][] = [
        [3e9, 5],
        [-7, 5],
        [1.5, 5],
        ["12", 5],
        [12, 4097], // past the model's max_model_len of 4096
      ];
      for (const [prompt, completion] of cases) {
        const t = hostile({ prompt_tokens: prompt, completion_tokens: completion });
        const response = await t.post({ model: "bad", messages: [], stream });
        await response.text();
        const valid = (value: unknown) =>
          typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= 4096;
        expect(t.records).toHaveLength(1);
        expect(t.records[0]?.prompt_tokens).toBe(valid(prompt) ? (prompt as number) : null);
        expect(t.records[0]?.completion_tokens).toBe(
          valid(completion) ? (completion as number) : null,
        );
        expect(rejected(t.metrics, "prompt_tokens")).toBe(valid(prompt) ? 0 : 1);
        expect(rejected(t.metrics, "completion_tokens")).toBe(valid(completion) ? 0 : 1);
      }
    }
  });

  test("n choices of a batch of prompts widen the bound; the client still sees the answer as sent", async () => {
    const t = hostile({ prompt_tokens: 2 * 4096, completion_tokens: 2 * 3 * 4096 });
    const response = await t.post({ model: "bad", prompt: ["a", "b"], n: 3 }, "/v1/completions");
    expect(((await response.json()) as { usage: unknown }).usage).toEqual({
      prompt_tokens: 2 * 4096,
      completion_tokens: 2 * 3 * 4096,
    });
    expect(t.records[0]?.prompt_tokens).toBe(2 * 4096);
    expect(t.records[0]?.completion_tokens).toBe(2 * 3 * 4096);
  });
});

describe("router app: a conversation's opening under prefix_affinity", () => {
  const system = { role: "system", content: "You are a terse assistant." };
  const opening = [system, { role: "user", content: "plan my week" }];
  const continuation = [
    ...opening,
    { role: "assistant", content: "Sure." },
    { role: "user", content: "and Monday?" },
  ];

  /**
   * Two replicas of `qwen` under `routing`; a request whose last message says "hold" waits at
   * its replica until `release()`, so that replica has one more request in flight.
   */
  function twoReplicas(routing: RouteEntry["routing"]) {
    let release = () => {};
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const routes = ["a", "b"].map((workerId) =>
      route({ alias: "qwen", workerId, url: `http://${workerId}.test`, routing }),
    );
    const served: string[] = [];
    const made = router({
      routes,
      deps: {
        fetch: async (input, init) => {
          const request = new Request(input, init);
          served.push(new URL(request.url).hostname);
          if ((await request.clone().text()).includes("hold")) await released;
          return sim.fetch(request);
        },
      },
    });
    /** Answers its status once the body is read (a relayed answer holds its replica until then). */
    const send = async (messages: unknown[], headers: Record<string, string> = {}) => {
      const response = await made.post("/v1/chat/completions", chat({ messages }), headers);
      await response.text();
      return response.status;
    };
    return { served, release, send };
  }

  test("with its home one request busier, an opening goes to the idle replica; its later turns stay home", async () => {
    const { served, release, send } = twoReplicas("prefix_affinity");
    // Idle replicas: the opening goes where its key ranks first, as a continuation would.
    expect(await send(opening)).toBe(200);
    expect(await send(continuation)).toBe(200);
    const home = served[0] as string;
    expect(served[1]).toBe(home);
    // One request held at home (a continuation, so it stays home).
    const held = send([...continuation, { role: "user", content: "hold" }]);
    await eventually(() => served.length === 3, { what: "the held request to reach a replica" });
    expect(served[2]).toBe(home);
    // Within the load bound a continuation keeps its warm replica; an opening has nothing
    // cached there and takes the idle one.
    expect(await send(continuation)).toBe(200);
    expect(served[3]).toBe(home);
    expect(await send(opening)).toBe(200);
    expect(served[4]).not.toBe(home);
    release();
    expect(await held).toBe(200);
  });

  test("under session affinity an opening stays with its session like any other turn", async () => {
    const { served, release, send: sendAny } = twoReplicas("session");
    const send = (messages: unknown[]) => sendAny(messages, { "x-session-id": "s-1" });
    expect(await send(opening)).toBe(200);
    const home = served[0] as string;
    const held = send([...opening, { role: "user", content: "hold" }]);
    await eventually(() => served.length === 2, { what: "the held request to reach a replica" });
    expect(await send(opening)).toBe(200);
    expect(served[2]).toBe(home);
    release();
    expect(await held).toBe(200);
  });
});

describe("router app: web pages on other origins (CORS_ORIGINS)", () => {
  const page = "https://playground.example";

  test("with every origin allowed, a page's preflight is granted and its answers, streamed or not, are readable", async () => {
    const { app, post } = router({ deps: { cors: new Cors("*") } });
    for (const path of [
      "/v1/chat/completions",
      "/v1/completions",
      "/v1/embeddings",
      "/v1/models",
    ]) {
      const preflight = await app.request(path, {
        method: "OPTIONS",
        headers: {
          origin: page,
          "access-control-request-method": "POST",
          "access-control-request-headers": "authorization, content-type",
        },
      });
      expect({ path, status: preflight.status }).toEqual({ path, status: 204 });
      expect(preflight.headers.get("access-control-allow-origin")).toBe("*");
      expect(preflight.headers.get("access-control-allow-headers")).toBe(
        "authorization, content-type",
      );
    }
    const whole = await post("/v1/chat/completions", chat(), { origin: page });
    expect(whole.status).toBe(200);
    expect(whole.headers.get("access-control-allow-origin")).toBe("*");
    expect(whole.headers.get("access-control-expose-headers")).toContain("x-request-id");
    const streamed = await post("/v1/chat/completions", chat({ stream: true }), { origin: page });
    expect(streamed.headers.get("access-control-allow-origin")).toBe("*");
    expect(events(await streamed.text()).at(-1)).toBe("[DONE]");
    // Errors too, or the page could not read why it was refused.
    const unknown = await post("/v1/chat/completions", chat({ model: "nope" }), { origin: page });
    expect(unknown.status).toBe(404);
    expect(unknown.headers.get("access-control-allow-origin")).toBe("*");
    const models = await app.request("/v1/models", { headers: { origin: page } });
    expect(models.headers.get("access-control-allow-origin")).toBe("*");
    const nowhere = await app.request("/v1/nowhere", { headers: { origin: page } });
    expect(nowhere.status).toBe(404);
    expect(nowhere.headers.get("access-control-allow-origin")).toBe("*");
    // A request without Origin (not a browser's) is answered as before.
    const plain = await post("/v1/chat/completions", chat());
    expect(plain.status).toBe(200);
    expect(plain.headers.has("access-control-allow-origin")).toBe(false);
  });

  test("with a list, only the listed origins may read; without CORS, no preflight is answered", async () => {
    const listed = router({ deps: { cors: new Cors(new Set([page])) } });
    const mine = await listed.post("/v1/chat/completions", chat(), { origin: page });
    expect(mine.headers.get("access-control-allow-origin")).toBe(page);
    expect(mine.headers.get("vary")).toContain("origin");
    const theirs = await listed.post("/v1/chat/completions", chat(), {
      origin: "https://elsewhere.example",
    });
    expect(theirs.status).toBe(200);
    expect(theirs.headers.has("access-control-allow-origin")).toBe(false);

    const closed = router();
    const preflight = await closed.app.request("/v1/chat/completions", {
      method: "OPTIONS",
      headers: { origin: page, "access-control-request-method": "POST" },
    });
    expect(preflight.status).toBe(404);
    expect(preflight.headers.has("access-control-allow-origin")).toBe(false);
    const answer = await closed.post("/v1/chat/completions", chat(), { origin: page });
    expect(answer.headers.has("access-control-allow-origin")).toBe(false);
  });
});

describe("router app: rerank and score (vLLM's pooling endpoints)", () => {
  const documents = [
    "The weather in Lisbon is mild in winter.",
    "Paris is the capital of France.",
    "The capital of Spain is Madrid.",
  ];

  test("a rerank is forwarded as it came and answered in vLLM's shape; its tokens are recorded as prompt tokens", async () => {
    const { post, usage, upstream } = router();
    const response = await post("/v1/rerank", {
      model: "qwen",
      query: "What is the capital of France?",
      documents,
      top_n: 2,
      // Not a streaming endpoint: a stray flag changes nothing.
      stream: true,
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toContain("application/json");
    const body = (await response.json()) as {
      usage: { total_tokens: number };
      results: { index: number; document: { text: string }; relevance_score: number }[];
    };
    expect(body.results.map((result) => result.index)).toEqual([1, 2]);
    expect(body.results[0]?.document.text).toBe(documents[1]);
    expect(upstream.map((u) => u.url)).toEqual(["http://live.test/proxy/qwen/v1/rerank"]);
    expect(JSON.parse(upstream[0]?.body ?? "{}")).toMatchObject({ top_n: 2, stream: true });
    expect(usage).toEqual([
      expect.objectContaining({
        alias: "qwen",
        status: 200,
        stream: false,
        prompt_tokens: body.usage.total_tokens,
        completion_tokens: null,
      }),
    ]);
    expect(body.usage.total_tokens).toBeGreaterThan(0);
  });

  test("a rerank answer read whole whose results run past the tail still has its usage read (vLLM puts it first)", async () => {
    const { post, usage } = router({
      routes: [
        route({ alias: "qwen", workerId: "live", url: "http://framed.test", maxModelLen: 100_000 }),
      ],
    });
    const long = Array.from({ length: 40 }, (_, i) => `document ${i} ${"words ".repeat(100)}`);
    const response = await post("/v1/rerank", {
      model: "qwen",
      query: "document 7",
      documents: long,
    });
    const text = await response.text();
    expect(response.status).toBe(200);
    expect(text.length).toBeGreaterThan(16 * 1024);
    const { usage: reported } = JSON.parse(text) as { usage: { total_tokens: number } };
    expect(usage[0]?.prompt_tokens).toBe(reported.total_tokens);
  });

  test("a score is answered in vLLM's shape, its prompt tokens recorded; mismatched lists are the engine's 400", async () => {
    const { post, usage } = router();
    const response = await post("/v1/score", {
      model: "qwen",
      text_1: "capital of France",
      text_2: documents,
    });
    expect(response.status).toBe(200);
    const body = (await response.json()) as {
      object: string;
      data: { index: number; score: number }[];
      usage: { prompt_tokens: number; completion_tokens: number };
    };
    expect(body.object).toBe("list");
    expect(body.data.map((item) => item.index)).toEqual([0, 1, 2]);
    // "capital of France" reads best with the document that says it.
    const best = [...body.data].sort((a, b) => b.score - a.score)[0];
    expect(best?.index).toBe(1);
    expect(usage[0]).toMatchObject({
      prompt_tokens: body.usage.prompt_tokens,
      completion_tokens: 0,
    });
    const mismatched = await post("/v1/score", {
      model: "qwen",
      text_1: ["a", "b"],
      text_2: ["c"],
    });
    expect(mismatched.status).toBe(400);
    expect(((await mismatched.json()) as OpenAiErrorBody).error.message).toContain("text_1");
    const unknown = await post("/v1/rerank", { model: "nope", query: "q", documents: ["d"] });
    expect(unknown.status).toBe(404);
  });
});

type OpenAiErrorBody = { error: { message: string } };

describe("router app: the Responses API", () => {
  test("a whole response is forwarded and its input and output tokens recorded", async () => {
    const { post, usage, upstream } = router();
    const response = await post("/v1/responses", {
      model: "qwen",
      instructions: "Be brief.",
      input: [{ role: "user", content: "say this" }],
    });
    expect(response.status).toBe(200);
    const body = (await response.json()) as {
      object: string;
      output: { content: { text: string }[] }[];
      usage: { input_tokens: number; output_tokens: number };
    };
    expect(body.object).toBe("response");
    expect(body.output[0]?.content[0]?.text).toBe("say this");
    expect(upstream.map((u) => u.url)).toEqual(["http://live.test/proxy/qwen/v1/responses"]);
    expect(usage).toEqual([
      expect.objectContaining({
        status: 200,
        stream: false,
        prompt_tokens: body.usage.input_tokens,
        completion_tokens: body.usage.output_tokens,
      }),
    ]);
  });

  test("a streamed response passes through event for event (no stream_options added), its usage read from response.completed", async () => {
    const { post, usage, upstream } = router();
    const response = await post("/v1/responses", {
      model: "qwen",
      input: "stream me",
      stream: true,
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toContain("text/event-stream");
    const text = await response.text();
    // Sent as the client wrote it: the Responses API has no stream_options.
    expect(JSON.parse(upstream[0]?.body ?? "{}")).not.toHaveProperty("stream_options");
    const types = [...text.matchAll(/^event: (\S+)$/gm)].map((match) => match[1]);
    expect(types[0]).toBe("response.created");
    expect(types.at(-1)).toBe("response.completed");
    expect(text).not.toContain("[DONE]");
    const completed = text
      .split("\n\n")
      .find((event) => event.startsWith("event: response.completed"));
    const data = JSON.parse(completed?.split("\ndata: ")[1] ?? "{}") as {
      response: { usage: { input_tokens: number; output_tokens: number } };
    };
    await eventually(() => usage.length === 1);
    expect(usage[0]).toMatchObject({
      status: 200,
      stream: true,
      prompt_tokens: data.response.usage.input_tokens,
      completion_tokens: data.response.usage.output_tokens,
    });
  });
});
