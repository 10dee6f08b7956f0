import { describe, expect, test } from "bun:test";
import { createApp } from "../../agent/app.ts";
import { AgentIdentity } from "../../agent/lib/identity.ts";
import { agentMetrics } from "../../agent/lib/metrics.ts";
import { PortLeaser } from "../../agent/lib/ports.ts";
import { Supervisor } from "../../agent/lib/supervisor.ts";
import { agentDataDir, joinedAgentDataDir } from "../../devkit/fleet.ts";
import { metric } from "../../devkit/metrics.ts";
import { silentLogger } from "../../kit/log.ts";
import type { GpuInfo, OpenAiError } from "../../protocol/index.ts";

/**
 * The agent's /metrics and who may read it, driven with `app.request`: the agent app over a
 * real supervisor (no engines) and a real identity. Engine states, restarts and claims across
 * real processes: tests/e2e/metrics.test.ts.
 */
const gpus: GpuInfo = {
  gpus: [
    {
      index: 0,
      uuid: "GPU-0",
      name: "NVIDIA H100 80GB HBM3",
      memory_total_mib: 81_559,
      memory_used_mib: 1_024,
      memory_free_mib: 80_535,
      utilization_pct: 25,
    },
  ],
  warning: null,
};

function agentApp(identity: AgentIdentity) {
  const supervisor = new Supervisor({
    vllmBin: "/nonexistent/vllm",
    baseEnv: {},
    ports: new PortLeaser({ min: 20_000, max: 20_001 }),
    log: silentLogger,
    startupTimeoutMs: 1000,
    stopGraceMs: 100,
    restartBackoffMs: 100,
    restartBackoffMaxMs: 100,
    healthPollMs: 100,
    adoptGraceMs: 100,
  });
  return createApp({
    workerId: "w1",
    supervisor,
    identity,
    gpus: { current: () => gpus, refresh: async () => gpus },
    log: silentLogger,
    metrics: agentMetrics({ engines: () => supervisor.reports(), gpus: () => gpus }),
  });
}

const identity = (options: { dataDir: string; joinToken?: string }) =>
  new AgentIdentity({
    workerId: "w1",
    managerUrl: "http://127.0.0.1:9",
    joinToken: options.joinToken,
    dataDir: options.dataDir,
    graceMs: 1000,
    log: silentLogger,
  });

describe("agent /metrics", () => {
  test("a joined agent takes its own agent credential, and nothing else", async () => {
    const dataDir = joinedAgentDataDir({
      workerId: "w1",
      managerUrl: "http://127.0.0.1:9",
      agentToken: "fa_agent-credential-of-w1",
    });
    const app = agentApp(identity({ dataDir, joinToken: "fleet-join-token" }));
    const scrape = (token?: string) =>
      app.request("/metrics", { headers: token ? { authorization: `Bearer ${token}` } : {} });
    for (const token of [undefined, "fleet-join-token", "fw_devkit-w1", "admin-token"]) {
      const refused = await scrape(token);
      expect(refused.status).toBe(401);
      expect(((await refused.json()) as OpenAiError).error.code).toBe("unauthorized");
    }
    const read = await scrape("fa_agent-credential-of-w1");
    expect(read.status).toBe(200);
    const text = await read.text();
    expect(metric(text, "fleet_agent_gpu_memory_total_bytes", { gpu: "0" })).toBe(
      81_559 * 1024 * 1024,
    );
    expect(metric(text, "fleet_agent_gpu_memory_used_bytes", { gpu: "0" })).toBe(
      1024 * 1024 * 1024,
    );
    expect(metric(text, "fleet_agent_gpu_memory_claimed_bytes", { gpu: "0" })).toBe(0);
    expect(metric(text, "fleet_agent_gpu_utilization_ratio", { gpu: "0" })).toBe(0.25);
    expect(metric(text, "fleet_agent_engines")).toBeNaN();
  });

  test("an open agent (loopback, never joined) answers anyone", async () => {
    const app = agentApp(identity({ dataDir: agentDataDir() }));
    const read = await app.request("/metrics");
    expect(read.status).toBe(200);
    expect(await read.text()).toContain("# TYPE fleet_agent_engines gauge");
  });
});
