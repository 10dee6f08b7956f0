/**
 * Placement: which worker and GPUs an instance goes to. Pure: the caller loads the fleet's
 * state inside a transaction (under the placement lock) and writes the result in it.
 *
 * The rule, per GPU of an online worker, for a new claim `c` (gpu_memory_utilization):
 *   1. claims:  C + c <= 1, where C sums the claims of our instances on that GPU that are
 *      not stopped or failed (vLLM takes `c x total` of the GPU; shares must fit in one GPU).
 *   2. memory:  (C + c) x total <= free + min(used, C x total), where free/used are the
 *      GPU's live figures from the last heartbeat (used = total - free). Our own running
 *      engines already hold up to `C x total` of `used`; counting that memory as ours (but
 *      never more than is in use, so an engine still loading is not counted twice) leaves
 *      the rest of `used` as memory held by processes outside the fleet.
 * Without live figures (free unknown) only the claims rule applies.
 */

export type PlacementGpu = { index: number; memoryTotalMib: number; memoryFreeMib: number | null };
export type PlacementInstance = { alias: string; gpuIds: number[]; claim: number };
export type PlacementWorker = {
  workerId: string;
  online: boolean;
  /** Its agent is stopping: not online, and said so in placement refusals. */
  draining?: boolean;
  gpus: PlacementGpu[];
  /** Instances that hold claims (not stopped or failed). */
  instances: PlacementInstance[];
  /** Aliases with any instance row on this worker: one instance per alias per worker. */
  aliases: Set<string>;
};

export type PlacementRequest = {
  alias: string;
  claim: number;
  tensorParallelSize: number;
  replicas: number;
  strategy: "binpack" | "spread";
  workerId?: string | undefined;
  gpuIds?: number[] | undefined;
  /** Workers that may not take it (e.g. the one being replaced). */
  exclude?: Set<string>;
};

export type Placement = { workerId: string; gpuIds: number[] };
export type WorkerReason = { worker_id: string; reason: string };
export type PlacementResult =
  | { ok: true; placements: Placement[] }
  | { ok: false; reasons: WorkerReason[]; message: string };

const EPSILON = 1e-9;

type Candidate = { workerId: string; gpuIds: number[]; load: number };

export function place(workers: PlacementWorker[], request: PlacementRequest): PlacementResult {
  const reasons: WorkerReason[] = [];
  const candidates: Candidate[] = [];
  const pool = request.workerId ? workers.filter((w) => w.workerId === request.workerId) : workers;
  if (request.workerId && pool.length === 0) {
    reasons.push({ worker_id: request.workerId, reason: "pinned worker is not registered" });
  }
  for (const worker of pool) {
    const outcome = fitWorker(worker, request);
    if ("reason" in outcome) reasons.push({ worker_id: worker.workerId, reason: outcome.reason });
    else candidates.push(outcome);
  }
  // binpack: fill the most loaded worker that still fits (keeps whole GPUs free for big
  // models); spread: the least loaded first.
  candidates.sort((a, b) => {
    const byLoad = request.strategy === "binpack" ? b.load - a.load : a.load - b.load;
    return Math.abs(byLoad) > EPSILON ? byLoad : a.workerId.localeCompare(b.workerId);
  });
  if (candidates.length >= request.replicas) {
    return {
      ok: true,
      placements: candidates
        .slice(0, request.replicas)
        .map(({ workerId, gpuIds }) => ({ workerId, gpuIds })),
    };
  }
  for (const candidate of candidates) {
    reasons.push({ worker_id: candidate.workerId, reason: "fits" });
  }
  reasons.sort((a, b) => a.worker_id.localeCompare(b.worker_id));
  const wanted = `${request.replicas} replica${request.replicas === 1 ? "" : "s"} of ${request.alias} (tensor_parallel_size ${request.tensorParallelSize}, gpu_memory_utilization ${request.claim})`;
  const head =
    workers.length === 0
      ? `no capacity for ${wanted}: no workers are registered`
      : candidates.length > 0
        ? `no capacity for ${wanted}: replicas go to distinct workers and only ${candidates.length} fit`
        : `no capacity for ${wanted}`;
  const detail = reasons.map((r) => `${r.worker_id}: ${r.reason}`).join("; ");
  return { ok: false, reasons, message: detail ? `${head}. ${detail}` : head };
}

function fitWorker(
  worker: PlacementWorker,
  request: PlacementRequest,
): Candidate | { reason: string } {
  if (!worker.online)
    return { reason: worker.draining ? "draining (its agent is stopping)" : "offline" };
  if (request.exclude?.has(worker.workerId))
    return { reason: `already ran ${request.alias} (excluded)` };
  if (worker.aliases.has(request.alias)) return { reason: `already runs ${request.alias}` };
  const tp = request.tensorParallelSize;
  if (worker.gpus.length === 0) return { reason: "has no GPUs" };
  if (worker.gpus.length < tp) {
    return {
      reason: `has ${worker.gpus.length} GPU${worker.gpus.length === 1 ? "" : "s"}, tensor_parallel_size ${tp} needs ${tp} on one worker`,
    };
  }
  const claims = claimsByGpu(worker);
  const fitting: { index: number; claimed: number }[] = [];
  const refusals: string[] = [];
  const considered = request.gpuIds
    ? request.gpuIds.map((index) => worker.gpus.find((g) => g.index === index) ?? index)
    : worker.gpus;
  for (const gpu of considered) {
    if (typeof gpu === "number") {
      refusals.push(`GPU ${gpu} does not exist`);
      continue;
    }
    const claimed = claims.get(gpu.index) ?? 0;
    const why = gpuRefusal(gpu, claimed, request.claim);
    if (why) refusals.push(`GPU ${gpu.index} ${why}`);
    else fitting.push({ index: gpu.index, claimed });
  }
  if (request.gpuIds) {
    if (refusals.length > 0) return { reason: `pinned ${refusals.join(", ")}` };
    return { workerId: worker.workerId, gpuIds: request.gpuIds, load: workerLoad(worker, claims) };
  }
  if (fitting.length < tp) {
    const need = tp === 1 ? "no GPU fits" : `${fitting.length} of ${tp} needed GPUs fit`;
    return { reason: `${need}: ${refusals.join(", ")}` };
  }
  // Within a worker, binpack takes the fullest GPUs that fit, spread the emptiest.
  fitting.sort((a, b) => {
    const byClaim = request.strategy === "binpack" ? b.claimed - a.claimed : a.claimed - b.claimed;
    return Math.abs(byClaim) > EPSILON ? byClaim : a.index - b.index;
  });
  const gpuIds = fitting
    .slice(0, tp)
    .map((g) => g.index)
    .sort((a, b) => a - b);
  return { workerId: worker.workerId, gpuIds, load: workerLoad(worker, claims) };
}

/** Why `claim` does not fit this GPU, or undefined when it does (the rule at the top). */
export function gpuRefusal(gpu: PlacementGpu, claimed: number, claim: number): string | undefined {
  if (claimed + claim > 1 + EPSILON) {
    return `claims ${round(claimed)} + ${round(claim)} > 1`;
  }
  if (gpu.memoryFreeMib === null) return undefined;
  const total = gpu.memoryTotalMib;
  const used = Math.max(0, total - gpu.memoryFreeMib);
  const ours = Math.min(used, claimed * total);
  const needed = (claimed + claim) * total;
  const available = gpu.memoryFreeMib + ours;
  if (needed > available + 0.5) {
    const outside = Math.max(0, Math.round(used - ours));
    return `needs ${Math.round(claim * total)} MiB, ${Math.round(available - claimed * total)} MiB free (${outside} MiB used outside the fleet)`;
  }
  return undefined;
}

export function claimsByGpu(worker: Pick<PlacementWorker, "instances">): Map<number, number> {
  const claims = new Map<number, number>();
  for (const instance of worker.instances) {
    for (const index of instance.gpuIds)
      claims.set(index, (claims.get(index) ?? 0) + instance.claim);
  }
  return claims;
}

/** A worker's load: its claims as a fraction of its GPUs (0 = idle, 1 = full). */
function workerLoad(worker: PlacementWorker, claims: Map<number, number>): number {
  if (worker.gpus.length === 0) return 0;
  let sum = 0;
  for (const gpu of worker.gpus) sum += Math.min(1, claims.get(gpu.index) ?? 0);
  return sum / worker.gpus.length;
}

function round(value: number): string {
  return String(Math.round(value * 1000) / 1000);
}
