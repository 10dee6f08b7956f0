/**
 * The agent's `/metrics` (docs/agent.md "Metrics"): its engines' states and restarts, each
 * GPU's memory as nvidia-smi last read it and as its engines claim it, and each engine's
 * load as read from vLLM's own /metrics by the load monitor. Everything but the proxy
 * counter is computed at scrape time from what the agent already holds: a scrape runs no
 * nvidia-smi and reads no engine.
 */
import { Metrics } from "../../kit/metrics.ts";
import type { GpuInfo, InstanceReport } from "../../protocol/index.ts";
import { instanceStatusSchema } from "../../protocol/index.ts";
import type { LoadMonitor } from "./load-monitor.ts";

const MiB = 1024 * 1024;
/** vLLM's default `--gpu-memory-utilization`: what an engine launched without one claims. */
const vllmDefaultUtilization = 0.9;
/** The states in which an engine's process holds (or is taking) its GPU memory. */
const holding = new Set<InstanceReport["status"]>(["starting", "ready", "stopping"]);

export type AgentMetricsDeps = {
  engines: () => InstanceReport[];
  loads?: Pick<LoadMonitor, "readings">;
  gpus: () => GpuInfo;
};

/** The agent's registry, its families declared and its gauges refreshed at each scrape. */
export function agentMetrics(deps: AgentMetricsDeps): Metrics {
  const m = new Metrics();
  m.declare(
    "fleet_agent_engines",
    "gauge",
    `Engines on this host by alias and state (${instanceStatusSchema.options.join(", ")}): 1 for the state each is in`,
  );
  m.declare(
    "fleet_agent_engine_restarts_total",
    "counter",
    "Times the agent restarted an engine (it exited once ready, or a restart was asked for), by alias; from 0 again when the engine is relaunched",
  );
  m.declare("fleet_agent_gpu_memory_total_bytes", "gauge", "GPU memory, by GPU index (nvidia-smi)");
  m.declare(
    "fleet_agent_gpu_memory_used_bytes",
    "gauge",
    "GPU memory in use, by GPU index, as nvidia-smi last read it (at the last heartbeat)",
  );
  m.declare(
    "fleet_agent_gpu_memory_claimed_bytes",
    "gauge",
    "GPU memory claimed by this host's running engines (--gpu-memory-utilization x total), by GPU index",
  );
  m.declare("fleet_agent_gpu_utilization_ratio", "gauge", "GPU utilization (0-1), by GPU index");
  m.declare(
    "fleet_agent_engine_requests_running",
    "gauge",
    "Requests the engine is running (vllm:num_requests_running), by alias",
  );
  m.declare(
    "fleet_agent_engine_requests_waiting",
    "gauge",
    "Requests queued in the engine (vllm:num_requests_waiting), by alias",
  );
  m.declare(
    "fleet_agent_engine_kv_cache_usage_ratio",
    "gauge",
    "The engine's KV cache in use (0-1, vllm:kv_cache_usage_perc), by alias",
  );
  m.declare(
    "fleet_agent_engine_prefix_cache_queries_total",
    "counter",
    "Prefix-cache queries in tokens (vllm:prefix_cache_queries), by alias",
  );
  m.declare(
    "fleet_agent_engine_prefix_cache_hits_total",
    "counter",
    "Prefix-cache hits in tokens (vllm:prefix_cache_hits), by alias",
  );
  m.declare(
    "fleet_agent_proxy_requests_total",
    "counter",
    "Requests through /proxy/{alias}/v1/..., by alias (`unknown`: no such engine here) and the status answered",
  );

  m.collect(() => {
    const engines = deps.engines();
    const byAliasGauges = [
      "fleet_agent_engines",
      "fleet_agent_engine_restarts_total",
      "fleet_agent_engine_requests_running",
      "fleet_agent_engine_requests_waiting",
      "fleet_agent_engine_kv_cache_usage_ratio",
      "fleet_agent_engine_prefix_cache_queries_total",
      "fleet_agent_engine_prefix_cache_hits_total",
    ];
    for (const name of byAliasGauges) m.clear(name);
    for (const engine of engines) {
      m.set("fleet_agent_engines", { alias: engine.alias, state: engine.status }, 1);
      m.set("fleet_agent_engine_restarts_total", { alias: engine.alias }, engine.restarts);
    }
    for (const { alias, load, queries, hits } of deps.loads?.readings() ?? []) {
      const labels = { alias };
      m.set("fleet_agent_engine_requests_running", labels, load.running);
      m.set("fleet_agent_engine_requests_waiting", labels, load.waiting);
      if (load.kv !== null) m.set("fleet_agent_engine_kv_cache_usage_ratio", labels, load.kv);
      if (queries !== null) m.set("fleet_agent_engine_prefix_cache_queries_total", labels, queries);
      if (hits !== null) m.set("fleet_agent_engine_prefix_cache_hits_total", labels, hits);
    }
    publishGpus(m, deps.gpus(), engines);
  });
  return m;
}

function publishGpus(m: Metrics, info: GpuInfo, engines: InstanceReport[]): void {
  for (const name of [
    "fleet_agent_gpu_memory_total_bytes",
    "fleet_agent_gpu_memory_used_bytes",
    "fleet_agent_gpu_memory_claimed_bytes",
    "fleet_agent_gpu_utilization_ratio",
  ]) {
    m.clear(name);
  }
  for (const gpu of info.gpus) {
    const labels = { gpu: String(gpu.index) };
    const total = gpu.memory_total_mib * MiB;
    m.set("fleet_agent_gpu_memory_total_bytes", labels, total);
    if (gpu.memory_used_mib !== null) {
      m.set("fleet_agent_gpu_memory_used_bytes", labels, gpu.memory_used_mib * MiB);
    }
    if (gpu.utilization_pct !== null) {
      m.set("fleet_agent_gpu_utilization_ratio", labels, gpu.utilization_pct / 100);
    }
    let claim = 0;
    for (const engine of engines) {
      if (!holding.has(engine.status) || !engine.gpu_ids.includes(gpu.index)) continue;
      claim += engine.spec?.gpu_memory_utilization ?? vllmDefaultUtilization;
    }
    m.set("fleet_agent_gpu_memory_claimed_bytes", labels, Math.round(claim * total));
  }
}
