/**
 * The fleet as placement sees it, read from the database under the placement lock. The rule
 * itself is pure and lives in placement.ts; callers write its result with the lifecycle in
 * the same transaction.
 */
import { asc, sql } from "drizzle-orm";
import { type Db, schema } from "../../db/index.ts";
import type { ModelRow } from "../../db/schema/index.ts";
import { claimingInstanceStatuses } from "../../protocol/index.ts";
import type { PlacementRequest, PlacementWorker } from "./placement.ts";

/** Transaction-scoped advisory lock around placement: two placements never see the same free GPU. */
const PLACEMENT_LOCK = 0x766c6c6d_706c6163n; // "vllmplac"

const CLAIMING: ReadonlySet<string> = new Set(claimingInstanceStatuses);

export async function lockPlacement(tx: Db): Promise<void> {
  await tx.execute(sql`select pg_advisory_xact_lock(${PLACEMENT_LOCK.toString()}::bigint)`);
}

/** The fleet as placement sees it; call inside a transaction after `lockPlacement`. */
export async function loadPlacementState(
  tx: Db,
  options: { ignoreInstanceId?: string } = {},
): Promise<PlacementWorker[]> {
  const [workerRows, gpuRows, instanceRows] = await Promise.all([
    tx
      .select({ workerId: schema.workers.workerId, status: schema.workers.status })
      .from(schema.workers)
      .orderBy(asc(schema.workers.workerId)),
    tx.select().from(schema.gpus),
    tx
      .select({
        id: schema.instances.id,
        alias: schema.instances.alias,
        workerId: schema.instances.workerId,
        gpuIds: schema.instances.gpuIds,
        claim: schema.instances.gpuMemoryUtilization,
        status: schema.instances.status,
      })
      .from(schema.instances),
  ]);
  const byId = new Map<string, PlacementWorker>();
  for (const w of workerRows) {
    byId.set(w.workerId, {
      workerId: w.workerId,
      online: w.status === "online",
      draining: w.status === "draining",
      gpus: [],
      instances: [],
      aliases: new Set(),
    });
  }
  for (const g of gpuRows) {
    byId.get(g.workerId)?.gpus.push({
      index: g.index,
      memoryTotalMib: g.memoryTotalMib,
      memoryFreeMib: g.memoryFreeMib,
    });
  }
  for (const i of instanceRows) {
    if (i.id === options.ignoreInstanceId) continue;
    const worker = byId.get(i.workerId);
    if (!worker) continue;
    worker.aliases.add(i.alias);
    if (CLAIMING.has(i.status))
      worker.instances.push({ alias: i.alias, gpuIds: i.gpuIds, claim: i.claim });
  }
  for (const worker of byId.values()) worker.gpus.sort((a, b) => a.index - b.index);
  return [...byId.values()];
}

export function placementRequest(model: ModelRow, replicas: number): PlacementRequest {
  return {
    alias: model.alias,
    claim: model.gpuMemoryUtilization,
    tensorParallelSize: model.tensorParallelSize,
    replicas,
    strategy: model.placement,
    workerId: model.workerId ?? undefined,
    gpuIds: model.gpuIds ?? undefined,
  };
}
