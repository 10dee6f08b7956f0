import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { WorkerService } from "../../agent/service.ts";
import { eventually } from "../../devkit/net.ts";
import { createLogger } from "../../kit/log.ts";
import {
  formatLoadHeader,
  LOAD_HEADER,
  parseLoadHeader,
  parseVllmMetrics,
} from "../../protocol/load.ts";
import { call, enginePortRange, joinedDataDir, StubManager, simPath, simVllm } from "./helpers.ts";

setDefaultTimeout(30_000);

describe("vLLM metrics across versions", () => {
  test("0.11 names with labels and _total counters", () => {
    const sample = parseVllmMetrics(
      [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="llama"} 3.0',
        'vllm:num_requests_waiting{engine="0",model_name="llama"} 2.0',
        'vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.42',
        'vllm:prefix_cache_queries_total{engine="0",model_name="llama"} 1000.0',
        'vllm:prefix_cache_hits_total{engine="0",model_name="llama"} 750.0',
        'vllm:time_to_first_token_seconds_bucket{engine="0",model_name="llama",le="0.1"} 5.0',
      ].join("\n"),
    );
    expect(sample).toEqual({
      running: 3,
      waiting: 2,
      kv: 0.42,
      prefixQueries: 1000,
      prefixHits: 750,
    });
  });

  test("older names: gpu_cache_usage_perc, gpu_prefix_cache_* without _total, no labels", () => {
    const sample = parseVllmMetrics(
      [
        "vllm:num_requests_running 1",
        "vllm:num_requests_waiting 0",
        "vllm:gpu_cache_usage_perc 0.5",
        "vllm:gpu_prefix_cache_queries 40",
        "vllm:gpu_prefix_cache_hits 10",
      ].join("\n"),
    );
    expect(sample).toEqual({ running: 1, waiting: 0, kv: 0.5, prefixQueries: 40, prefixHits: 10 });
  });

  test("the new usage name wins over the deprecated one; data-parallel engines are summed", () => {
    const sample = parseVllmMetrics(
      [
        'vllm:num_requests_running{engine="0",model_name="m"} 2',
        'vllm:num_requests_running{engine="1",model_name="m"} 4',
        'vllm:num_requests_waiting{engine="0",model_name="m"} 1',
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2',
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.4',
        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.9',
      ].join("\n"),
    );
    expect(sample?.running).toBe(6);
    expect(sample?.waiting).toBe(1);
    expect(sample?.kv).toBeCloseTo(0.3, 9);
    expect(sample?.prefixQueries).toBeNull();
  });

  test("a page without the request gauges is not vLLM's", () => {
    expect(parseVllmMetrics("process_cpu_seconds_total 3\n")).toBeNull();
  });

  test("the load header: format, parse, and malformed values rejected", () => {
    const load = { running: 3, waiting: 0, kv: 0.4242, hit: 0.815 };
    expect(formatLoadHeader(load)).toBe("r=3;w=0;kv=0.42;hit=0.82");
    expect(parseLoadHeader("r=3;w=0;kv=0.42;hit=0.82")).toEqual({
      running: 3,
      waiting: 0,
      kv: 0.42,
      hit: 0.82,
    });
    expect(parseLoadHeader("r=1;w=2")).toEqual({ running: 1, waiting: 2, kv: 0, hit: null });
    expect(parseLoadHeader("r=1;w=2;future=7")?.waiting).toBe(2);
    for (const bad of ["", "r=1", "w=1;kv=0", "r=-1;w=0", "r=x;w=0", "r=1;w=0;;", "garbage"])
      expect(parseLoadHeader(bad)).toBeNull();
  });
});

describe("agent engine load", () => {
  const token = "fa_load-test-agent-credential";
  let stub: StubManager;
  let agent: WorkerService;
  const held: AbortController[] = [];

  beforeAll(async () => {
    stub = await new StubManager().start();
    agent = new WorkerService({
      workerId: "load-test",
      listenHost: "127.0.0.1",
      listenPort: 0,
      managerUrl: stub.url,
      fleetToken: "load-test-join-token",
      dataDir: joinedDataDir({ workerId: "load-test", managerUrl: stub.url, agentToken: token }),
      vllmBin: simVllm,
      enginePorts: await enginePortRange(),
      healthPollMs: 50,
      loadPollMs: 50,
      stopGraceMs: 2000,
      engineEnv: { ...process.env, PATH: simPath },
      log: createLogger({ service: "agent", level: "error" }),
    });
    await agent.run();
    const res = await call(`${agent.url}/v1/instances`, {
      body: {
        alias: "busy",
        model_name: "m/busy",
        extra_args: ["--max-num-seqs", "1", "--inter-token-latency", "50"],
      },
      token,
    });
    expect(res.status).toBe(202);
    await eventually(
      async () => (await call(`${agent.url}/v1/instances/busy`, { token })).json.status === "ready",
      { what: "busy ready" },
    );
  });

  afterAll(async () => {
    for (const controller of held) controller.abort();
    await agent.stop();
    await stub.stop();
  });

  test("proxied answers carry the engine's running and waiting; heartbeats carry the load", async () => {
    const proxy = `${agent.url}/proxy/busy/v1`;
    const models = () =>
      fetch(`${proxy}/models`, { headers: { authorization: `Bearer ${token}` } });
    await eventually(
      async () => (await models()).headers.get(LOAD_HEADER)?.startsWith("r=0;w=0;"),
      {
        what: "an idle engine's load on a proxied answer",
      },
    );
    // One stream runs (--max-num-seqs 1) and two wait, for ~10 s each.
    for (let i = 0; i < 3; i++) {
      const controller = new AbortController();
      held.push(controller);
      fetch(`${proxy}/chat/completions`, {
        method: "POST",
        signal: controller.signal,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: "busy",
          messages: [{ role: "user", content: `hold ${i}` }],
          max_tokens: 200,
          ignore_eos: true,
          stream: true,
        }),
      }).catch(() => {});
    }
    await eventually(
      async () => parseLoadHeader((await models()).headers.get(LOAD_HEADER))?.waiting === 2,
      { what: "r=1;w=2 on a proxied answer" },
    );
    expect(parseLoadHeader((await models()).headers.get(LOAD_HEADER))?.running).toBe(1);
    await eventually(
      () =>
        stub.heartbeats.at(-1)?.body.instances.find((i) => i.alias === "busy")?.load?.waiting === 2,
      { what: "a heartbeat with the engine's queue" },
    );
    for (const controller of held) controller.abort();
    await eventually(
      async () => parseLoadHeader((await models()).headers.get(LOAD_HEADER))?.running === 0,
      { what: "load back to idle after the aborts" },
    );
  });
});
