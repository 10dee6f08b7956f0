/**
 * Models (desired state): registration with its placement, reads, deletion. Instance rows
 * are written through the lifecycle; engines are launched and stopped by the launcher.
 */
import { asc, eq } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import type { InstanceRow } from "../../db/schema/index.ts";
import { AppError } from "../../kit/errors.ts";
import type { ModelInfo, ModelRegistration } from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import { place } from "./placement.ts";
import { loadPlacementState, lockPlacement, placementRequest } from "./placement-store.ts";
import { progressReader } from "./progress.ts";
import { retryDelayMs } from "./reconciler.ts";
import { modelInfo } from "./wire.ts";

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
    ids = await ctx.lifecycle.write(now, async (w) => {
      await lockPlacement(w.tx);
      const [existing] = await w.tx
        .select({ alias: schema.models.alias })
        .from(schema.models)
        .where(eq(schema.models.alias, input.alias));
      if (existing) throw aliasTaken(input.alias);
      const [model] = await w.tx
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
          routing: input.routing,
          createdAt: now,
          updatedAt: now,
        })
        .returning();
      if (!model) throw new Error("model insert returned nothing");
      const result = place(await loadPlacementState(w.tx), placementRequest(model, model.replicas));
      if (!result.ok) {
        throw new AppError("no_capacity", result.message, { detail: { reasons: result.reasons } });
      }
      w.event({
        kind: "model.registered",
        alias: model.alias,
        detail: { model_name: model.modelName, replicas: model.replicas },
      });
      const placed = await w.placed(model, result.placements);
      return placed.map((i) => i.id);
    });
  } catch (error) {
    if (pgErrorCode(error) === "23505") throw aliasTaken(input.alias);
    throw error;
  }
  await Promise.all(ids.map((id) => ctx.launcher.launch(id)));
  const info = await loadModelInfo(ctx, input.alias);
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

export async function loadModelInfo(
  ctx: ManagerContext,
  alias: string,
): Promise<ModelInfo | undefined> {
  const { db } = ctx;
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
  await routesCaughtUp(ctx, instances);
  const progress = await progressReader(
    db,
    instances.map((row) => ({ row, modelName: model.modelName })),
    ctx.clock.now(),
  );
  return modelInfo(model, instances, routes, {
    progress,
    retryDelayMs: (failures) => retryDelayMs(ctx, failures),
  });
}

/**
 * Returns once every `ready` instance among `instances` is served by this process's router,
 * as far as the database allows: the route snapshot is reloaded when one is missing from it.
 * The database says `ready` first, in the moment between a transition's commit and the
 * snapshot's reload, and until the next poll after another manager replica's write; a client
 * that sends its first request on the word `ready` (`fleet models wait`) would get a 503. A
 * reload is one version check when nothing moved (an instance whose worker is not online
 * stays out of the snapshot, so every read of it pays that check); standalone routers follow
 * on their own poll (docs/manager.md "Route snapshot").
 */
export async function routesCaughtUp(
  ctx: ManagerContext,
  instances: readonly InstanceRow[],
): Promise<void> {
  const ready = instances.filter((instance) => instance.status === "ready");
  if (ready.length === 0) return;
  const served = new Set<string>();
  for (const route of ctx.routes.current()?.routes ?? []) {
    if (route.ready) served.add(route.instance_id);
  }
  if (ready.every((instance) => served.has(instance.id))) return;
  await ctx.routes.refresh();
}

/**
 * `DELETE /v1/models/{alias}`: removes the model with its instances and routes, so routers
 * stop at once, then asks each agent to stop its engine. An agent that cannot be reached
 * stops it later: its next report shows an engine nobody wants.
 */
export async function deleteModel(
  ctx: ManagerContext,
  alias: string,
): Promise<{ stopped: { worker_id: string; ok: boolean; error?: string }[] }> {
  const targets = await ctx.lifecycle.write(ctx.clock.now(), async (w) => {
    const removed = await w.removed(alias);
    const deleted = await w.tx
      .delete(schema.models)
      .where(eq(schema.models.alias, alias))
      .returning({ alias: schema.models.alias });
    if (deleted.length === 0)
      throw new AppError("model_not_found", `no model with alias ${alias}`, { param: "alias" });
    return removed;
  });
  const stopped = await Promise.all(
    targets.map(async (t) => {
      const result = await ctx.launcher.stop(t, alias);
      if (!result || result.ok) return { worker_id: t.workerId, ok: true };
      return { worker_id: t.workerId, ok: false, error: result.error };
    }),
  );
  return { stopped };
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
