import { and, eq, inArray, ne, sql } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import { AppError, describeError } from "../../kit/errors.ts";
import type {
  GpuInfo,
  Heartbeat,
  HeartbeatReply,
  InstanceRecordStatus,
  InstanceReport,
  WorkerRegistration,
  WorkerRegistrationReply,
} from "../../protocol/index.ts";
import { type EventInput, type ManagerContext, recordEvents } from "../context.ts";
import { routeUrl } from "./scheduler.ts";
import type { InstanceRow, RouteRow } from "./views.ts";

/** A full comparison of reports with the database at least this often, even if unchanged. */
const FULL_CHECK_MS = 30_000;
/** How long an unwanted engine's stop request is not repeated. */
const STOP_REPEAT_MS = 30_000;

/**
 * `POST /v1/workers/register`: an idempotent upsert per worker_id (GPUs replaced, URLs
 * updated, routes following a URL change), then the reported engines are adopted or stopped.
 */
export async function registerWorker(
  ctx: ManagerContext,
  registration: WorkerRegistration,
): Promise<WorkerRegistrationReply> {
  const now = ctx.clock.now();
  const id = registration.worker_id;
  const registeredAt = await ctx.db.transaction(async (tx) => {
    const [before] = await tx
      .select()
      .from(schema.workers)
      .where(eq(schema.workers.workerId, id))
      .for("update");
    const values = {
      workerUrl: registration.worker_url,
      publicWorkerUrl: registration.public_worker_url,
      status: "online" as const,
      lastHeartbeat: now,
      agentVersion: registration.agent_version,
      labels: registration.labels,
      gpuWarning: registration.gpu_info.warning,
      updatedAt: now,
    };
    const [row] = await tx
      .insert(schema.workers)
      .values({ workerId: id, ...values, registeredAt: now, createdAt: now })
      .onConflictDoUpdate({ target: schema.workers.workerId, set: values })
      .returning();
    await replaceGpus(tx, id, registration.gpu_info, now);
    const events: EventInput[] = [
      {
        kind: "worker.registered",
        workerId: id,
        fromStatus: before?.status ?? null,
        toStatus: "online",
        detail: {
          worker_url: registration.worker_url,
          public_worker_url: registration.public_worker_url,
          gpus: registration.gpu_info.gpus.length,
          agent_version: registration.agent_version,
        },
      },
    ];
    const url = routeUrl({
      workerUrl: registration.worker_url,
      publicWorkerUrl: registration.public_worker_url,
    });
    if (before && routeUrl(before) !== url) {
      await tx
        .update(schema.routes)
        .set({ workerUrl: url, updatedAt: now })
        .where(and(eq(schema.routes.workerId, id), ne(schema.routes.workerUrl, url)));
      events.push({
        kind: "worker.url_changed",
        workerId: id,
        message: `${routeUrl(before)} -> ${url}`,
      });
    }
    await recordEvents(tx, now, events);
    return row?.registeredAt ?? now;
  });
  await applyReports(ctx, id, registration.instances, now);
  ctx.heartbeatMemo.set(id, {
    reports: reportsFingerprint(registration.instances),
    gpus: gpusFingerprint(registration.gpu_info),
    checkedAt: now.getTime(),
  });
  await ctx.routes.refresh();
  return {
    worker_id: id,
    status: "online",
    heartbeat_interval_s: ctx.config.heartbeatIntervalS,
    registered_at: registeredAt.toISOString(),
  };
}

/**
 * `POST /v1/workers/{id}/heartbeat`. The common case (same GPUs, same engine states) is
 * one UPDATE; GPU rows and instance rows are written only when something changed.
 */
export async function heartbeat(
  ctx: ManagerContext,
  workerId: string,
  beat: Heartbeat,
): Promise<HeartbeatReply> {
  const now = ctx.clock.now();
  const rows = await ctx.fleetDb.query<{ previous: string }>(sql`
    with old as (select status from workers where worker_id = ${workerId} for update)
    update workers w set last_heartbeat = ${now.toISOString()}::timestamptz, status = 'online'
    from old where w.worker_id = ${workerId}
    returning old.status as previous`);
  const previous = rows[0]?.previous;
  if (previous === undefined) {
    throw new AppError("worker_not_found", `worker ${workerId} is not registered; register again`);
  }
  const memo = ctx.heartbeatMemo.get(workerId);
  const gpus = gpusFingerprint(beat.gpu_info);
  const reports = reportsFingerprint(beat.instances);
  const cameBack = previous !== "online";
  if (cameBack) {
    ctx.log.info("worker back online", { worker_id: workerId });
    await recordEvents(ctx.db, now, [
      {
        kind: "worker.online",
        workerId,
        fromStatus: previous,
        toStatus: "online",
        message: "heartbeat received",
      },
    ]);
  }
  if (!memo || memo.gpus !== gpus) {
    await ctx.db.transaction(async (tx) => {
      await replaceGpus(tx, workerId, beat.gpu_info, now);
      await tx
        .update(schema.workers)
        .set({ gpuWarning: beat.gpu_info.warning })
        .where(
          and(
            eq(schema.workers.workerId, workerId),
            sql`gpu_warning is distinct from ${beat.gpu_info.warning}`,
          ),
        );
    });
  }
  const stale = !memo || now.getTime() - memo.checkedAt > FULL_CHECK_MS;
  if (cameBack || stale || memo.reports !== reports) {
    await applyReports(ctx, workerId, beat.instances, now);
    ctx.heartbeatMemo.set(workerId, { reports, gpus, checkedAt: now.getTime() });
  } else {
    ctx.heartbeatMemo.set(workerId, { ...memo, gpus });
  }
  if (cameBack) await ctx.routes.refresh();
  return { heartbeat_interval_s: ctx.config.heartbeatIntervalS };
}

async function replaceGpus(
  tx: ManagerContext["db"],
  workerId: string,
  info: GpuInfo,
  now: Date,
): Promise<void> {
  await tx.delete(schema.gpus).where(eq(schema.gpus.workerId, workerId));
  if (info.gpus.length === 0) return;
  await tx.insert(schema.gpus).values(
    info.gpus.map((g) => ({
      workerId,
      index: g.index,
      uuid: g.uuid,
      name: g.name,
      memoryTotalMib: g.memory_total_mib,
      memoryUsedMib: g.memory_used_mib,
      memoryFreeMib: g.memory_free_mib,
      utilizationPct: g.utilization_pct === null ? null : Math.round(g.utilization_pct),
      updatedAt: now,
    })),
  );
}

/** GPU facts placement uses; free memory in 256 MiB steps so jitter does not cause writes. */
function gpusFingerprint(info: GpuInfo): string {
  return JSON.stringify([
    info.warning,
    info.gpus.map((g) => [
      g.index,
      g.uuid,
      g.name,
      g.memory_total_mib,
      g.memory_free_mib === null ? null : Math.round(g.memory_free_mib / 256),
      g.utilization_pct === null ? null : Math.round(g.utilization_pct / 10),
    ]),
  ]);
}

function reportsFingerprint(reports: InstanceReport[]): string {
  return JSON.stringify(
    reports.map((r) => [
      r.alias,
      r.model_name,
      r.status,
      r.port,
      r.pid,
      r.restarts,
      r.last_error,
      r.gpu_ids,
    ]),
  );
}

/** Instance states the agent reports, as the manager records them. */
function recordedStatus(report: InstanceReport): {
  status: InstanceRecordStatus;
  error: string | null;
} {
  if (report.status === "stopped") {
    return { status: "failed", error: report.last_error ?? "the engine was stopped on the worker" };
  }
  return { status: report.status, error: report.last_error };
}

/**
 * Desired (instance rows) against actual (what the agent reports) for one worker:
 * - a reported engine with a row: the row takes the report's status, port, pid, restarts and
 *   error (adoption after a manager restart: nothing is relaunched), its route readiness
 *   follows; events only for status changes;
 * - a reported engine without a row: adopted when its model wants another replica, else
 *   stopped (nobody wants it);
 * - a row the agent no longer reports (and not just launched): failed, so it is retried.
 */
export async function applyReports(
  ctx: ManagerContext,
  workerId: string,
  reports: InstanceReport[],
  now: Date,
): Promise<void> {
  const graceMs = (ctx.config.heartbeatIntervalS * 2 + ctx.config.agentTimeoutS) * 1000;
  const stops: { alias: string; reason: string }[] = [];
  const changedRoutes = await ctx.db.transaction(async (tx) => {
    const [worker] = await tx
      .select()
      .from(schema.workers)
      .where(eq(schema.workers.workerId, workerId));
    if (!worker) return false;
    const rows = await tx
      .select({
        instance: schema.instances,
        route: schema.routes,
        modelName: schema.models.modelName,
      })
      .from(schema.instances)
      .innerJoin(schema.models, eq(schema.models.alias, schema.instances.alias))
      .leftJoin(schema.routes, eq(schema.routes.instanceId, schema.instances.id))
      .where(eq(schema.instances.workerId, workerId));
    const byAlias = new Map(rows.map((r) => [r.instance.alias, r]));
    const reported = new Map(reports.map((r) => [r.alias, r]));
    const events: EventInput[] = [];
    let routesChanged = false;
    const online = worker.status === "online";

    const update = async (
      instance: InstanceRow,
      route: RouteRow | null,
      next: Partial<InstanceRow> & { status: InstanceRecordStatus },
    ) => {
      const changes: Partial<InstanceRow> = {};
      for (const key of ["status", "port", "pid", "restarts", "lastError"] as const) {
        if (key in next && next[key] !== instance[key])
          Object.assign(changes, { [key]: next[key] });
      }
      if (next.status === "ready" && instance.status !== "ready") changes.readyAt = now;
      if (Object.keys(changes).length > 0) {
        await tx
          .update(schema.instances)
          .set({ ...changes, updatedAt: now })
          .where(eq(schema.instances.id, instance.id));
      }
      if (changes.status) {
        events.push({
          kind: `instance.${changes.status}`,
          workerId,
          alias: instance.alias,
          instanceId: instance.id,
          fromStatus: instance.status,
          toStatus: changes.status,
          message: changes.status === "failed" ? (next.lastError ?? null) : null,
        });
      }
      if (route) {
        const ready = next.status === "ready" && online;
        const port = next.port === undefined ? route.vllmPort : next.port;
        if (route.ready !== ready || route.vllmPort !== port) {
          await tx
            .update(schema.routes)
            .set({ ready, vllmPort: port, updatedAt: now })
            .where(eq(schema.routes.id, route.id));
          routesChanged = true;
        }
      }
    };

    const unknown: InstanceReport[] = [];
    for (const report of reports) {
      const row = byAlias.get(report.alias);
      if (!row) {
        unknown.push(report);
        continue;
      }
      if (row.modelName !== report.model_name) {
        stops.push({
          alias: report.alias,
          reason: `runs ${report.model_name}, wanted ${row.modelName}`,
        });
        await update(row.instance, row.route, {
          status: "failed",
          lastError: `worker ran ${report.model_name} under alias ${report.alias}; expected ${row.modelName}`,
        });
        continue;
      }
      const { status, error } = recordedStatus(report);
      await update(row.instance, row.route, {
        status,
        port: report.port,
        pid: report.pid,
        restarts: report.restarts,
        lastError: error ?? (status === "ready" ? null : row.instance.lastError),
      });
    }

    for (const row of rows) {
      if (reported.has(row.instance.alias)) continue;
      const { instance } = row;
      const vanished =
        instance.status === "lost" ||
        ((instance.status === "starting" ||
          instance.status === "ready" ||
          instance.status === "stopping") &&
          now.getTime() - instance.updatedAt.getTime() > graceMs);
      if (vanished) {
        await update(instance, row.route, {
          status: "failed",
          pid: null,
          lastError: `worker ${workerId} no longer reports this engine (was ${instance.status})`,
        });
      }
    }

    if (unknown.length > 0) {
      const aliases = [...new Set(unknown.map((r) => r.alias))];
      const models = await tx
        .select()
        .from(schema.models)
        .where(inArray(schema.models.alias, aliases));
      const active = await tx
        .select({ alias: schema.instances.alias, n: sql<number>`count(*)::int` })
        .from(schema.instances)
        .where(
          and(
            inArray(schema.instances.alias, aliases),
            inArray(schema.instances.status, ["pending", "starting", "ready", "stopping", "lost"]),
          ),
        )
        .groupBy(schema.instances.alias);
      const counts = new Map(active.map((a) => [a.alias, Number(a.n)]));
      for (const report of unknown) {
        const model = models.find((m) => m.alias === report.alias);
        const live = report.status === "starting" || report.status === "ready";
        const wanted =
          model &&
          model.modelName === report.model_name &&
          (counts.get(report.alias) ?? 0) < model.replicas;
        if (model && live && wanted) {
          counts.set(report.alias, (counts.get(report.alias) ?? 0) + 1);
          const claim = report.spec?.gpu_memory_utilization ?? model.gpuMemoryUtilization;
          const [instance] = await tx
            .insert(schema.instances)
            .values({
              alias: report.alias,
              workerId,
              gpuIds: report.gpu_ids,
              gpuMemoryUtilization: claim,
              port: report.port,
              pid: report.pid,
              status: report.status,
              restarts: report.restarts,
              lastError: report.last_error,
              readyAt: report.status === "ready" ? now : null,
              createdAt: now,
              updatedAt: now,
            })
            .returning();
          if (!instance) continue;
          await tx.insert(schema.routes).values({
            alias: report.alias,
            modelName: model.modelName,
            workerId,
            workerUrl: routeUrl(worker),
            vllmPort: report.port,
            instanceId: instance.id,
            ready: report.status === "ready" && online,
            createdAt: now,
            updatedAt: now,
          });
          routesChanged = true;
          events.push({
            kind: "instance.adopted",
            workerId,
            alias: report.alias,
            instanceId: instance.id,
            toStatus: report.status,
            detail: { pid: report.pid, port: report.port, gpu_ids: report.gpu_ids },
          });
        } else if (report.status !== "stopped" && report.status !== "stopping") {
          const reason = !model
            ? "no model has this alias"
            : model.modelName !== report.model_name
              ? `alias ${report.alias} serves ${model.modelName}, engine runs ${report.model_name}`
              : "the model has all its replicas elsewhere";
          stops.push({ alias: report.alias, reason });
        }
      }
    }
    await recordEvents(tx, now, events);
    return routesChanged || events.length > 0;
  });
  if (changedRoutes) await ctx.routes.refresh();
  if (stops.length > 0) stopUnwanted(ctx, workerId, stops, now);
}

/** Stops engines nobody wants, without holding up the heartbeat; repeated at most every 30 s. */
function stopUnwanted(
  ctx: ManagerContext,
  workerId: string,
  stops: { alias: string; reason: string }[],
  now: Date,
): void {
  void (async () => {
    const [worker] = await ctx.db
      .select({ workerUrl: schema.workers.workerUrl })
      .from(schema.workers)
      .where(eq(schema.workers.workerId, workerId));
    if (!worker) return;
    for (const { alias, reason } of stops) {
      const key = `${workerId}/${alias}`;
      const last = ctx.stopRequested.get(key);
      if (last !== undefined && now.getTime() - last < STOP_REPEAT_MS) continue;
      ctx.stopRequested.set(key, now.getTime());
      ctx.log.info("stopping an engine nobody wants", { worker_id: workerId, alias, reason });
      const result = await ctx.agents.stop(worker.workerUrl, alias);
      await recordEvents(ctx.db, ctx.clock.now(), [
        {
          kind: result.ok ? "instance.unwanted_stopped" : "instance.unwanted_stop_failed",
          workerId,
          alias,
          message: result.ok ? reason : `${reason}; ${result.error}`,
        },
      ]);
      ctx.heartbeatMemo.delete(workerId);
    }
  })().catch((error) =>
    ctx.log.warn("stopping unwanted engines failed", {
      worker_id: workerId,
      error: describeError(error),
    }),
  );
}
