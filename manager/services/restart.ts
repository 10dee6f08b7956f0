/**
 * Restarting one instance (`POST /v1/instances/{id}/restart`): the row is claimed through the
 * lifecycle (`ready` → `stopping`, route unserved, `instance.restarted` with who asked), then
 * the agent is asked to stop the engine and launch it again on the same GPUs and port. Its
 * reports bring the row back through `starting` (with the new launch's progress) to `ready`.
 * An agent that does not take it leaves the row as it was (`restart_failed`).
 */
import { eq } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import type { InstanceRow, WorkerRow } from "../../db/schema/index.ts";
import { AppError } from "../../kit/errors.ts";
import type { InstanceRecord, InstanceRestart } from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import { progressReader } from "./progress.ts";
import { instanceRecord } from "./wire.ts";

/** How the caller was let in, for the event (the request's own `requested_by` is its claim). */
export type RestartCaller = { auth: "admin token" | "open (no ADMIN_TOKEN, loopback)" };

/**
 * Why an instance cannot be restarted now, or undefined when it can: only a ready instance on
 * an online worker restarts. Each reason says what happens instead.
 */
export function restartRefusal(
  instance: Pick<InstanceRow, "id" | "alias" | "workerId" | "status">,
  worker: Pick<WorkerRow, "status">,
): string | undefined {
  const what = `instance ${instance.id} (${instance.alias} on ${instance.workerId})`;
  switch (instance.status) {
    case "ready":
      break;
    case "pending":
      return `${what} is pending: its launch has not been accepted by the agent yet, so there is no engine to restart`;
    case "starting":
      return `${what} is starting: its engine is loading already; wait until it is ready (fleet models wait ${instance.alias})`;
    case "stopping":
      return `${what} is stopping: a restart (or a stop) is already under way`;
    case "failed":
      return `${what} has failed: the manager relaunches failed instances itself, with backoff (see next_retry_at in GET /v1/models/${instance.alias})`;
    case "lost":
      return `${what} is lost: worker ${instance.workerId} is offline; the instance is placed elsewhere after RESCHEDULE_AFTER_S`;
    case "stopped":
      return `${what} is stopped`;
  }
  if (worker.status === "draining") {
    return `${what} cannot be restarted: worker ${instance.workerId} is draining (its agent is stopping); its instances are placed elsewhere once it goes offline`;
  }
  if (worker.status !== "online") {
    return `${what} cannot be restarted: worker ${instance.workerId} is ${worker.status}`;
  }
  return undefined;
}

/**
 * Restarts one instance. Throws 404 `instance_not_found`, 409 `conflict` (a state that cannot
 * restart, a restart already under way, an agent that refused) or 502 `upstream_error` (the
 * agent could not be reached: nothing was restarted, the instance is ready as before).
 * Returns the instance as recorded once the agent took the restart.
 */
export async function restartInstance(
  ctx: ManagerContext,
  id: string,
  request: InstanceRestart,
  caller: RestartCaller,
): Promise<InstanceRecord> {
  const requestedBy = request.requested_by ?? "api";
  const claimed = await ctx.lifecycle.write(ctx.clock.now(), async (w) => {
    // Locked as heartbeats lock the worker's rows: a report waits for the claim, or the
    // claim for the report, and the loser reads what the winner wrote.
    const [row] = await w.tx
      .select({
        instance: schema.instances,
        worker: schema.workers,
        modelName: schema.models.modelName,
      })
      .from(schema.instances)
      .innerJoin(schema.workers, eq(schema.workers.workerId, schema.instances.workerId))
      .innerJoin(schema.models, eq(schema.models.alias, schema.instances.alias))
      .where(eq(schema.instances.id, id))
      .for("update", { of: schema.instances });
    if (!row) throw new AppError("instance_not_found", `no instance ${id}`, { param: "id" });
    const refusal = restartRefusal(row.instance, row.worker);
    if (refusal) throw new AppError("conflict", refusal, { param: "id" });
    w.knowWorker(row.worker);
    const message = `restart requested by ${requestedBy}${request.reason ? `: ${request.reason}` : ""}`;
    const moved = await w.restarted(
      row.instance,
      {
        requested_by: requestedBy,
        auth: caller.auth,
        reason: request.reason ?? null,
        pid: row.instance.pid,
        port: row.instance.port,
        gpu_ids: row.instance.gpuIds,
        restarts: row.instance.restarts,
      },
      message,
    );
    if (!moved) {
      throw new AppError("conflict", `instance ${id} changed meanwhile: try again`, {
        param: "id",
      });
    }
    return row;
  });
  const { instance, worker, modelName } = claimed;
  const result = await ctx.agents.restart(worker, instance.alias);

  const settled = await ctx.lifecycle.write(ctx.clock.now(), async (w) => {
    const [row] = await w.tx
      .select()
      .from(schema.instances)
      .where(eq(schema.instances.id, id))
      .for("update");
    if (!row) return undefined;
    if (result.ok) {
      if (result.value) await w.restartAccepted(row, result.value);
      return undefined;
    }
    // The agent has no such engine (it was lost or stopped behind the manager's back):
    // failed, so the reconciler launches it again. Anything else: the engine runs as it did.
    const gone = result.status === 404 && result.code === "instance_not_found";
    const why = gone
      ? `worker ${worker.workerId} has no engine for ${instance.alias} (${result.error}); the manager relaunches it`
      : result.status === 404
        ? `the agent on ${worker.workerId} cannot restart engines (${result.error}): upgrade it`
        : `worker ${worker.workerId} did not restart ${instance.alias}: ${result.error}`;
    await w.restartFailed(row, gone ? "failed" : "ready", why);
    return { why, gone };
  });
  if (!result.ok) {
    const why = settled?.why ?? result.error;
    if (result.status === null || result.status >= 500 || result.status === 401) {
      throw new AppError(
        "upstream_error",
        `${why}. Nothing was restarted: instance ${id} is ${settled?.gone ? "failed" : "ready"} as before`,
      );
    }
    throw new AppError("conflict", why, { param: "id" });
  }
  const [row] = await ctx.db.select().from(schema.instances).where(eq(schema.instances.id, id));
  if (!row) throw new AppError("instance_not_found", `instance ${id} was removed meanwhile`);
  const progress = await progressReader(ctx.db, [{ row, modelName }], ctx.clock.now());
  return instanceRecord(row, { progress });
}
