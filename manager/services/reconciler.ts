import { and, asc, count, eq, inArray, lt, sql } from "drizzle-orm";
import { type Db, schema } from "../../db/index.ts";
import type { InstanceRow } from "../../db/schema/index.ts";
import { describeError } from "../../kit/errors.ts";
import type { ManagerContext } from "../context.ts";
import { recordEvents } from "./events.ts";
import { gpuRefusal, place } from "./placement.ts";
import { loadPlacementState, lockPlacement, placementRequest } from "./placement-store.ts";

const SWEEP_LOCK = 0x766c6c6d_73776570n; // "vllmswep"
const RECONCILE_LOCK = 0x766c6c6d_72636e6cn; // "vllmrcnl"

export type TickResult = {
  /** Workers this tick marked offline. */
  offline: string[];
  /** Instances this tick (re)launched: retries, replacements, stale pending launches. */
  launched: string[];
  holdingOff: boolean;
  /** False when another replica held a lock, so this one skipped that loop. */
  sweptHere: boolean;
  reconciledHere: boolean;
};

/**
 * One round of the background loops, each under its own advisory lock so that only one
 * manager replica acts: the liveness sweep, then reconciliation. Launches run after the
 * locks are released (they wait on agents). Driven by a timer in the entries.
 *
 * The probes of workers' URLs that are due start beside them and are not awaited: a round
 * waits on agents (up to PROBE_TIMEOUT_MS each) and must not hold up the sweep. They need
 * no lock: each probe claims its worker first (probes.ts), so managers share the work.
 */
export async function tick(ctx: ManagerContext): Promise<TickResult> {
  const started = performance.now();
  void ctx.prober.round();
  const offline = await ctx.fleetDb.tryWithLock(SWEEP_LOCK, () => sweep(ctx));
  const launches = await ctx.fleetDb.tryWithLock(RECONCILE_LOCK, () => reconcile(ctx));
  if (launches && launches.length > 0)
    await Promise.all(launches.map((id) => ctx.launcher.launch(id)));
  ctx.instruments.reconcileRound((performance.now() - started) / 1000, ctx.holdingOff);
  return {
    offline: offline ?? [],
    launched: launches ?? [],
    holdingOff: ctx.holdingOff,
    sweptHere: offline !== undefined,
    reconciledHere: launches !== undefined,
  };
}

/**
 * Marks workers offline after WORKER_TIMEOUT_S without a heartbeat: their instances become
 * `lost` and their routes stop being served. For one timeout after this manager starts it
 * marks nobody: agents need that long to reach a manager that was down or restarting.
 */
export async function sweep(ctx: ManagerContext): Promise<string[]> {
  const now = ctx.clock.now();
  const timeoutMs = ctx.config.workerTimeoutS * 1000;
  if (now.getTime() - ctx.startedAt < timeoutMs) return [];
  const cutoff = new Date(now.getTime() - timeoutMs);
  // A draining worker whose agent has exited goes the same way: silent, then offline, its
  // instances lost and replaced (docs/agent.md "Drain").
  const gone = await ctx.lifecycle.write(now, async (w) => {
    const silent = await w.tx
      .select({
        workerId: schema.workers.workerId,
        status: schema.workers.status,
        lastHeartbeat: schema.workers.lastHeartbeat,
      })
      .from(schema.workers)
      .where(
        and(
          inArray(schema.workers.status, ["online", "draining"]),
          lt(schema.workers.lastHeartbeat, cutoff),
        ),
      )
      .orderBy(asc(schema.workers.workerId))
      .for("update");
    const gone: string[] = [];
    for (const worker of silent) {
      const [marked] = await w.tx
        .update(schema.workers)
        .set({ status: "offline" })
        .where(
          and(
            eq(schema.workers.workerId, worker.workerId),
            eq(schema.workers.status, worker.status),
            lt(schema.workers.lastHeartbeat, cutoff),
          ),
        )
        .returning({ workerId: schema.workers.workerId });
      if (!marked) continue;
      const silentS = Math.round((now.getTime() - worker.lastHeartbeat.getTime()) / 1000);
      const drained = worker.status === "draining" ? "drained and " : "";
      await w.workerOffline(
        worker.workerId,
        `${drained}no heartbeat for ${silentS} s (WORKER_TIMEOUT_S ${ctx.config.workerTimeoutS})`,
        worker.status,
      );
      gone.push(worker.workerId);
    }
    return gone;
  });
  ctx.instruments.reconcile("mark_offline", gone.length);
  return gone;
}

/**
 * Desired against actual, fleet-wide. Returns the instances to launch:
 * 1. `lost` instances whose worker has been offline RESCHEDULE_AFTER_S past the timeout are
 *    replaced on workers that fit, unless more than half the workers are offline (then it
 *    is a network problem, not dead hosts: hold off);
 * 2. `failed` instances are retried with capped exponential backoff (on their worker when
 *    it still fits, else wherever placement finds room); the backoff counts recent failures:
 *    an instance ready for LAUNCH_RETRY_RESET_S starts again from the base delay;
 * 3. `pending` instances whose launch call never completed (a manager crash between the
 *    placement and the call) are launched again.
 */
export async function reconcile(ctx: ManagerContext): Promise<string[]> {
  const now = ctx.clock.now();
  const launches: string[] = [];

  const [totals] = await ctx.db
    .select({
      total: count(),
      offline: sql<number>`count(*) filter (where ${schema.workers.status} = 'offline')::int`,
    })
    .from(schema.workers);
  const total = Number(totals?.total ?? 0);
  const offline = Number(totals?.offline ?? 0);
  const holdOff = offline * 2 > total && offline > 0;
  if (holdOff !== ctx.holdingOff) {
    ctx.holdingOff = holdOff;
    const message = `${offline} of ${total} workers offline`;
    if (holdOff) {
      ctx.log.warn("holding off rescheduling: most workers went silent", { offline, total });
      ctx.instruments.reconcile("hold_off");
    }
    await recordEvents(ctx.db, now, [
      { kind: holdOff ? "reconcile.hold_off" : "reconcile.resumed", message },
    ]);
  }

  if (!holdOff) {
    const lostCutoff = new Date(
      now.getTime() - (ctx.config.workerTimeoutS + ctx.config.rescheduleAfterS) * 1000,
    );
    const lost = await ctx.db
      .select({ id: schema.instances.id })
      .from(schema.instances)
      .innerJoin(schema.workers, eq(schema.workers.workerId, schema.instances.workerId))
      .where(
        and(
          eq(schema.instances.status, "lost"),
          eq(schema.workers.status, "offline"),
          lt(schema.workers.lastHeartbeat, lostCutoff),
        ),
      );
    for (const { id } of lost) {
      const replacement = await guarded(ctx, "replace", id, () => replaceLost(ctx, id, now));
      if (replacement) {
        launches.push(replacement);
        ctx.instruments.reconcile("replace");
      }
    }
  }

  // One bad hour must not make every later relaunch wait the maximum: a stable stretch of
  // readiness forgets the failures before it.
  const stableSince = new Date(now.getTime() - ctx.config.launchRetryResetS * 1000);
  await ctx.lifecycle.write(now, (w) => w.forgetFailures(stableSince));

  const failed = await ctx.db
    .select({
      id: schema.instances.id,
      updatedAt: schema.instances.updatedAt,
      failures: schema.instances.failures,
    })
    .from(schema.instances)
    .where(eq(schema.instances.status, "failed"));
  for (const row of failed) {
    if (now.getTime() - row.updatedAt.getTime() < retryDelayMs(ctx, row.failures)) continue;
    const retried = await guarded(ctx, "retry", row.id, () => retryFailed(ctx, row.id, now));
    if (retried) {
      launches.push(retried);
      ctx.instruments.reconcile("retry");
    }
  }

  const staleCutoff = new Date(now.getTime() - (ctx.config.agentTimeoutS * 2 + 5) * 1000);
  const stale = await ctx.db
    .select({ id: schema.instances.id })
    .from(schema.instances)
    .innerJoin(schema.workers, eq(schema.workers.workerId, schema.instances.workerId))
    .where(
      and(
        eq(schema.instances.status, "pending"),
        eq(schema.workers.status, "online"),
        lt(schema.instances.updatedAt, staleCutoff),
      ),
    );
  for (const { id } of stale) {
    if (ctx.launcher.isLaunching(id)) continue;
    launches.push(id);
    ctx.instruments.reconcile("relaunch_pending");
  }
  return launches;
}

/** Capped exponential backoff: base, 2x base, 4x base, ... up to the maximum. */
export function retryDelayMs(ctx: ManagerContext, failures: number): number {
  const exponent = Math.max(0, Math.min(failures - 1, 30));
  return Math.min(ctx.config.launchRetryBaseS * 2 ** exponent, ctx.config.launchRetryMaxS) * 1000;
}

async function guarded(
  ctx: ManagerContext,
  what: string,
  id: string,
  fn: () => Promise<string | undefined>,
): Promise<string | undefined> {
  try {
    return await fn();
  } catch (error) {
    ctx.log.error(`reconcile ${what} failed`, { instance_id: id, error: describeError(error) });
    return undefined;
  }
}

/**
 * Takes the placement lock, then reads an instance and its model if it is still in `status`
 * (another manager replica, or this one's previous tick, may have handled it meanwhile), and
 * the fleet as placement sees it without that instance.
 */
async function lockedForPlacement(tx: Db, instanceId: string, status: InstanceRow["status"]) {
  await lockPlacement(tx);
  const [row] = await tx
    .select({ instance: schema.instances, model: schema.models })
    .from(schema.instances)
    .innerJoin(schema.models, eq(schema.models.alias, schema.instances.alias))
    .where(eq(schema.instances.id, instanceId));
  if (row?.instance.status !== status) return undefined;
  const state = await loadPlacementState(tx, { ignoreInstanceId: row.instance.id });
  return { ...row, state };
}

/** Moves a lost instance to a worker that fits: the old row (and route) go, a pending one comes. */
async function replaceLost(
  ctx: ManagerContext,
  instanceId: string,
  now: Date,
): Promise<string | undefined> {
  let blocked = false;
  const outcome = await ctx.lifecycle.write(now, async (w) => {
    blocked = false;
    const row = await lockedForPlacement(w.tx, instanceId, "lost");
    if (!row) return undefined;
    const { instance, model, state } = row;
    const result = place(state, {
      ...placementRequest(model, 1),
      exclude: new Set([instance.workerId]),
    });
    if (!result.ok) {
      await w.rescheduleBlocked(instance, `not rescheduled: ${result.message}`);
      blocked = true;
      return undefined;
    }
    const target = result.placements[0];
    if (!target) return undefined;
    const created = await w.rescheduled(instance, model, target);
    if (!created) return undefined;
    return { id: created.id, from: instance.workerId, to: target.workerId };
  });
  if (blocked) ctx.instruments.reconcile("replace_blocked");
  // The lifecycle logs the move (its `instance.rescheduled` event).
  return outcome?.id;
}

/**
 * Retries a failed instance: on its own worker and GPUs when they are online and still fit,
 * else wherever placement finds room (the old worker's leftover engine is then unwanted and
 * stopped on its next report). Nothing fits: the error says why and the backoff grows.
 */
async function retryFailed(
  ctx: ManagerContext,
  instanceId: string,
  now: Date,
): Promise<string | undefined> {
  let blocked = false;
  const retried = await ctx.lifecycle.write(now, async (w) => {
    blocked = false;
    const row = await lockedForPlacement(w.tx, instanceId, "failed");
    if (!row) return undefined;
    const { instance, model, state } = row;
    const home = state.find((worker) => worker.workerId === instance.workerId);
    const homeFits =
      home?.online === true &&
      !home.aliases.has(instance.alias) &&
      instance.gpuIds.length === model.tensorParallelSize &&
      instance.gpuIds.every((index) => {
        const gpu = home.gpus.find((g) => g.index === index);
        const claimed = home.instances
          .filter((i) => i.gpuIds.includes(index))
          .reduce((sum, i) => sum + i.claim, 0);
        return (
          gpu !== undefined && gpuRefusal(gpu, claimed, instance.gpuMemoryUtilization) === undefined
        );
      });
    let target = homeFits ? { workerId: instance.workerId, gpuIds: instance.gpuIds } : undefined;
    if (!target) {
      const result = place(state, placementRequest(model, 1));
      if (!result.ok) {
        await w.retryBlocked(instance, `retry not possible: ${result.message}`);
        blocked = true;
        return undefined;
      }
      target = result.placements[0];
    }
    if (!target) return undefined;
    return (await w.retried(instance, target)) ? instance.id : undefined;
  });
  if (blocked) ctx.instruments.reconcile("retry_blocked");
  return retried;
}
