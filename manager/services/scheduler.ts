import { and, asc, eq, inArray, sql } from "drizzle-orm";
import { type Db, schema } from "../../db/index.ts";
import { AppError } from "../../kit/errors.ts";
import type {
  InstanceReport,
  InstanceSpecInput,
  ModelInfo,
  ModelRegistration,
} from "../../protocol/index.ts";
import { type ManagerContext, recordEvents } from "../context.ts";
import { type Placement, type PlacementRequest, type PlacementWorker, place } from "./placement.ts";
import { type InstanceRow, type ModelRow, modelInfo, type WorkerRow } from "./views.ts";

/** Transaction-scoped advisory lock around placement: two placements never see the same free GPU. */
const PLACEMENT_LOCK = 0x766c6c6d_706c6163n; // "vllmplac"

/** Statuses whose claims count against a GPU. */
const CLAIMING = new Set(["pending", "starting", "ready", "stopping", "lost"]);

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

/** The URL routers use for a worker: its public (port-forwarding) URL when it has one. */
export function routeUrl(worker: Pick<WorkerRow, "workerUrl" | "publicWorkerUrl">): string {
  return worker.publicWorkerUrl ?? worker.workerUrl;
}

/** Inserts pending instances and their (not ready) routes for placements; returns their ids. */
export async function writePlacements(
  tx: Db,
  model: ModelRow,
  placements: Placement[],
  now: Date,
): Promise<string[]> {
  const inserted = await insertPlacements(tx, model, placements, now);
  await recordEvents(
    tx,
    now,
    inserted.map((instance) => ({
      kind: "instance.placed",
      workerId: instance.workerId,
      alias: model.alias,
      instanceId: instance.id,
      toStatus: "pending",
      detail: { gpu_ids: instance.gpuIds, gpu_memory_utilization: instance.gpuMemoryUtilization },
    })),
  );
  return inserted.map((i) => i.id);
}

/**
 * The rows behind `writePlacements`, without its events: pending instances and their routes
 * (through the worker's public URL when it has one). Rescheduling records its own event.
 */
export async function insertPlacements(
  tx: Db,
  model: ModelRow,
  placements: Placement[],
  now: Date,
): Promise<InstanceRow[]> {
  if (placements.length === 0) return [];
  const workerRows = await tx
    .select()
    .from(schema.workers)
    .where(
      inArray(
        schema.workers.workerId,
        placements.map((p) => p.workerId),
      ),
    );
  const workers = new Map(workerRows.map((w) => [w.workerId, w]));
  const inserted = await tx
    .insert(schema.instances)
    .values(
      placements.map((p) => ({
        alias: model.alias,
        workerId: p.workerId,
        gpuIds: p.gpuIds,
        gpuMemoryUtilization: model.gpuMemoryUtilization,
        status: "pending" as const,
        createdAt: now,
        updatedAt: now,
      })),
    )
    .returning();
  await tx.insert(schema.routes).values(
    inserted.map((instance) => {
      const worker = workers.get(instance.workerId);
      if (!worker) throw new Error(`worker ${instance.workerId} vanished during placement`);
      return {
        alias: model.alias,
        modelName: model.modelName,
        workerId: instance.workerId,
        workerUrl: routeUrl(worker),
        vllmPort: null,
        instanceId: instance.id,
        ready: false,
        createdAt: now,
        updatedAt: now,
      };
    }),
  );
  return inserted;
}

/**
 * `POST /v1/models/register`: records the model, places every replica (all or nothing: 409
 * with per-worker reasons), writes instances and routes in one transaction, then asks the
 * agents to launch. A launch the agent refuses or cannot take leaves a `failed` instance
 * with the error; reconciliation retries it with backoff.
 */
export async function registerModel(
  ctx: ManagerContext,
  input: ModelRegistration,
): Promise<ModelInfo> {
  if (input.gpu_ids && input.gpu_ids.length !== input.tensor_parallel_size) {
    throw new AppError(
      "invalid_request",
      `gpu_ids lists ${input.gpu_ids.length} GPU${input.gpu_ids.length === 1 ? "" : "s"} but tensor_parallel_size is ${input.tensor_parallel_size}: pin exactly one GPU per tensor-parallel rank`,
      { param: "gpu_ids" },
    );
  }
  if (input.worker_id && input.replicas > 1) {
    throw new AppError(
      "invalid_request",
      "replicas run on distinct workers, so a model pinned to one worker_id has one replica",
      { param: "replicas" },
    );
  }
  const now = ctx.clock.now();
  let ids: string[];
  try {
    ids = await ctx.db.transaction(async (tx) => {
      await lockPlacement(tx);
      const [existing] = await tx
        .select({ alias: schema.models.alias })
        .from(schema.models)
        .where(eq(schema.models.alias, input.alias));
      if (existing) throw aliasTaken(input.alias);
      const [model] = await tx
        .insert(schema.models)
        .values({
          alias: input.alias,
          modelName: input.model_name,
          maxModelLen: input.max_model_len ?? null,
          gpuMemoryUtilization: input.gpu_memory_utilization,
          tensorParallelSize: input.tensor_parallel_size,
          replicas: input.replicas,
          dtype: input.dtype ?? null,
          workerId: input.worker_id ?? null,
          gpuIds: input.gpu_ids ?? null,
          extraArgs: input.extra_args,
          placement: input.placement,
          createdAt: now,
          updatedAt: now,
        })
        .returning();
      if (!model) throw new Error("model insert returned nothing");
      const result = place(await loadPlacementState(tx), placementRequest(model, model.replicas));
      if (!result.ok) {
        throw new AppError("no_capacity", result.message, { detail: { reasons: result.reasons } });
      }
      await recordEvents(tx, now, [
        {
          kind: "model.registered",
          alias: model.alias,
          detail: { model_name: model.modelName, replicas: model.replicas },
        },
      ]);
      return writePlacements(tx, model, result.placements, now);
    });
  } catch (error) {
    if (pgErrorCode(error) === "23505") throw aliasTaken(input.alias);
    throw error;
  }
  await ctx.routes.refresh();
  await Promise.all(ids.map((id) => launchInstance(ctx, id)));
  const info = await loadModelInfo(ctx.db, input.alias);
  if (!info)
    throw new AppError(
      "model_not_found",
      `model ${input.alias} was deleted while it was being registered`,
    );
  return info;
}

function aliasTaken(alias: string): AppError {
  return new AppError(
    "alias_taken",
    `a model with alias ${alias} is already registered; delete it first`,
    {
      param: "alias",
    },
  );
}

export async function loadModelInfo(db: Db, alias: string): Promise<ModelInfo | undefined> {
  const [model] = await db.select().from(schema.models).where(eq(schema.models.alias, alias));
  if (!model) return undefined;
  const [instances, routes] = await Promise.all([
    db
      .select()
      .from(schema.instances)
      .where(eq(schema.instances.alias, alias))
      .orderBy(asc(schema.instances.workerId)),
    db
      .select()
      .from(schema.routes)
      .where(eq(schema.routes.alias, alias))
      .orderBy(asc(schema.routes.workerId)),
  ]);
  return modelInfo(model, instances, routes);
}

/**
 * `DELETE /v1/models/{alias}`: removes the model (instances and routes cascade), so routers
 * stop at once, then asks each agent to stop its engine. An agent that cannot be reached
 * stops it later: its next report shows an engine nobody wants.
 */
export async function deleteModel(
  ctx: ManagerContext,
  alias: string,
): Promise<{ stopped: { worker_id: string; ok: boolean; error?: string }[] }> {
  const now = ctx.clock.now();
  const targets = await ctx.db.transaction(async (tx) => {
    const rows = await tx
      .select({
        workerId: schema.instances.workerId,
        workerUrl: schema.workers.workerUrl,
        status: schema.instances.status,
      })
      .from(schema.instances)
      .innerJoin(schema.workers, eq(schema.workers.workerId, schema.instances.workerId))
      .where(eq(schema.instances.alias, alias));
    const deleted = await tx
      .delete(schema.models)
      .where(eq(schema.models.alias, alias))
      .returning();
    if (deleted.length === 0)
      throw new AppError("model_not_found", `no model with alias ${alias}`, { param: "alias" });
    await recordEvents(tx, now, [{ kind: "model.deleted", alias }]);
    return rows;
  });
  for (const t of targets) ctx.heartbeatMemo.delete(t.workerId);
  await ctx.routes.refresh();
  const stopped = await Promise.all(
    targets.map(async (t) => {
      ctx.stopRequested.set(`${t.workerId}/${alias}`, now.getTime());
      const result = await ctx.agents.stop(t.workerUrl, alias);
      return result.ok
        ? { worker_id: t.workerId, ok: true }
        : { worker_id: t.workerId, ok: false, error: result.error };
    }),
  );
  return { stopped };
}

/** The spec the agent gets: engine options only when the model sets them. */
export function instanceSpec(model: ModelRow, instance: InstanceRow): InstanceSpecInput {
  const spec: InstanceSpecInput = {
    alias: model.alias,
    model_name: model.modelName,
    gpu_memory_utilization: instance.gpuMemoryUtilization,
    tensor_parallel_size: model.tensorParallelSize,
    gpu_ids: instance.gpuIds,
    extra_args: model.extraArgs,
  };
  if (model.maxModelLen !== null) spec.max_model_len = model.maxModelLen;
  if (model.dtype !== null) spec.dtype = model.dtype as InstanceSpecInput["dtype"];
  return spec;
}

/**
 * Asks the instance's agent to launch it (`POST /v1/instances` on the internal worker_url).
 * Only `pending` instances launch; on success they become what the agent says (starting),
 * on failure `failed` with the agent's error, an event, and a retry later.
 */
export async function launchInstance(ctx: ManagerContext, instanceId: string): Promise<void> {
  if (ctx.launching.has(instanceId)) return;
  ctx.launching.add(instanceId);
  try {
    const [row] = await ctx.db
      .select({ instance: schema.instances, model: schema.models, worker: schema.workers })
      .from(schema.instances)
      .innerJoin(schema.models, eq(schema.models.alias, schema.instances.alias))
      .innerJoin(schema.workers, eq(schema.workers.workerId, schema.instances.workerId))
      .where(eq(schema.instances.id, instanceId));
    if (row?.instance.status !== "pending") return;
    const { instance, model, worker } = row;
    const spec = instanceSpec(model, instance);
    let result = await ctx.agents.launch(worker.workerUrl, spec);
    if (!result.ok && result.status === 409) {
      // The agent already has this alias: adopt a live engine of the same model, otherwise
      // clear the stale one (failed or stopped) and launch once more.
      const listed = await ctx.agents.list(worker.workerUrl);
      const existing = listed.ok ? listed.value.find((r) => r.alias === model.alias) : undefined;
      if (
        existing &&
        existing.model_name === model.modelName &&
        (existing.status === "starting" || existing.status === "ready")
      ) {
        result = { ok: true, value: existing };
      } else {
        await ctx.agents.stop(worker.workerUrl, model.alias);
        result = await ctx.agents.launch(worker.workerUrl, spec);
      }
    }
    const now = ctx.clock.now();
    if (result.ok) {
      await markLaunched(ctx, { instance, worker, report: result.value, now });
    } else {
      await markFailed(ctx, {
        instance,
        now,
        kind: "instance.launch_failed",
        error: `launch on worker ${worker.workerId} failed: ${result.error}`,
      });
    }
    ctx.heartbeatMemo.delete(worker.workerId);
  } finally {
    ctx.launching.delete(instanceId);
  }
}

async function markLaunched(
  ctx: ManagerContext,
  options: { instance: InstanceRow; worker: WorkerRow; report: InstanceReport | null; now: Date },
): Promise<void> {
  const { instance, worker, report, now } = options;
  const status =
    report?.status === "ready" || report?.status === "failed" ? report.status : "starting";
  const port = report?.port ?? null;
  const changed = await ctx.db.transaction(async (tx) => {
    // A heartbeat may have recorded the engine first; then it already holds newer facts.
    const updated = await tx
      .update(schema.instances)
      .set({
        status,
        port,
        pid: report?.pid ?? null,
        lastError: report?.last_error ?? instance.lastError,
        readyAt: status === "ready" ? now : null,
        updatedAt: now,
      })
      .where(and(eq(schema.instances.id, instance.id), eq(schema.instances.status, "pending")))
      .returning({ id: schema.instances.id });
    if (updated.length === 0) return false;
    await tx
      .update(schema.routes)
      .set({
        vllmPort: port,
        ready: status === "ready" && worker.status === "online",
        updatedAt: now,
      })
      .where(eq(schema.routes.instanceId, instance.id));
    await recordEvents(tx, now, [
      {
        kind: "instance.launched",
        workerId: instance.workerId,
        alias: instance.alias,
        instanceId: instance.id,
        fromStatus: "pending",
        toStatus: status,
        detail: { port, pid: report?.pid ?? null, gpu_ids: instance.gpuIds },
      },
    ]);
    return true;
  });
  if (changed) await ctx.routes.refresh();
}

/** Marks an instance failed with a visible error; every failure is an event (retries count them). */
export async function markFailed(
  ctx: ManagerContext,
  options: { instance: InstanceRow; now: Date; kind: string; error: string },
): Promise<void> {
  const { instance, now } = options;
  ctx.log.warn(options.error, { instance_id: instance.id, alias: instance.alias });
  await ctx.db.transaction(async (tx) => {
    const updated = await tx
      .update(schema.instances)
      .set({ status: "failed", lastError: options.error, updatedAt: now })
      .where(
        and(eq(schema.instances.id, instance.id), eq(schema.instances.status, instance.status)),
      )
      .returning({ id: schema.instances.id });
    if (updated.length === 0) return;
    await tx
      .update(schema.routes)
      .set({ ready: false, updatedAt: now })
      .where(and(eq(schema.routes.instanceId, instance.id), eq(schema.routes.ready, true)));
    await recordEvents(tx, now, [
      {
        kind: options.kind,
        workerId: instance.workerId,
        alias: instance.alias,
        instanceId: instance.id,
        fromStatus: instance.status,
        toStatus: "failed",
        message: options.error,
      },
    ]);
  });
}

/** The driver's SQLSTATE for an error thrown through Drizzle (postgres.js or PGlite). */
export function pgErrorCode(error: unknown): string | undefined {
  for (let e: unknown = error, depth = 0; e && depth < 4; depth++) {
    if (
      typeof e === "object" &&
      e !== null &&
      "code" in e &&
      typeof (e as { code: unknown }).code === "string"
    ) {
      return (e as { code: string }).code;
    }
    e =
      typeof e === "object" && e !== null && "cause" in e
        ? (e as { cause: unknown }).cause
        : undefined;
  }
  return undefined;
}
