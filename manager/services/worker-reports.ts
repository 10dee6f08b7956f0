/**
 * What agents tell the manager: registration, heartbeats, and the engine reports they carry,
 * compared with the instance rows (desired against actual for one worker). Every change to
 * an instance goes through the lifecycle; engines nobody wants are stopped by the launcher.
 */
import { and, asc, eq, inArray, isNotNull, isNull, sql } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import type { WorkerRow } from "../../db/schema/index.ts";
import { sameSecret } from "../../kit/crypto.ts";
import { AppError, describeError } from "../../kit/errors.ts";
import { fleetVersion } from "../../kit/version.ts";
import {
  claimingInstanceStatuses,
  type GpuInfo,
  type Heartbeat,
  type HeartbeatReply,
  type InstanceReport,
  type WorkerCredentials,
  type WorkerDrain,
  type WorkerDrainReply,
  type WorkerRegistration,
  type WorkerRegistrationReply,
} from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import {
  type HeartbeatCaller,
  newCredentials,
  notThisWorker,
  type RegistrationCaller,
  workerNotFound,
} from "../worker-auth.ts";
import { agentAddressColumns } from "./agent-client.ts";
import { recordEvents } from "./events.ts";
import { instanceSpec, specMismatch } from "./launcher.ts";
import { routeUrl } from "./lifecycle.ts";
import { staleProbeResults } from "./probes.ts";
import { storedProgress } from "./progress.ts";
import { plainHttpProblem } from "./worker-problems.ts";
import { checkAdvertisedUrls } from "./worker-urls.ts";

/** How long an unwanted engine's stop request is not repeated. */
const STOP_REPEAT_MS = 30_000;

/**
 * `POST /v1/workers/register`: an idempotent upsert per worker_id (GPUs replaced, URLs
 * updated, routes following a URL change), then the reported engines are adopted or stopped.
 *
 * Who may register which worker_id (`caller`, checked before the body was read):
 * - the join token: a worker_id without a credential joins and gets its pair, once, in the
 *   reply; a worker_id that has one is a 409 (its agent holds the credential; replacing the
 *   host means removing the worker first);
 * - a worker's credential: that worker_id only (another one is 401); its pending credential
 *   (a rotation) becomes the current one;
 * - open mode: anyone, and no credentials.
 */
export async function registerWorker(
  ctx: ManagerContext,
  registration: WorkerRegistration,
  caller: RegistrationCaller,
): Promise<WorkerRegistrationReply> {
  const id = registration.worker_id;
  if (caller.kind === "worker" && caller.workerId !== id) {
    throw new AppError(
      "unauthorized",
      `this credential belongs to another worker, not ${id}: a worker registers only itself`,
      { param: "worker_id" },
    );
  }
  checkAdvertisedUrls(registration, { listen: ctx.listen, allow: ctx.config.workerUrlAllow });
  const now = ctx.clock.now();
  const plainHttp = plainHttpProblem({ publicWorkerUrl: registration.public_worker_url });
  if (plainHttp) {
    ctx.log.warn(plainHttp, {
      worker_id: id,
      public_worker_url: registration.public_worker_url,
    });
  }
  const issued = caller.kind === "join" ? await newCredentials() : undefined;
  const { registeredAt, promoted } = await ctx.lifecycle.write(now, async (w) => {
    const [before] = await w.tx
      .select()
      .from(schema.workers)
      .where(eq(schema.workers.workerId, id))
      .for("update");
    if (issued && before?.credentialHash) throw alreadyRegistered(id);
    let promoted = false;
    if (caller.kind === "worker") {
      // Removed or rotated since the middleware looked: the credential no longer opens it.
      if (!sameSecret(before?.credentialHash, caller.credentialHash)) {
        if (!sameSecret(before?.pendingCredentialHash, caller.credentialHash)) {
          throw new AppError("unauthorized", `this credential no longer belongs to worker ${id}`);
        }
        promoted = true;
      }
    }
    const values = {
      workerUrl: registration.worker_url,
      publicWorkerUrl: registration.public_worker_url,
      status: "online" as const,
      lastHeartbeat: now,
      agentVersion: registration.agent_version,
      labels: registration.labels,
      gpuWarning: registration.gpu_info.warning,
      updatedAt: now,
      ...staleProbeResults(before, {
        workerUrl: registration.worker_url,
        publicWorkerUrl: registration.public_worker_url,
      }),
      ...(issued
        ? {
            credentialHash: issued.credentialHash,
            agentToken: issued.credentials.agent_token,
            ...noRotation,
          }
        : {}),
      ...(promoted && before ? promotion(before) : {}),
    };
    const [row] = await w.tx
      .insert(schema.workers)
      .values({ workerId: id, ...values, registeredAt: now, createdAt: now })
      .onConflictDoUpdate({
        target: schema.workers.workerId,
        set: values,
        // Two joins of one new worker_id at once: the second finds the first's credential.
        ...(issued ? { setWhere: isNull(schema.workers.credentialHash) } : {}),
      })
      .returning();
    if (!row) throw alreadyRegistered(id);
    await replaceGpus(w.tx, id, registration.gpu_info, now);
    w.event({
      kind: "worker.registered",
      workerId: id,
      fromStatus: before?.status ?? null,
      toStatus: "online",
      detail: {
        worker_url: registration.worker_url,
        public_worker_url: registration.public_worker_url,
        gpus: registration.gpu_info.gpus.length,
        agent_version: registration.agent_version,
        ...(issued ? { joined: true } : {}),
      },
    });
    if (promoted) w.event(rotatedEvent(id));
    const url = routeUrl({
      workerUrl: registration.worker_url,
      publicWorkerUrl: registration.public_worker_url,
    });
    if (before && routeUrl(before) !== url) await w.workerUrlChanged(id, routeUrl(before), url);
    // The worker may have come back online: what routers see can change without a route write.
    w.routesChanged();
    return { registeredAt: row.registeredAt, promoted };
  });
  // Its next heartbeat then costs no lookup and no hashing (worker-auth.ts, CredentialMemo).
  if (issued) {
    ctx.credentials.seed(issued.credentials.worker_credential, issued.credentialHash);
    ctx.credentials.remember(id, issued.credentialHash);
    ctx.log.info("worker joined: credentials issued", { worker_id: id });
  } else if (caller.kind === "worker") {
    ctx.credentials.remember(id, caller.credentialHash);
  }
  if (promoted) ctx.log.info("worker credentials rotated", { worker_id: id });
  if (registration.agent_version !== fleetVersion) {
    // Wire changes between releases are not promised to be compatible in both directions.
    ctx.log.warn(
      "worker runs another release than the manager: upgrade its agent (run its install line again)",
      { worker_id: id, agent_version: registration.agent_version, manager_version: fleetVersion },
    );
  }
  if (await applyReports(ctx, id, registration.instances, now)) {
    ctx.heartbeats.applied(id, registration.gpu_info, registration.instances, now);
  } else {
    ctx.heartbeats.forget(id);
  }
  return {
    worker_id: id,
    status: "online",
    heartbeat_interval_s: ctx.config.heartbeatIntervalS,
    registered_at: registeredAt.toISOString(),
    ...(issued ? { credentials: issued.credentials } : {}),
  };
}

function alreadyRegistered(id: string): AppError {
  return new AppError(
    "conflict",
    `worker ${id} is already registered. Its agent presents the credential in its data directory; to replace the host, remove the worker first: fleet workers rm ${id}`,
    { param: "worker_id" },
  );
}

/** Clears a rotation in progress. */
const noRotation = {
  pendingCredentialHash: null,
  pendingAgentToken: null,
  rotateRequestedAt: null,
} as const;

/** The pending pair becomes the current one (the agent showed it has stored it). */
function promotion(before: WorkerRow) {
  return {
    credentialHash: before.pendingCredentialHash,
    agentToken: before.pendingAgentToken,
    ...noRotation,
  };
}

function rotatedEvent(workerId: string) {
  return {
    kind: "worker.credentials_rotated",
    workerId,
    message:
      "the agent presented its new credential; routers and the manager use its new agent credential",
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
  caller: HeartbeatCaller = { kind: "open" },
): Promise<HeartbeatReply> {
  const now = ctx.clock.now();
  // One statement in the common case, and the authoritative credential check: the row is
  // written only when the presented hash is the worker's current or pending one, and it says
  // whether a rotation is asked for or the pending pair is being presented.
  const hash = caller.kind === "worker" ? caller.credentialHash : null;
  const rows = await ctx.fleetDb.query<{ previous: string; rotate: boolean; pending: boolean }>(sql`
    with old as (
      select status, rotate_requested_at is not null as rotate,
             coalesce(pending_credential_hash = ${hash}, false) as pending
      from workers
      where worker_id = ${workerId}
        and (${hash}::text is null or credential_hash = ${hash} or pending_credential_hash = ${hash})
      for update)
    update workers w set last_heartbeat = ${now.toISOString()}::timestamptz,
      -- A draining worker stays draining until its agent registers again: a heartbeat sent
      -- just before the drain must not bring its routes back.
      status = case when old.status = 'draining' then 'draining' else 'online' end
    from old where w.worker_id = ${workerId}
    returning old.status as previous, old.rotate as rotate, old.pending as pending`);
  const row = rows[0];
  if (row === undefined) {
    ctx.credentials.forget(workerId);
    if (hash === null) throw workerNotFound(workerId);
    // Removed, or rotated past this credential, since the middleware looked.
    const [exists] = await ctx.db
      .select({ workerId: schema.workers.workerId })
      .from(schema.workers)
      .where(eq(schema.workers.workerId, workerId));
    throw exists ? notThisWorker(workerId) : workerNotFound(workerId);
  }
  const previous = row.previous;
  ctx.loads.record(workerId, beat.instances, now.getTime());
  const credentials =
    hash === null ? undefined : await rotation(ctx, workerId, { hash, ...row }, now);
  // Logged by the lifecycle, with its `worker.online` event.
  const cameBack = previous === "offline";
  if (ctx.heartbeats.gpusChanged(workerId, beat.gpu_info)) {
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
  if (cameBack || ctx.heartbeats.reportsDue(workerId, beat.instances, now)) {
    const complete = await applyReports(
      ctx,
      workerId,
      beat.instances,
      now,
      cameBack ? { cameBackFrom: previous } : {},
    );
    // A report set aside for now (a restart's stale one) is compared again next time.
    if (complete) ctx.heartbeats.applied(workerId, beat.gpu_info, beat.instances, now);
    else ctx.heartbeats.forget(workerId);
  } else {
    ctx.heartbeats.gpusWritten(workerId, beat.gpu_info);
    if (ctx.heartbeats.progressDue(workerId, beat.instances)) {
      await writeProgress(ctx, workerId, beat.instances, now);
      ctx.heartbeats.progressWritten(workerId, beat.instances);
    }
  }
  return {
    heartbeat_interval_s: ctx.config.heartbeatIntervalS,
    ...(credentials ? { credentials } : {}),
  };
}

/**
 * A starting engine's progress moved within its phase (a percentage, a log line): one
 * statement for all of this worker's starting engines, no event, no transaction. Only while
 * engines start; the phase changes themselves take the full path and record their events.
 */
async function writeProgress(
  ctx: ManagerContext,
  workerId: string,
  reports: InstanceReport[],
  now: Date,
): Promise<void> {
  const values = reports.flatMap((r) =>
    r.progress && r.status === "starting"
      ? [sql`(${r.alias}, ${JSON.stringify(storedProgress(r.progress, now))}::jsonb)`]
      : [],
  );
  if (values.length === 0) return;
  await ctx.fleetDb.query(sql`
    update instances i set progress = v.progress
    from (values ${sql.join(values, sql`, `)}) as v(alias, progress)
    where i.worker_id = ${workerId} and i.alias = v.alias and i.status = 'starting'`);
}

/**
 * `POST /v1/workers/{id}/drain`: the agent is stopping. The worker becomes `draining`: its
 * routes stop being served in this transaction (the route version moves, and the mounted
 * router sees it before the reply), placement passes it by, and its heartbeats keep it
 * draining. Its instances stay as they are; when the agent has exited and the worker goes
 * silent, the sweep marks it offline and its instances are lost and replaced, as for any
 * silent worker. A registration (the agent started again) makes it online. Draining twice
 * changes nothing.
 */
export async function drainWorker(
  ctx: ManagerContext,
  workerId: string,
  drain: WorkerDrain,
  caller: HeartbeatCaller = { kind: "open" },
): Promise<WorkerDrainReply> {
  const now = ctx.clock.now();
  const hash = caller.kind === "worker" ? caller.credentialHash : null;
  const unserved = await ctx.lifecycle.write(now, async (w) => {
    const [before] = await w.tx
      .select()
      .from(schema.workers)
      .where(eq(schema.workers.workerId, workerId))
      .for("update");
    if (!before) throw workerNotFound(workerId);
    // Removed or rotated since the middleware looked: the credential no longer opens it.
    if (
      hash !== null &&
      !sameSecret(before.credentialHash, hash) &&
      !sameSecret(before.pendingCredentialHash, hash)
    ) {
      throw notThisWorker(workerId);
    }
    if (before.status === "draining") return 0;
    // The drain counts as a sign of life: the sweep's timeout runs from here.
    await w.tx
      .update(schema.workers)
      .set({ status: "draining", lastHeartbeat: now, updatedAt: now })
      .where(eq(schema.workers.workerId, workerId));
    const timeout = drain.timeout_s === undefined ? "" : ` (waits up to ${drain.timeout_s} s)`;
    return w.workerDraining(workerId, before.status, `${drain.reason}${timeout}`);
  });
  return {
    worker_id: workerId,
    status: "draining",
    routes_unserved: unserved,
    routes_version: ctx.routes.current()?.version ?? null,
  };
}

/**
 * The rotation steps a heartbeat carries. With the pending credential, the agent has stored
 * the new pair: it becomes current (the route version moves with the agent credential, so
 * routers switch within one refresh). With the current credential while a rotation is
 * requested: a new pending pair, returned in this reply (a fresh one each time until the agent
 * uses it, since an earlier reply may have been lost).
 */
async function rotation(
  ctx: ManagerContext,
  workerId: string,
  caller: { hash: string; pending: boolean; rotate: boolean },
  now: Date,
): Promise<WorkerCredentials | undefined> {
  if (caller.pending) {
    const promoted = await ctx.lifecycle.write(now, async (w) => {
      const [before] = await w.tx
        .select()
        .from(schema.workers)
        .where(eq(schema.workers.workerId, workerId))
        .for("update");
      if (!before || !sameSecret(before.pendingCredentialHash, caller.hash)) return false;
      await w.tx
        .update(schema.workers)
        .set({ ...promotion(before), updatedAt: now })
        .where(eq(schema.workers.workerId, workerId));
      w.event(rotatedEvent(workerId));
      w.routesChanged();
      return true;
    });
    if (promoted) {
      ctx.credentials.remember(workerId, caller.hash);
      ctx.log.info("worker credentials rotated", { worker_id: workerId });
    }
    return undefined;
  }
  if (!caller.rotate) return undefined;
  const next = await newCredentials();
  const updated = await ctx.db
    .update(schema.workers)
    .set({
      pendingCredentialHash: next.credentialHash,
      pendingAgentToken: next.credentials.agent_token,
    })
    .where(
      and(
        eq(schema.workers.workerId, workerId),
        eq(schema.workers.credentialHash, caller.hash),
        isNotNull(schema.workers.rotateRequestedAt),
      ),
    )
    .returning({ workerId: schema.workers.workerId });
  if (updated.length === 0) return undefined;
  ctx.credentials.seed(next.credentials.worker_credential, next.credentialHash);
  ctx.log.info("new credentials handed to the agent", { worker_id: workerId });
  return next.credentials;
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

/**
 * Desired (instance rows) against actual (what the agent reports) for one worker:
 * - a reported engine with a row: the row takes the report's status, port, pid, restarts and
 *   error (adoption after a manager restart: nothing is relaunched), its route readiness
 *   follows; events only for status changes. `stopped` is recorded as `failed`: the model
 *   still wants the engine, so it is retried. An engine of another spec than the manager
 *   asked for (`specMismatch`) is failed and stopped, whatever its status;
 * - a reported engine without a row: adopted when it runs the model's spec and the model
 *   wants another replica, else stopped (nobody wants it);
 * - a row the agent no longer reports (and not just launched): failed, so it is retried.
 * False when a report was set aside for now (the old engine's `ready` while a restart is
 * being asked of the agent): the next heartbeat must be compared again.
 */
export async function applyReports(
  ctx: ManagerContext,
  workerId: string,
  reports: InstanceReport[],
  now: Date,
  options: { cameBackFrom?: string } = {},
): Promise<boolean> {
  const graceMs = (ctx.config.heartbeatIntervalS * 2 + ctx.config.agentTimeoutS) * 1000;
  // The longest a restart's call to the agent takes (internal, then public), and a heartbeat.
  const restartAnswerMs = (ctx.config.agentTimeoutS * 2 + ctx.config.heartbeatIntervalS) * 1000;
  const stops: { alias: string; reason: string }[] = [];
  let setAside = false;
  await ctx.lifecycle.write(now, async (w) => {
    if (options.cameBackFrom !== undefined) w.workerOnline(workerId, options.cameBackFrom);
    const [worker] = await w.tx
      .select()
      .from(schema.workers)
      .where(eq(schema.workers.workerId, workerId));
    if (!worker) return;
    w.knowWorker(worker);
    // Locked in id order: a launch reply or a second report for this worker waits its turn
    // instead of being overwritten by facts read before it.
    const rows = await w.tx
      .select({
        instance: schema.instances,
        route: schema.routes,
        model: schema.models,
      })
      .from(schema.instances)
      .innerJoin(schema.models, eq(schema.models.alias, schema.instances.alias))
      .leftJoin(schema.routes, eq(schema.routes.instanceId, schema.instances.id))
      .where(eq(schema.instances.workerId, workerId))
      .orderBy(asc(schema.instances.id))
      .for("update", { of: schema.instances });
    w.knowRoutes(rows.map((r) => r.route));
    const byAlias = new Map(rows.map((r) => [r.instance.alias, r]));
    const reported = new Set(reports.map((r) => r.alias));

    const unknown: InstanceReport[] = [];
    for (const report of reports) {
      const row = byAlias.get(report.alias);
      if (!row) {
        unknown.push(report);
        continue;
      }
      // Another model, other GPUs or other engine arguments than the manager asked for (an
      // engine relaunched behind its back, say with --trust-remote-code): never served.
      const mismatch = specMismatch(instanceSpec(row.model, row.instance), report);
      if (mismatch) {
        stops.push({ alias: report.alias, reason: mismatch });
        await w.specMismatch(row.instance, mismatch);
        continue;
      }
      // A restart claimed the row (ready → stopping) and is asking the agent: a report of the
      // old engine still ready (its pid) was sent before the agent took the restart, and must
      // not serve the route again. Ignored only while the manager may still be waiting on
      // the agent's answer, so a manager that died mid-restart leaves nothing stuck.
      if (
        report.status === "ready" &&
        row.instance.status === "stopping" &&
        report.pid !== null &&
        report.pid === row.instance.pid &&
        now.getTime() - row.instance.updatedAt.getTime() < restartAnswerMs
      ) {
        setAside = true;
        continue;
      }
      const status = report.status === "stopped" ? "failed" : report.status;
      const error =
        report.status === "stopped"
          ? (report.last_error ?? "the engine was stopped on the worker")
          : report.last_error;
      await w.reported(row.instance, {
        status,
        port: report.port,
        pid: report.pid,
        restarts: report.restarts,
        lastError: error ?? (status === "ready" ? null : row.instance.lastError),
      });
      await w.progressed(row.instance, row.model.modelName, report.progress);
    }

    for (const { instance } of rows) {
      if (reported.has(instance.alias)) continue;
      const vanished =
        instance.status === "lost" ||
        ((instance.status === "starting" ||
          instance.status === "ready" ||
          instance.status === "stopping") &&
          now.getTime() - instance.updatedAt.getTime() > graceMs);
      if (vanished) {
        await w.vanished(
          instance,
          `worker ${workerId} no longer reports this engine (was ${instance.status})`,
        );
      }
    }

    if (unknown.length > 0) {
      const aliases = [...new Set(unknown.map((r) => r.alias))];
      const models = await w.tx
        .select()
        .from(schema.models)
        .where(inArray(schema.models.alias, aliases));
      const active = await w.tx
        .select({ alias: schema.instances.alias, n: sql<number>`count(*)::int` })
        .from(schema.instances)
        .where(
          and(
            inArray(schema.instances.alias, aliases),
            inArray(schema.instances.status, [...claimingInstanceStatuses]),
          ),
        )
        .groupBy(schema.instances.alias);
      const counts = new Map(active.map((a) => [a.alias, Number(a.n)]));
      for (const report of unknown) {
        const model = models.find((m) => m.alias === report.alias);
        const live = report.status === "starting" || report.status === "ready";
        // What the manager would have asked for on the GPUs the engine holds (or the ones the
        // model pins): an engine of another spec is never adopted.
        const mismatch =
          model &&
          specMismatch(
            instanceSpec(model, {
              gpuIds: model.gpuIds?.length ? model.gpuIds : report.gpu_ids,
              gpuMemoryUtilization: model.gpuMemoryUtilization,
            }),
            report,
          );
        const wanted = model && !mismatch && (counts.get(report.alias) ?? 0) < model.replicas;
        if (model && live && wanted) {
          if (await w.adopted(worker, model, report)) {
            counts.set(report.alias, (counts.get(report.alias) ?? 0) + 1);
          }
        } else if (report.status !== "stopped" && report.status !== "stopping") {
          const reason = !model
            ? "no model has this alias"
            : (mismatch ?? "the model has all its replicas elsewhere");
          stops.push({ alias: report.alias, reason });
        }
      }
    }
  });
  if (stops.length > 0) stopUnwanted(ctx, workerId, stops);
  return !setAside;
}

/** Stops engines nobody wants, without holding up the heartbeat; repeated at most every 30 s. */
function stopUnwanted(
  ctx: ManagerContext,
  workerId: string,
  stops: { alias: string; reason: string }[],
): void {
  void (async () => {
    const [worker] = await ctx.db
      .select(agentAddressColumns)
      .from(schema.workers)
      .where(eq(schema.workers.workerId, workerId));
    if (!worker) return;
    for (const { alias, reason } of stops) {
      const result = await ctx.launcher.stop(worker, alias, {
        unlessAskedWithinMs: STOP_REPEAT_MS,
      });
      if (!result) continue;
      ctx.log.info("stopping an engine nobody wants", { worker_id: workerId, alias, reason });
      await recordEvents(ctx.db, ctx.clock.now(), [
        {
          kind: result.ok ? "instance.unwanted_stopped" : "instance.unwanted_stop_failed",
          workerId,
          alias,
          message: result.ok ? reason : `${reason}; ${result.error}`,
        },
      ]);
      ctx.heartbeats.forget(workerId);
    }
  })().catch((error) =>
    ctx.log.warn("stopping unwanted engines failed", {
      worker_id: workerId,
      error: describeError(error),
    }),
  );
}
