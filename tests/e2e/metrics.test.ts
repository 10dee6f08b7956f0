import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import { type Running, type RunningAgent, startAgent, startManager } from "../../devkit/fleet.ts";
import { type MetricsPage, metric, scrape } from "../../devkit/metrics.ts";
import { eventually } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import type { InstanceList, ModelInfo } from "../../protocol/index.ts";
import { labelsUsed, promQueries } from "../db/grafana-dashboard.ts";

// Real processes on a shared 2-core machine.
setDefaultTimeout(90_000);

const FLEET_TOKEN = "fleet-join-token-metrics";
const ADMIN_TOKEN = "admin-token-metrics";
const METRICS_TOKEN = "metrics-token-metrics";
const MiB = 1024 * 1024;
const GPU_MIB = 81_559;

/**
 * The manager's and an agent's /metrics across real processes, behind their tokens, following
 * what really happens: a model placed and loaded on the simulator, a request served, the
 * engine killed and restarted by its agent.
 */
describe(`fleet metrics across processes (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  let manager: Running;
  let agent: RunningAgent;
  let managerPage: MetricsPage;
  let agentPage: MetricsPage;

  const api = async <T>(method: string, path: string, body?: unknown) => {
    const response = await fetch(`${manager.url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${ADMIN_TOKEN}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, body: (text ? JSON.parse(text) : null) as T };
  };

  beforeAll(async () => {
    database = await createTestDatabase();
    manager = await startManager({
      database,
      env: { FLEET_TOKEN, ADMIN_TOKEN, METRICS_TOKEN, PROBE_INTERVAL_S: "1" },
    });
    agent = await startAgent({
      managerUrl: manager.url,
      workerId: "metered",
      env: {
        FLEET_TOKEN,
        SIM_GPUS: `1x NVIDIA H100 80GB HBM3:${GPU_MIB}`,
        SIM_GPU_USED_MIB: "0:2048",
        ENGINE_LOAD_POLL_MS: "200",
        ENGINE_RESTART_BACKOFF_S: "0.2",
      },
    });
    const credentials = await eventually(() => agent.credentials(), { what: "the agent to join" });
    managerPage = { url: `${manager.url}/metrics`, token: METRICS_TOKEN };
    agentPage = { url: `${agent.url}/metrics`, token: credentials.agent_token };
  });
  afterAll(async () => {
    await stopAll();
    await database?.destroy();
  });

  test("each /metrics refuses a caller without its token, in OpenAI's shape", async () => {
    for (const page of [`${manager.url}/metrics`, `${agent.url}/metrics`]) {
      const refused = await fetch(page);
      expect(refused.status).toBe(401);
      const body = (await refused.json()) as { error: { code: string } };
      expect(body.error.code).toBe("unauthorized");
    }
    // The admin token opens the manager's page but is no credential on a worker host.
    const withAdmin = (url: string) =>
      fetch(url, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect((await withAdmin(`${manager.url}/metrics`)).status).toBe(200);
    expect((await withAdmin(`${agent.url}/metrics`)).status).toBe(401);
  });

  test("engine state, GPU claims, load, requests and a restart show as they happen", async () => {
    const placed = await api("POST", "/v1/models/register", {
      alias: "meter",
      model_name: "org/meter",
      gpu_memory_utilization: 0.5,
    });
    expect(placed.status).toBe(201);
    await eventually(
      async () => (await api<ModelInfo>("GET", "/v1/models/meter")).body.status === "ready",
      { what: "the model to be ready", timeoutMs: 30_000 },
    );

    const ready = await eventually(
      async () => {
        const text = await scrape(agentPage);
        return metric(text, "fleet_agent_engines", { alias: "meter", state: "ready" }) === 1 &&
          metric(text, "fleet_agent_engine_requests_running", { alias: "meter" }) === 0
          ? text
          : undefined;
      },
      { what: "the agent to show the engine ready with its load" },
    );
    expect(metric(ready, "fleet_agent_engines", { alias: "meter", state: "starting" })).toBeNaN();
    expect(metric(ready, "fleet_agent_engine_restarts_total", { alias: "meter" })).toBe(0);
    expect(metric(ready, "fleet_agent_gpu_memory_total_bytes", { gpu: "0" })).toBe(GPU_MIB * MiB);
    expect(metric(ready, "fleet_agent_gpu_memory_used_bytes", { gpu: "0" })).toBe(2048 * MiB);
    expect(metric(ready, "fleet_agent_gpu_memory_claimed_bytes", { gpu: "0" })).toBe(
      Math.round(0.5 * GPU_MIB * MiB),
    );
    expect(metric(ready, "fleet_agent_engine_kv_cache_usage_ratio", { alias: "meter" })).toBe(0);

    const chat = await fetch(`${manager.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "meter", messages: [{ role: "user", content: "hello" }] }),
    });
    expect(chat.status).toBe(200);
    await chat.text();
    const served = await eventually(
      async () => {
        const text = await scrape(agentPage);
        return metric(text, "fleet_agent_engine_prefix_cache_queries_total", { alias: "meter" }) > 0
          ? text
          : undefined;
      },
      { what: "the engine's prefix-cache counters to move" },
    );
    expect(
      metric(served, "fleet_agent_proxy_requests_total", { alias: "meter", status: "200" }),
    ).toBe(1);
    const tokens = await eventually(
      async () => {
        const text = await scrape(managerPage);
        return metric(text, "fleet_router_tokens_total", { alias: "meter" }) > 0 ? text : undefined;
      },
      { what: "the mounted router to count the tokens" },
    );
    expect(
      metric(tokens, "fleet_router_tokens_total", { alias: "meter", kind: "completion" }),
    ).toBeGreaterThan(0);

    // The engine dies: its agent restarts it, and both pages say so.
    const { body } = await fetchJson<InstanceList>(`${agent.url}/v1/instances`, agentPage);
    const pid = body.instances.find((instance) => instance.alias === "meter")?.pid;
    if (!pid) throw new Error("no engine pid");
    process.kill(-pid, "SIGKILL");
    await eventually(
      async () => {
        const text = await scrape(agentPage);
        return (
          metric(text, "fleet_agent_engine_restarts_total", { alias: "meter" }) === 1 &&
          metric(text, "fleet_agent_engines", { alias: "meter", state: "ready" }) === 1
        );
      },
      { what: "the restart counted and the engine ready again", timeoutMs: 30_000 },
    );
  });

  test("the manager's page counts the worker, its paths, instances and heartbeats", async () => {
    const text = await eventually(
      async () => {
        const page = await scrape(managerPage);
        return metric(page, "fleet_manager_worker_paths", {
          path: "internal",
          state: "reachable",
        }) === 1 &&
          metric(page, "fleet_manager_instances", { alias: "meter", state: "ready" }) === 1
          ? page
          : undefined;
      },
      { what: "the manager to have probed the worker", timeoutMs: 30_000 },
    );
    expect(metric(text, "fleet_manager_workers", { status: "online" })).toBe(1);
    expect(metric(text, "fleet_manager_workers_unreachable")).toBe(0);
    expect(metric(text, "fleet_manager_worker_paths", { path: "public", state: "none" })).toBe(1);
    expect(
      metric(text, "fleet_manager_heartbeat_duration_seconds_count", { outcome: "ok" }),
    ).toBeGreaterThan(0);
    expect(
      metric(text, "fleet_manager_probes_total", { path: "internal", result: "reachable" }),
    ).toBeGreaterThan(0);
    expect(metric(text, "fleet_manager_reconcile_duration_seconds_count")).toBeGreaterThan(0);
    expect(metric(text, "fleet_router_requests_total", { alias: "meter", status: "200" })).toBe(1);
  });

  test("the Grafana dashboard groups and filters on labels these pages carry", async () => {
    const pages = [await scrape(managerPage), await scrape(agentPage)].join("\n");
    /** Sample name → the label names seen on its samples. */
    const seen = new Map<string, Set<string>>();
    for (const match of pages.matchAll(/^(fleet_[a-z0-9_]+)(?:\{([^}]*)\})? /gm)) {
      const labels = seen.get(match[1] ?? "") ?? new Set<string>();
      for (const pair of (match[2] ?? "").matchAll(/([a-z_]+)="/g)) labels.add(pair[1] ?? "");
      seen.set(match[1] ?? "", labels);
    }
    const wrong: string[] = [];
    let checked = 0;
    for (const { title, expr } of promQueries()) {
      for (const [name, labels] of labelsUsed(expr)) {
        const have = seen.get(name);
        // Families with no sample yet here (a standalone router's, retries) cannot be checked.
        if (!have) continue;
        checked++;
        for (const label of labels) if (!have.has(label)) wrong.push(`${title}: ${name} ${label}`);
      }
    }
    expect(wrong).toEqual([]);
    expect(checked).toBeGreaterThan(20);
  });
});

async function fetchJson<T>(url: string, page: MetricsPage) {
  const token = typeof page === "string" ? undefined : page.token;
  const response = await fetch(url, {
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  return { status: response.status, body: (await response.json()) as T };
}
