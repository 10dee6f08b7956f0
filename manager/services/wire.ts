/** Database rows → the wire shapes of `protocol/` (what the manager's API answers). */
import type { GpuRow, InstanceRow, ModelRow, RouteRow, WorkerRow } from "../../db/schema/index.ts";
import type {
  InstanceProgress,
  InstanceRecord,
  ModelInfo,
  ModelStatus,
  RoutingRecord,
  WorkerInfo,
} from "../../protocol/index.ts";
import { managementPath } from "./agent-client.ts";
import { workerProblems } from "./worker-problems.ts";

/** The original `ModelRouting`, exactly these six fields. */
export function routingRecord(route: RouteRow): RoutingRecord {
  return {
    alias: route.alias,
    model_name: route.modelName,
    worker_id: route.workerId,
    worker_url: route.workerUrl,
    vllm_port: route.vllmPort,
    created_at: route.createdAt.toISOString(),
  };
}

/** What a view adds to the rows: progress with its ETA, and when a failed instance is retried. */
export type InstanceExtras = {
  progress?: (row: InstanceRow) => InstanceProgress | null;
  retryDelayMs?: (failures: number) => number;
};

export function instanceRecord(row: InstanceRow, extras: InstanceExtras = {}): InstanceRecord {
  const retryMs = row.status === "failed" ? extras.retryDelayMs?.(row.failures) : undefined;
  return {
    id: row.id,
    alias: row.alias,
    worker_id: row.workerId,
    gpu_ids: row.gpuIds,
    gpu_memory_utilization: row.gpuMemoryUtilization,
    port: row.port,
    pid: row.pid,
    status: row.status,
    restarts: row.restarts,
    last_error: row.lastError,
    created_at: row.createdAt.toISOString(),
    updated_at: row.updatedAt.toISOString(),
    ready_at: row.readyAt?.toISOString() ?? null,
    progress: extras.progress?.(row) ?? null,
    ...(retryMs === undefined
      ? {}
      : { next_retry_at: new Date(row.updatedAt.getTime() + retryMs).toISOString() }),
  };
}

/**
 * ready: every replica ready; degraded: some ready but fewer than asked, or none ready or on
 * their way but some lost (their worker went offline: they await its return or a
 * replacement); starting: none ready yet, some on their way (pending, starting, stopping:
 * restarting, or leaving a draining worker); failed: none ready, on their way or lost.
 */
export function modelStatus(model: ModelRow, instances: InstanceRow[]): ModelStatus {
  const ready = instances.filter((i) => i.status === "ready").length;
  if (ready >= model.replicas) return "ready";
  if (ready > 0) return "degraded";
  // A stopping engine is on its way too: restarting, or leaving a draining worker for another.
  const underway = instances.some(
    (i) => i.status === "pending" || i.status === "starting" || i.status === "stopping",
  );
  if (underway) return "starting";
  const lost = instances.some((i) => i.status === "lost");
  return lost ? "degraded" : "failed";
}

export function modelInfo(
  model: ModelRow,
  instances: InstanceRow[],
  routes: RouteRow[],
  extras: InstanceExtras = {},
): ModelInfo {
  return {
    alias: model.alias,
    model_name: model.modelName,
    status: modelStatus(model, instances),
    max_model_len: model.maxModelLen,
    gpu_memory_utilization: model.gpuMemoryUtilization,
    tensor_parallel_size: model.tensorParallelSize,
    replicas: model.replicas,
    dtype: model.dtype,
    worker_id: model.workerId,
    gpu_ids: model.gpuIds,
    extra_args: model.extraArgs,
    placement: model.placement,
    routing: model.routing,
    created_at: model.createdAt.toISOString(),
    instances: instances.map((row) => instanceRecord(row, extras)),
    routes: routes.map((route) => ({ ...routingRecord(route), ready: route.ready })),
  };
}

export function workerInfo(
  worker: WorkerRow,
  gpus: GpuRow[],
  instances: { row: InstanceRow; modelName: string }[],
  progress?: (row: InstanceRow) => InstanceProgress | null,
): WorkerInfo {
  return {
    worker_id: worker.workerId,
    worker_url: worker.workerUrl,
    public_worker_url: worker.publicWorkerUrl,
    gpu_info: {
      gpus: gpus
        .sort((a, b) => a.index - b.index)
        .map((g) => ({
          index: g.index,
          uuid: g.uuid,
          name: g.name,
          memory_total_mib: g.memoryTotalMib,
          memory_used_mib: g.memoryUsedMib,
          memory_free_mib: g.memoryFreeMib,
          utilization_pct: g.utilizationPct,
        })),
      warning: worker.gpuWarning,
    },
    last_heartbeat: worker.lastHeartbeat.toISOString(),
    status: worker.status,
    instances: instances.map(({ row, modelName }) => ({
      id: row.id,
      alias: row.alias,
      model_name: modelName,
      status: row.status,
      port: row.port,
      gpu_ids: row.gpuIds,
      pid: row.pid,
      restarts: row.restarts,
      last_error: row.lastError,
      started_at: row.createdAt.toISOString(),
      ready_at: row.readyAt?.toISOString() ?? null,
      updated_at: row.updatedAt.toISOString(),
      progress: progress?.(row) ?? undefined,
    })),
    agent_version: worker.agentVersion,
    registered_at: worker.registeredAt.toISOString(),
    labels: worker.labels,
    paths: {
      internal: {
        url: worker.workerUrl,
        reachable: worker.internalReachable,
        rtt_ms: worker.internalRttMs,
        error: worker.internalProbeError,
      },
      public:
        worker.publicWorkerUrl === null
          ? null
          : {
              url: worker.publicWorkerUrl,
              reachable: worker.publicReachable,
              rtt_ms: worker.publicRttMs,
              error: worker.publicProbeError,
            },
    },
    management_path: managementPath(worker),
    probed_at: worker.probedAt?.toISOString() ?? null,
    problems: workerProblems(worker),
  };
}
