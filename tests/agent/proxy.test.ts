import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { WorkerService } from "../../agent/service.ts";
import { metric } from "../../devkit/metrics.ts";
import { eventually } from "../../devkit/net.ts";
import { repoRoot } from "../../devkit/proc.ts";
import { createLogger } from "../../kit/log.ts";
import { call, enginePortRange, joinedDataDir, simPath, simVllm } from "./helpers.ts";

// Real processes on a shared 2-core machine: give each test room (bunfig's timeout is not applied).
setDefaultTimeout(30_000);

/** The agent credential the manager issued when this agent joined. */
const token = "fa_proxy-test-agent-credential";
const managerUrl = "http://127.0.0.1:9";
const auth = { authorization: `Bearer ${token}`, "content-type": "application/json" };
const agents: WorkerService[] = [];
let base: string;
/** alias → the engine's own loopback URL, to compare the proxy with the engine direct. */
const direct: Record<string, string> = {};

async function newAgent(vllmBin: string): Promise<WorkerService> {
  const agent = new WorkerService({
    workerId: "proxy-test",
    listenHost: "127.0.0.1",
    listenPort: 0,
    managerUrl,
    fleetToken: "proxy-test-join-token",
    dataDir: joinedDataDir({ workerId: "proxy-test", managerUrl, agentToken: token }),
    vllmBin,
    enginePorts: await enginePortRange(),
    healthPollMs: 50,
    stopGraceMs: 2000,
    engineEnv: { ...process.env, PATH: simPath },
    log: createLogger({ service: "agent", level: "error" }),
  });
  agents.push(agent);
  await agent.run();
  return agent;
}

async function launch(url: string, alias: string, extra_args: string[] = []) {
  const res = await call(`${url}/v1/instances`, {
    body: { alias, model_name: `m/${alias}`, extra_args },
    token,
  });
  expect(res.status).toBe(202);
  direct[alias] = `http://127.0.0.1:${res.json.port}`;
  return res.json;
}

async function ready(url: string, alias: string) {
  await eventually(
    async () => (await call(`${url}/v1/instances/${alias}`, { token })).json.status === "ready",
    {
      what: `${alias} ready`,
    },
  );
}

/** Response ids and timestamps differ per request; everything else must match byte for byte. */
function normalized(text: string): string {
  return text.replace(/"id":"[^"]*"/g, '"id":"X"').replace(/"created":\d+/g, '"created":0');
}

beforeAll(async () => {
  const agent = await newAgent(simVllm);
  base = agent.url;
  await launch(base, "echo");
  await launch(base, "slow-tokens", ["--inter-token-latency", "100"]);
  await launch(base, "loading", ["--startup-delay", "60000"]);
  await launch(base, "keyed", ["--api-key", token]);
  await Promise.all(["echo", "slow-tokens", "keyed"].map((alias) => ready(base, alias)));
});

afterAll(async () => {
  await Promise.all(agents.map((agent) => agent.stop()));
});

describe("agent /proxy", () => {
  test("passes non-streamed answers through unchanged", async () => {
    const requests: [string, string, unknown][] = [
      ["POST", "completions", { model: "echo", prompt: "the quick brown fox", max_tokens: 8 }],
      [
        "POST",
        "chat/completions",
        { model: "echo", messages: [{ role: "user", content: "hello there" }] },
      ],
      ["POST", "embeddings", { model: "echo", input: ["a", "b"] }],
      ["GET", "models", undefined],
    ];
    for (const [method, path, body] of requests) {
      const init = {
        method,
        headers: auth,
        body: body === undefined ? undefined : JSON.stringify(body),
      };
      const viaProxy = await fetch(`${base}/proxy/echo/v1/${path}`, init);
      const viaEngine = await fetch(`${direct.echo}/v1/${path}`, init);
      const [proxied, straight] = [await viaProxy.text(), await viaEngine.text()];
      expect({ path, status: viaProxy.status }).toEqual({ path, status: viaEngine.status });
      expect(viaProxy.headers.get("content-type")).toBe(viaEngine.headers.get("content-type"));
      expect(normalized(proxied)).toBe(normalized(straight));
    }
  });

  test("streams each chunk as the engine sends it, byte for byte", async () => {
    const body = JSON.stringify({
      model: "slow-tokens",
      messages: [{ role: "user", content: "one two three four five six seven eight nine ten" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    const started = performance.now();
    const response = await fetch(`${base}/proxy/slow-tokens/v1/chat/completions`, {
      method: "POST",
      headers: auth,
      body,
    });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toContain("text/event-stream");
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = "";
    let firstChunkAt = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (firstChunkAt === 0) firstChunkAt = performance.now();
      text += decoder.decode(value, { stream: true });
    }
    const endedAt = performance.now();
    // ~10 tokens at 100 ms each: a buffering proxy would deliver everything at the end.
    expect(endedAt - firstChunkAt).toBeGreaterThan(400);
    expect(firstChunkAt - started).toBeLessThan(endedAt - started - 400);
    expect(text.endsWith("data: [DONE]\n\n")).toBe(true);
    const straight = await fetch(`${direct["slow-tokens"]}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    }).then((r) => r.text());
    expect(normalized(text)).toBe(normalized(straight));
  });

  test("a client that goes away aborts the engine's request", async () => {
    const metricsUrl = `${direct["slow-tokens"]}/metrics`;
    const aborted = async () =>
      metric(await fetch(metricsUrl).then((r) => r.text()), "vllm:request_success_total", {
        finished_reason: "abort",
      });
    const before = await aborted();
    const controller = new AbortController();
    const response = await fetch(`${base}/proxy/slow-tokens/v1/completions`, {
      method: "POST",
      headers: auth,
      body: JSON.stringify({
        model: "slow-tokens",
        prompt: "go on",
        max_tokens: 500,
        ignore_eos: true,
        stream: true,
      }),
      signal: controller.signal,
    });
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    const running = metric(
      await fetch(metricsUrl).then((r) => r.text()),
      "vllm:num_requests_running",
    );
    expect(running).toBe(1);
    controller.abort();
    await eventually(async () => (await aborted()) === before + 1, {
      what: "the engine to count an abort",
    });
    const after = metric(
      await fetch(metricsUrl).then((r) => r.text()),
      "vllm:num_requests_running",
    );
    expect(after).toBe(0);
  });

  test("the client's Authorization never reaches the engine", async () => {
    // This engine demands the agent credential as its own API key; the proxy must not hand
    // it over.
    const res = await fetch(`${base}/proxy/keyed/v1/models`, { headers: auth });
    expect(res.status).toBe(401);
    const withKey = await fetch(`${direct.keyed}/v1/models`, { headers: auth });
    expect(withKey.status).toBe(200);
  });

  test("unknown alias, loading engine and paths off the allowlist answer in OpenAI's shape", async () => {
    const unknown = await fetch(`${base}/proxy/nope/v1/chat/completions`, {
      method: "POST",
      headers: auth,
      body: "{}",
    });
    expect(unknown.status).toBe(404);
    expect((await unknown.json()).error).toMatchObject({
      code: "model_not_found",
      type: "not_found_error",
    });

    const loading = await fetch(`${base}/proxy/loading/v1/chat/completions`, {
      method: "POST",
      headers: auth,
      body: "{}",
    });
    expect(loading.status).toBe(503);
    expect(Number(loading.headers.get("retry-after"))).toBeGreaterThan(0);
    expect((await loading.json()).error).toMatchObject({ code: "not_ready", type: "server_error" });

    for (const path of [
      "/proxy/echo/v1/tokenize",
      "/proxy/echo/metrics",
      "/proxy/echo/v1/../health",
      "/proxy/echo/v1/chat/completions/x",
    ]) {
      const res = await fetch(`${base}${path}`, { method: "POST", headers: auth, body: "{}" });
      expect({ path, status: res.status }).toEqual({ path, status: 404 });
      expect((await res.json()).error.type).toBe("not_found_error");
    }
    const wrongMethod = await fetch(`${base}/proxy/echo/v1/chat/completions`, { headers: auth });
    expect(wrongMethod.status).toBe(405);
    expect((await wrongMethod.json()).error.code).toBe("method_not_allowed");
  });

  test("hop-by-hop headers are dropped both ways; end-to-end headers pass", async () => {
    const agent = await newAgent(`${repoRoot}/tests/agent/fixtures/fake-vllm`);
    await launch(agent.url, "headers", ["--hop-headers"]);
    await ready(agent.url, "headers");
    const res = await fetch(`${agent.url}/proxy/headers/v1/models`, {
      headers: {
        ...auth,
        connection: "keep-alive, x-client-hop",
        "x-client-hop": "secret",
        "keep-alive": "timeout=5",
        "x-request-id": "req-123",
      },
    });
    expect(res.status).toBe(200);
    const { received } = (await res.json()) as { received: Record<string, string> };
    expect(received["x-request-id"]).toBe("req-123");
    expect(received.authorization).toBeUndefined();
    expect(received["x-client-hop"]).toBeUndefined();
    expect(received["keep-alive"]).toBeUndefined();
    expect(res.headers.get("x-engine-internal")).toBeNull();
    expect(res.headers.get("keep-alive")).toBeNull();
    expect(res.headers.get("content-type")).toContain("application/json");
  });

  test("an engine that stops answering gives 502", async () => {
    const agent = await newAgent(`${repoRoot}/tests/agent/fixtures/fake-vllm`);
    await launch(agent.url, "vanishing", ["--close-after-ready"]);
    await ready(agent.url, "vanishing");
    await eventually(
      () => agent.supervisor.get("vanishing")?.logs.tail(5).includes("stopped listening"),
      { what: "the fake engine to close its socket" },
    );
    const res = await fetch(`${agent.url}/proxy/vanishing/v1/models`, { headers: auth });
    expect(res.status).toBe(502);
    expect((await res.json()).error).toMatchObject({
      code: "upstream_error",
      type: "server_error",
    });
  });
});
