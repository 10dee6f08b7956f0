/**
 * What an operator does to a worker: remove it (`DELETE /v1/workers/{id}`) and rotate its
 * credentials (`POST /v1/workers/{id}/rotate`). Instance rows move through the lifecycle.
 */
import { and, asc, eq, isNotNull } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import { AppError, describeError } from "../../kit/errors.ts";
import type { WorkerRemovalReply, WorkerRotationReply } from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import type { AgentAddress } from "./agent-client.ts";
import { recordEvents } from "./events.ts";
import { place } from "./placement.ts";
import { loadPlacementState, lockPlacement, placementRequest } from "./placement-store.ts";

/**
 * Removes a worker: each of its instances is marked lost and placed on another worker at
 * once (no wait for RESCHEDULE_AFTER_S: the operator said the host is gone), or dropped
 * when nothing else fits; its routes go with it and the row is deleted, so its credentials
 * stop working. After the commit the replacements are launched and, in case the host is
 * still up, its agent is asked to stop the engines nobody wants any more.
 */
export async function removeWorker(
  ctx: ManagerContext,
  workerId: string,
): Promise<WorkerRemovalReply> {
  const now = ctx.clock.now();
  const outcome = await ctx.lifecycle.write(now, async (w) => {
    await lockPlacement(w.tx);
    const [worker] = await w.tx
      .select()
      .from(schema.workers)
      .where(eq(schema.workers.workerId, workerId))
      .for("update");
    if (!worker) {
      throw new AppError("worker_not_found", `no worker with id ${workerId}`, {
        param: "worker_id",
      });
    }
    const rows = await w.tx
      .select({ instance: schema.instances, model: schema.models })
      .from(schema.instances)
      .innerJoin(schema.models, eq(schema.models.alias, schema.instances.alias))
      .where(eq(schema.instances.workerId, workerId))
      .orderBy(asc(schema.instances.id))
      .for("update", { of: schema.instances });
    const reason = `worker ${workerId} was removed`;
    const rescheduled: WorkerRemovalReply["rescheduled"] = [];
    const dropped: WorkerRemovalReply["dropped"] = [];
    for (const { instance, model } of rows) {
      let lost = instance;
      if (instance.status !== "lost") {
        if (!(await w.evicted(instance, reason))) continue;
        lost = { ...instance, status: "lost", lastError: reason };
      }
      // Read again for each: the replacements placed so far claim their GPUs too.
      const state = await loadPlacementState(w.tx, { ignoreInstanceId: instance.id });
      const result = place(state, {
        ...placementRequest(model, 1),
        exclude: new Set([workerId]),
      });
      const target = result.ok ? result.placements[0] : undefined;
      const created = target
        ? await w.rescheduled(lost, model, target, `replaces ${instance.id}: ${reason}`)
        : undefined;
      if (created && target) {
        rescheduled.push({
          alias: instance.alias,
          instance_id: created.id,
          worker_id: target.workerId,
        });
        continue;
      }
      const why = result.ok ? "placement found no worker" : result.message;
      await w.dropped(lost, `${reason}; not placed elsewhere: ${why}`);
      dropped.push({ alias: instance.alias, reason: why });
    }
    await w.tx.delete(schema.workers).where(eq(schema.workers.workerId, workerId));
    w.event({
      kind: "worker.removed",
      workerId,
      fromStatus: worker.status,
      message: reason,
      detail: { rescheduled, dropped },
    });
    w.routesChanged();
    const address: AgentAddress = worker;
    return { rescheduled, dropped, address, aliases: rows.map((r) => r.instance.alias) };
  });
  ctx.heartbeats.forget(workerId);
  ctx.credentials.forget(workerId);
  stopLeftovers(ctx, outcome.address, outcome.aliases);
  await Promise.all(outcome.rescheduled.map((r) => ctx.launcher.launch(r.instance_id)));
  return {
    worker_id: workerId,
    deleted: true,
    rescheduled: outcome.rescheduled,
    dropped: outcome.dropped,
  };
}

/**
 * A removed host that is still up keeps its engines (and GPUs) busy for nobody: ask its
 * agent to stop them, without holding up the reply. A host that is gone just does not answer.
 */
function stopLeftovers(ctx: ManagerContext, worker: AgentAddress, aliases: string[]): void {
  if (aliases.length === 0) return;
  void Promise.all(aliases.map((alias) => ctx.agents.stop(worker, alias))).then(
    (results) => {
      const failed = results.filter((r) => !r.ok).length;
      if (failed > 0) {
        ctx.log.info("could not stop engines on a removed worker (it may be down)", {
          worker_id: worker.workerId,
          failed,
        });
      }
    },
    (error) =>
      ctx.log.warn("stopping engines on a removed worker failed", {
        worker_id: worker.workerId,
        error: describeError(error),
      }),
  );
}

/**
 * Asks for new credentials for a worker: its next authenticated heartbeat gets a new pair
 * in the reply, and the pair becomes current when the agent first presents it.
 */
export async function requestRotation(
  ctx: ManagerContext,
  workerId: string,
): Promise<WorkerRotationReply> {
  const now = ctx.clock.now();
  const rows = await ctx.db
    .update(schema.workers)
    .set({ rotateRequestedAt: now })
    .where(and(eq(schema.workers.workerId, workerId), isNotNull(schema.workers.credentialHash)))
    .returning({ workerId: schema.workers.workerId });
  if (rows.length === 0) {
    const [exists] = await ctx.db
      .select({ workerId: schema.workers.workerId })
      .from(schema.workers)
      .where(eq(schema.workers.workerId, workerId));
    if (!exists) {
      throw new AppError("worker_not_found", `no worker with id ${workerId}`, {
        param: "worker_id",
      });
    }
    throw new AppError(
      "conflict",
      `worker ${workerId} holds no credentials to rotate: it registered without the join token (the manager runs without FLEET_TOKEN)`,
      { param: "worker_id" },
    );
  }
  await recordEvents(ctx.db, now, [
    {
      kind: "worker.rotation_requested",
      workerId,
      message: "the next heartbeat reply carries new credentials",
    },
  ]);
  ctx.log.info("credential rotation requested", { worker_id: workerId });
  return { worker_id: workerId, status: "rotation_requested" };
}
