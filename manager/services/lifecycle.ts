/**
 * The instance lifecycle: the one module that writes instance state. Each transition
 * updates the instance row, the `routes` row that mirrors it (served only when the instance
 * is ready, its worker online and its routed path not known unreachable), records its event, and notes the cache changes (the
 * heartbeat memo of the workers whose rows moved, the route snapshot) that `Lifecycle.write`
 * applies once its transaction has committed. The allowed transitions are the table below;
 * a transition the table does not allow, or one whose row moved meanwhile, is ignored
 * (the call answers false) and writes nothing. docs/manager.md prints the table.
 */
import { and, asc, eq, inArray, lte, ne, or, sql } from "drizzle-orm";
import { type Db, schema } from "../../db/index.ts";
import type { InstanceRow, ModelRow, RouteRow, WorkerRow } from "../../db/schema/index.ts";
import type { Logger } from "../../kit/log.ts";
import {
  type InstanceProgress,
  type InstanceRecordStatus,
  type InstanceReport,
  instanceRecordStatuses,
} from "../../protocol/index.ts";
import type { AgentAddress } from "./agent-client.ts";
import { type EventInput, recordEvents } from "./events.ts";
import type { Placement } from "./placement.ts";
import { phaseEvents, progressFingerprint, storedProgress } from "./progress.ts";

/** What causes a transition. */
export type Trigger =
  /**
   * the management API (`POST /v1/models/register`, `DELETE /v1/models/{alias}`,
   * `DELETE /v1/workers/{id}`, `POST /v1/instances/{id}/restart` and the agent's answer to it)
   */
  | "api"
  /** the agent's answer to the manager's launch call (`POST /v1/instances`) */
  | "launch-reply"
  /** what an agent reports about its engines (registration, heartbeat) */
  | "agent-report"
  /** the background loop (`tick()`): liveness sweep, retries, rescheduling */
  | "reconciler";

/** An instance status, or `null`: no row (before a creation, after a removal). */
export type RowStatus = InstanceRecordStatus | null;

export type TransitionSpec = {
  from: readonly RowStatus[];
  to: readonly RowStatus[];
  by: Trigger;
  /** The `events.kind` it records; `instance.<to>` names the status reached. */
  event: string;
  /**
   * Self-loops that only record why nothing moved: `always` writes (the time and an event)
   * each time, `when-changed` only when the error text changes.
   */
  note?: "always" | "when-changed";
};

const ANY = instanceRecordStatuses;
/** What an agent's report makes of a row: its own statuses, `stopped` recorded as `failed`. */
const REPORTED = ["starting", "ready", "failed", "stopping"] as const;
/** An engine that is (or is about to be) on its worker: lost when the worker goes silent. */
const LIVE = ["pending", "starting", "ready", "stopping"] as const;

/**
 * Every allowed transition. `stopped` is never reached: an agent's `stopped` engine is
 * recorded as `failed` (the model still wants it, so it is retried), and deleting the model
 * removes the rows.
 */
export const instanceTransitions = {
  placed: { from: [null], to: ["pending"], by: "api", event: "instance.placed" },
  launched: {
    from: ["pending"],
    to: ["starting", "ready", "failed"],
    by: "launch-reply",
    event: "instance.launched",
  },
  launch_failed: {
    from: ["pending"],
    to: ["failed"],
    by: "launch-reply",
    event: "instance.launch_failed",
  },
  reported: { from: ANY, to: REPORTED, by: "agent-report", event: "instance.<to>" },
  spec_mismatch: {
    from: ANY,
    to: ["failed"],
    by: "agent-report",
    event: "instance.spec_mismatch",
    note: "when-changed",
  },
  vanished: {
    from: ["starting", "ready", "stopping", "lost"],
    to: ["failed"],
    by: "agent-report",
    event: "instance.failed",
  },
  adopted: {
    from: [null],
    to: ["starting", "ready"],
    by: "agent-report",
    event: "instance.adopted",
  },
  lost: { from: LIVE, to: ["lost"], by: "reconciler", event: "instance.lost" },
  rescheduled: { from: ["lost"], to: ["pending"], by: "reconciler", event: "instance.rescheduled" },
  reschedule_blocked: {
    from: ["lost"],
    to: ["lost"],
    by: "reconciler",
    event: "instance.reschedule_blocked",
    note: "when-changed",
  },
  retried: { from: ["failed"], to: ["pending"], by: "reconciler", event: "instance.retry" },
  retry_blocked: {
    from: ["failed"],
    to: ["failed"],
    by: "reconciler",
    event: "instance.retry_blocked",
    note: "always",
  },
  removed: { from: ANY, to: [null], by: "api", event: "model.deleted" },
  evicted: {
    from: [...LIVE, "failed"],
    to: ["lost"],
    by: "api",
    event: "instance.evicted",
  },
  dropped: { from: ["lost"], to: [null], by: "api", event: "instance.dropped" },
  /**
   * An operator restarts a ready engine: its route stops being served before the agent is
   * asked; the agent's reports then bring it through `starting` back to `ready`.
   */
  restarted: { from: ["ready"], to: ["stopping"], by: "api", event: "instance.restarted" },
  /**
   * The agent did not take the restart: unreachable or refused, the engine is as it was
   * (`ready`); it has no such engine (`failed`, relaunched by the reconciler).
   */
  restart_failed: {
    from: ["stopping"],
    to: ["ready", "failed"],
    by: "api",
    event: "instance.restart_failed",
  },
} as const satisfies Record<string, TransitionSpec>;

export type TransitionName = keyof typeof instanceTransitions;

/** Transitions that update a row in place (the others create or remove rows). */
export type UpdateTransition = Exclude<
  TransitionName,
  "placed" | "adopted" | "rescheduled" | "removed" | "dropped"
>;

/** Whether the table lets `name` take a row from `from` to `to`. */
export function allowed(name: TransitionName, from: RowStatus, to: RowStatus): boolean {
  const spec: TransitionSpec = instanceTransitions[name];
  return spec.from.includes(from) && spec.to.includes(to);
}

/** The URL routers use for a worker: its public (port-forwarding) URL when it has one. */
export function routeUrl(worker: Pick<WorkerRow, "workerUrl" | "publicWorkerUrl">): string {
  return worker.publicWorkerUrl ?? worker.workerUrl;
}

/**
 * What "ready" means for a route: its instance is ready, its worker online, and the path
 * routers take to it (its route URL) not known to be unreachable.
 */
export function routeReady(
  instance: Pick<InstanceRow, "status">,
  worker: RoutedPathFields & Pick<WorkerRow, "status">,
): boolean {
  return instance.status === "ready" && worker.status === "online" && !routedPathDown(worker);
}

type RoutedPathFields = Pick<
  WorkerRow,
  "publicWorkerUrl" | "internalReachable" | "publicReachable"
>;

/**
 * The manager's probes found the URL in the worker's routes (the public one when it has
 * one, as `routeUrl`) not answering. Unknown (never probed, probing off) is not down.
 */
export function routedPathDown(worker: RoutedPathFields): boolean {
  const reachable =
    worker.publicWorkerUrl === null ? worker.internalReachable : worker.publicReachable;
  return reachable === false;
}

/** The fields a transition may change; the others stay. */
export type InstanceChange = {
  status: InstanceRecordStatus;
  port?: number | null;
  pid?: number | null;
  restarts?: number;
  lastError?: string | null;
  workerId?: string;
  gpuIds?: number[];
  /** Defaults to now when the instance becomes ready, else unchanged. */
  readyAt?: Date | null;
};

/** Extra event fields (message, detail) beyond what the transition fills in. */
export type EventExtras = Pick<EventInput, "message" | "detail">;

type Effects = { workers: Set<string>; routes: boolean };

export type LifecycleDeps = {
  db: Db;
  /** The route snapshot: refreshed after a commit that changed what routers see. */
  routes: { refresh(): Promise<void> };
  /**
   * Told, after a commit, of each worker whose instance rows changed other than by its own
   * report (the heartbeat memo forgets it, so the next heartbeat compares again).
   */
  onWorkerChanged?: (workerId: string) => void;
  /**
   * Each committed event is logged here (model and worker changes, instance transitions):
   * the log and the `events` table tell the same story. Failures and losses at warn, the
   * rest at info.
   */
  log?: Logger;
};

/** Runs lifecycle transitions in one transaction and applies their cache changes after it. */
export class Lifecycle {
  constructor(private readonly deps: LifecycleDeps) {}

  /**
   * Runs `fn` in one transaction with a writer bound to it (`w.tx` for the caller's own rows:
   * models, workers, GPUs). Its events are written before the commit; after the commit the
   * memo is told of changed workers and the route snapshot is refreshed when routes moved.
   * If `fn` throws, nothing is written and no cache changes.
   */
  async write<T>(now: Date, fn: (w: LifecycleTx) => Promise<T>): Promise<T> {
    let effects: Effects | undefined;
    let events: EventInput[] = [];
    const result = await this.deps.db.transaction(async (tx) => {
      const w = new LifecycleTx(tx, now);
      const value = await fn(w);
      events = await w.flush();
      effects = w.effects;
      return value;
    });
    if (this.deps.log) for (const event of events) logEvent(this.deps.log, event);
    if (effects) {
      for (const workerId of effects.workers) this.deps.onWorkerChanged?.(workerId);
      if (effects.routes) await this.deps.routes.refresh();
    }
    return result;
  }
}

/** The transitions, bound to one transaction. Obtain one from `Lifecycle.write`. */
export class LifecycleTx {
  readonly effects: Effects = { workers: new Set(), routes: false };
  private readonly events: EventInput[] = [];
  private readonly workerRows = new Map<string, WorkerRow | undefined>();
  /** Routes the caller read in this transaction, by instance id: unchanged ones cost nothing. */
  private readonly routeRows = new Map<string, RouteRow>();

  constructor(
    readonly tx: Db,
    readonly now: Date,
  ) {}

  /** Records an event that is not an instance transition (worker.*, model.*, reconcile.*). */
  event(event: EventInput): void {
    this.events.push(event);
  }

  /** The route snapshot must be reloaded after the commit (a worker's status or URLs moved). */
  routesChanged(): void {
    this.effects.routes = true;
  }

  /** A worker row the caller read in this transaction (saves reading it again). */
  knowWorker(worker: WorkerRow): void {
    this.workerRows.set(worker.workerId, worker);
  }

  /** Route rows the caller read in this transaction (an unchanged route is then not written). */
  knowRoutes(routes: Iterable<RouteRow | null>): void {
    for (const route of routes) if (route) this.routeRows.set(route.instanceId, route);
  }

  /** Writes the events recorded so far; returns them. */
  async flush(): Promise<EventInput[]> {
    const events = this.events.splice(0);
    await recordEvents(this.tx, this.now, events);
    return events;
  }

  // ---- creations ----

  /** `POST /v1/models/register`: pending instances and their unserved routes, one per placement. */
  async placed(model: ModelRow, placements: Placement[]): Promise<InstanceRow[]> {
    const rows = await this.insertPending(model, placements);
    for (const instance of rows) {
      this.record("placed", {
        instance,
        from: null,
        to: "pending",
        detail: { gpu_ids: instance.gpuIds, gpu_memory_utilization: instance.gpuMemoryUtilization },
      });
    }
    return rows;
  }

  /**
   * An agent reports a live engine that has no row while its model wants another replica:
   * the row and route are inserted from the report; nothing is launched.
   */
  async adopted(
    worker: WorkerRow,
    model: ModelRow,
    report: InstanceReport,
  ): Promise<InstanceRow | undefined> {
    if (!allowed("adopted", null, report.status)) return undefined;
    this.knowWorker(worker);
    const [instance] = await this.tx
      .insert(schema.instances)
      .values({
        alias: report.alias,
        workerId: worker.workerId,
        gpuIds: report.gpu_ids,
        gpuMemoryUtilization: report.spec?.gpu_memory_utilization ?? model.gpuMemoryUtilization,
        port: report.port,
        pid: report.pid,
        status: report.status,
        restarts: report.restarts,
        lastError: report.last_error,
        readyAt: report.status === "ready" ? this.now : null,
        createdAt: this.now,
        updatedAt: this.now,
      })
      .returning();
    if (!instance) return undefined;
    await this.insertRoutes(model, [instance]);
    this.record("adopted", {
      instance,
      from: null,
      to: report.status,
      detail: { pid: report.pid, port: report.port, gpu_ids: report.gpu_ids },
    });
    return instance;
  }

  // ---- updates in place ----

  /** The agent accepted the launch: the row takes what it answered (or `starting`). */
  launched(instance: InstanceRow, report: InstanceReport | null): Promise<boolean> {
    const status =
      report?.status === "ready" || report?.status === "failed" ? report.status : "starting";
    const port = report?.port ?? null;
    const pid = report?.pid ?? null;
    return this.transition(
      instance,
      "launched",
      {
        status,
        port,
        pid,
        lastError: report?.last_error ?? instance.lastError,
        readyAt: status === "ready" ? this.now : null,
      },
      { detail: { port, pid, gpu_ids: instance.gpuIds } },
    );
  }

  /** The agent refused the launch or could not be reached. */
  launchFailed(instance: InstanceRow, error: string): Promise<boolean> {
    return this.transition(
      instance,
      "launch_failed",
      { status: "failed", lastError: error },
      { message: error },
    );
  }

  /** An agent's report of this engine (status, port, pid, restarts, error). */
  reported(
    instance: InstanceRow,
    change: InstanceChange & { status: (typeof REPORTED)[number] },
  ): Promise<boolean> {
    return this.transition(instance, "reported", change);
  }

  /**
   * The launch progress the agent reports (not a status: no transition, no route change):
   * written when it differs from the row's, with one `instance.phase` event per phase it
   * shows finished (manager/services/progress.ts).
   */
  async progressed(
    instance: InstanceRow,
    modelName: string,
    progress: InstanceProgress | undefined,
  ): Promise<void> {
    if (!progress || progressFingerprint(progress) === progressFingerprint(instance.progress)) {
      return;
    }
    for (const event of phaseEvents(instance, modelName, progress)) this.event(event);
    await this.tx
      .update(schema.instances)
      .set({ progress: storedProgress(progress, this.now) })
      .where(eq(schema.instances.id, instance.id));
  }

  /**
   * The agent reports the engine with another spec than the manager asked for (another
   * model, other engine arguments): never served; recorded again when the difference changes.
   */
  specMismatch(instance: InstanceRow, message: string): Promise<boolean> {
    return this.transition(
      instance,
      "spec_mismatch",
      { status: "failed", lastError: message },
      { message },
    );
  }

  /** The agent stopped reporting an engine it had (or its worker came back without it). */
  vanished(instance: InstanceRow, error: string): Promise<boolean> {
    return this.transition(instance, "vanished", { status: "failed", pid: null, lastError: error });
  }

  /** Its worker went silent. */
  lost(instance: InstanceRow): Promise<boolean> {
    return this.transition(instance, "lost", { status: "lost" });
  }

  /** Its worker is being removed (`DELETE /v1/workers/{id}`): placed elsewhere or dropped next. */
  evicted(instance: InstanceRow, message: string): Promise<boolean> {
    return this.transition(
      instance,
      "evicted",
      { status: "lost", lastError: message },
      { message },
    );
  }

  /**
   * `POST /v1/instances/{id}/restart`: the ready instance becomes `stopping` and its route
   * unserved at once (routers stop sending to it before the engine is stopped). False when
   * the row is no longer ready (another restart, or a report, moved it first).
   */
  restarted(
    instance: InstanceRow,
    detail: Record<string, unknown>,
    message: string,
  ): Promise<boolean> {
    return this.transition(instance, "restarted", { status: "stopping" }, { message, detail });
  }

  /**
   * The agent took the restart: its reply counts it (`restarts`). Nothing else is taken from
   * the reply, which a heartbeat sent after it may already have overtaken.
   */
  restartAccepted(instance: InstanceRow, report: InstanceReport): Promise<boolean> {
    if (report.restarts <= instance.restarts) return Promise.resolve(false);
    const status = instance.status;
    if (status !== "starting" && status !== "ready" && status !== "stopping") {
      return Promise.resolve(false);
    }
    return this.transition(instance, "reported", { status, restarts: report.restarts });
  }

  /**
   * The agent did not take the restart: back to `ready` (the engine runs as it did), or
   * `failed` when the agent has no such engine.
   */
  restartFailed(instance: InstanceRow, to: "ready" | "failed", error: string): Promise<boolean> {
    return this.transition(
      instance,
      "restart_failed",
      to === "failed"
        ? { status: "failed", pid: null, lastError: error }
        : { status: "ready", readyAt: instance.readyAt },
      { message: error },
    );
  }

  /** A failed instance launches again, on its own GPUs or where placement found room. */
  retried(instance: InstanceRow, target: Placement): Promise<boolean> {
    return this.transition(
      instance,
      "retried",
      {
        status: "pending",
        workerId: target.workerId,
        gpuIds: target.gpuIds,
        port: null,
        pid: null,
      },
      {
        message: instance.lastError,
        detail: {
          from_worker: instance.workerId,
          to_worker: target.workerId,
          gpu_ids: target.gpuIds,
        },
      },
    );
  }

  /** A failed instance could not be retried anywhere: the error says why, the backoff grows. */
  retryBlocked(instance: InstanceRow, message: string): Promise<boolean> {
    return this.transition(
      instance,
      "retry_blocked",
      { status: "failed", lastError: message },
      { message },
    );
  }

  /** A lost instance could not be moved: the error says why (written when it changes). */
  rescheduleBlocked(instance: InstanceRow, message: string): Promise<boolean> {
    return this.transition(
      instance,
      "reschedule_blocked",
      { status: "lost", lastError: message },
      { message },
    );
  }

  /**
   * The one in-place transition all the above go through: checks the table, writes the
   * changed fields guarded by the status it read (a row another writer moved first is left
   * alone), keeps the route in step, records the event and the cache changes.
   */
  async transition(
    instance: InstanceRow,
    name: UpdateTransition,
    change: InstanceChange,
    extras: EventExtras = {},
  ): Promise<boolean> {
    if (!allowed(name, instance.status, change.status)) return false;
    const spec: TransitionSpec = instanceTransitions[name];
    const next: InstanceRow = { ...instance, status: change.status };
    const set: Partial<InstanceRow> = {};
    const fields = ["status", "port", "pid", "restarts", "lastError", "workerId"] as const;
    for (const key of fields) {
      const value = change[key];
      if (value !== undefined && value !== instance[key]) Object.assign(set, { [key]: value });
    }
    if (change.gpuIds && !sameNumbers(change.gpuIds, instance.gpuIds)) set.gpuIds = change.gpuIds;
    const readyAt =
      change.readyAt !== undefined
        ? change.readyAt
        : change.status === "ready" && instance.status !== "ready"
          ? this.now
          : instance.readyAt;
    if (readyAt?.getTime() !== instance.readyAt?.getTime()) set.readyAt = readyAt;
    const note = spec.note === "always" || (spec.note === "when-changed" && "lastError" in set);
    const recorded = change.status !== instance.status || note;
    // Each recorded failure (its event says `to: failed`) counts toward the retry backoff.
    const failures =
      recorded && change.status === "failed" ? sql`${schema.instances.failures} + 1` : undefined;
    if (Object.keys(set).length > 0 || note) {
      const updated = await this.tx
        .update(schema.instances)
        .set({ ...set, ...(failures ? { failures } : {}), updatedAt: this.now })
        .where(
          and(eq(schema.instances.id, instance.id), eq(schema.instances.status, instance.status)),
        )
        .returning();
      const row = updated[0];
      if (!row) return false;
      Object.assign(next, row);
    }
    await this.syncRoute(next);
    if (recorded) {
      this.record(name, { instance: next, from: instance.status, to: next.status, ...extras });
    }
    if (spec.by !== "agent-report") {
      this.effects.workers.add(instance.workerId);
      this.effects.workers.add(next.workerId);
    }
    return true;
  }

  /**
   * Instances ready since `stableSince` or earlier forget their failures: the retry backoff
   * starts from the base delay again at their next failure. Nothing else moves (no event).
   */
  async forgetFailures(stableSince: Date): Promise<void> {
    await this.tx
      .update(schema.instances)
      .set({ failures: 0 })
      .where(
        and(
          eq(schema.instances.status, "ready"),
          sql`${schema.instances.failures} > 0`,
          lte(schema.instances.readyAt, stableSince),
        ),
      );
  }

  // ---- replacement and removal ----

  /**
   * A lost instance moves to a worker that fits: its row and route go, a pending one comes
   * (one `instance.rescheduled` event, on the new row).
   */
  async rescheduled(
    instance: InstanceRow,
    model: ModelRow,
    target: Placement,
    message = `replaces ${instance.id} on offline worker ${instance.workerId}`,
  ): Promise<InstanceRow | undefined> {
    if (!allowed("rescheduled", instance.status, "pending")) return undefined;
    const deleted = await this.tx
      .delete(schema.instances)
      .where(
        and(eq(schema.instances.id, instance.id), eq(schema.instances.status, instance.status)),
      )
      .returning({ id: schema.instances.id });
    if (deleted.length === 0) return undefined;
    const [created] = await this.insertPending(model, [target]);
    if (!created) return undefined;
    this.effects.workers.add(instance.workerId);
    this.record("rescheduled", {
      instance: created,
      from: instance.status,
      to: "pending",
      message,
      detail: {
        from_worker: instance.workerId,
        to_worker: target.workerId,
        gpu_ids: target.gpuIds,
      },
    });
    return created;
  }

  /**
   * A lost instance of a worker being removed that no other worker can take (no room, or its
   * model is pinned there): the row and its route go; the model runs short of a replica.
   */
  async dropped(instance: InstanceRow, message: string): Promise<boolean> {
    if (!allowed("dropped", instance.status, null)) return false;
    const deleted = await this.tx
      .delete(schema.instances)
      .where(
        and(eq(schema.instances.id, instance.id), eq(schema.instances.status, instance.status)),
      )
      .returning({ id: schema.instances.id });
    if (deleted.length === 0) return false;
    this.effects.routes = true;
    this.effects.workers.add(instance.workerId);
    this.record("dropped", { instance, from: instance.status, to: null, message });
    return true;
  }

  /**
   * `DELETE /v1/models/{alias}`: every instance of the alias goes, with its route, and one
   * `model.deleted` event is recorded (the caller deletes the model row, or throws to undo
   * it all). Returns where the engines ran.
   */
  async removed(alias: string): Promise<AgentAddress[]> {
    const rows = await this.tx
      .select({ id: schema.instances.id, status: schema.instances.status, worker: schema.workers })
      .from(schema.instances)
      .innerJoin(schema.workers, eq(schema.workers.workerId, schema.instances.workerId))
      .where(eq(schema.instances.alias, alias))
      .orderBy(asc(schema.instances.id));
    const gone = rows.filter((r) => allowed("removed", r.status, null));
    this.event({ kind: instanceTransitions.removed.event, alias });
    if (gone.length === 0) return [];
    await this.tx.delete(schema.instances).where(
      inArray(
        schema.instances.id,
        gone.map((r) => r.id),
      ),
    );
    this.effects.routes = true;
    for (const r of gone) this.effects.workers.add(r.worker.workerId);
    return gone.map((r) => r.worker);
  }

  // ---- worker changes that move routes ----

  /** A worker re-registered with other URLs: its routes follow. */
  async workerUrlChanged(workerId: string, before: string, after: string): Promise<void> {
    this.workerRows.delete(workerId);
    for (const [id, route] of this.routeRows)
      if (route.workerId === workerId) this.routeRows.delete(id);
    await this.tx
      .update(schema.routes)
      .set({ workerUrl: after, updatedAt: this.now })
      .where(and(eq(schema.routes.workerId, workerId), ne(schema.routes.workerUrl, after)));
    this.event({ kind: "worker.url_changed", workerId, message: `${before} -> ${after}` });
    this.effects.routes = true;
    // A new URL has no probe result yet: routes withdrawn for the old one may be served again.
    await this.syncWorkerRoutes(workerId);
  }

  /**
   * The probes found the worker's routed path (its route URL) stopped answering, or
   * answering again: its routes leave the snapshot, or come back where their instances are
   * ready (`routeReady` reads the path). `worker` is the row as the probe wrote it.
   */
  async routedPathChanged(worker: WorkerRow, error: string | null): Promise<void> {
    this.knowWorker(worker);
    const down = routedPathDown(worker);
    const url = routeUrl(worker);
    const routes = await this.syncWorkerRoutes(worker.workerId);
    this.event({
      kind: down ? "worker.routes_withdrawn" : "worker.routes_restored",
      workerId: worker.workerId,
      fromStatus: down ? "reachable" : "unreachable",
      toStatus: down ? "unreachable" : "reachable",
      message: down
        ? `routed path ${url} does not answer the manager's probes (${error}): its routes leave the snapshot`
        : `routed path ${url} answers again: its routes are served again where their instances are ready`,
      detail: { url, routes, error },
    });
    this.effects.routes = true;
  }

  /** A heartbeat from a worker marked offline: the caller then applies its report. */
  workerOnline(workerId: string, previous: string): void {
    this.workerRows.delete(workerId);
    this.event({
      kind: "worker.online",
      workerId,
      fromStatus: previous,
      toStatus: "online",
      message: "heartbeat received",
    });
    this.effects.routes = true;
  }

  /**
   * The caller marked the worker draining (its agent is stopping): its routes stop being
   * served at once, while its instances keep their status; they are lost, and replaced
   * elsewhere, when the worker then goes silent, as for any silent worker. Returns how many
   * routes stopped being served.
   */
  async workerDraining(workerId: string, previous: string, message: string): Promise<number> {
    this.workerRows.delete(workerId);
    for (const [id, route] of this.routeRows)
      if (route.workerId === workerId) this.routeRows.delete(id);
    const unserved = await this.tx
      .update(schema.routes)
      .set({ ready: false, updatedAt: this.now })
      .where(and(eq(schema.routes.workerId, workerId), eq(schema.routes.ready, true)))
      .returning({ id: schema.routes.instanceId });
    this.event({
      kind: "worker.draining",
      workerId,
      fromStatus: previous,
      toStatus: "draining",
      message,
      detail: { routes_unserved: unserved.length },
    });
    this.effects.routes = true;
    this.effects.workers.add(workerId);
    return unserved.length;
  }

  /**
   * The caller marked the worker offline (no heartbeat for WORKER_TIMEOUT_S): its engines
   * are lost and their routes unserved. Returns the instances lost.
   */
  async workerOffline(
    workerId: string,
    message: string,
    previous: string = "online",
  ): Promise<InstanceRow[]> {
    this.workerRows.delete(workerId);
    this.event({
      kind: "worker.offline",
      workerId,
      fromStatus: previous,
      toStatus: "offline",
      message,
    });
    this.effects.routes = true;
    this.effects.workers.add(workerId);
    const live = await this.tx
      .select()
      .from(schema.instances)
      .where(
        and(
          eq(schema.instances.workerId, workerId),
          inArray(schema.instances.status, instanceTransitions.lost.from),
        ),
      )
      .orderBy(asc(schema.instances.id));
    const lost: InstanceRow[] = [];
    for (const instance of live) if (await this.lost(instance)) lost.push(instance);
    return lost;
  }

  // ---- helpers ----

  /** Brings every route of the worker in step with its instance and worker; how many it has. */
  private async syncWorkerRoutes(workerId: string): Promise<number> {
    const instances = await this.tx
      .select()
      .from(schema.instances)
      .where(eq(schema.instances.workerId, workerId))
      .orderBy(asc(schema.instances.id));
    for (const instance of instances) await this.syncRoute(instance);
    return instances.length;
  }

  private async insertPending(model: ModelRow, placements: Placement[]): Promise<InstanceRow[]> {
    if (placements.length === 0) return [];
    const rows = await this.tx
      .insert(schema.instances)
      .values(
        placements.map((p) => ({
          alias: model.alias,
          workerId: p.workerId,
          gpuIds: p.gpuIds,
          gpuMemoryUtilization: model.gpuMemoryUtilization,
          status: "pending" as const,
          createdAt: this.now,
          updatedAt: this.now,
        })),
      )
      .returning();
    await this.insertRoutes(model, rows);
    for (const row of rows) this.effects.workers.add(row.workerId);
    return rows;
  }

  /** Routes for new rows, through each worker's public URL when it has one. */
  private async insertRoutes(model: ModelRow, rows: InstanceRow[]): Promise<void> {
    if (rows.length === 0) return;
    const values = [];
    for (const instance of rows) {
      const worker = await this.worker(instance.workerId);
      if (!worker) throw new Error(`worker ${instance.workerId} vanished during placement`);
      values.push({
        alias: model.alias,
        modelName: model.modelName,
        workerId: instance.workerId,
        workerUrl: routeUrl(worker),
        vllmPort: instance.port,
        instanceId: instance.id,
        ready: routeReady(instance, worker),
        createdAt: this.now,
        updatedAt: this.now,
      });
    }
    await this.tx.insert(schema.routes).values(values);
    this.effects.routes = true;
  }

  /** Writes the route only when it differs from what the instance and its worker say. */
  private async syncRoute(instance: InstanceRow): Promise<void> {
    const worker = await this.worker(instance.workerId);
    if (!worker) return;
    const ready = routeReady(instance, worker);
    const url = routeUrl(worker);
    const port = instance.port;
    const known = this.routeRows.get(instance.id);
    if (
      known &&
      known.ready === ready &&
      known.workerId === instance.workerId &&
      known.workerUrl === url &&
      known.vllmPort === port
    ) {
      return;
    }
    const changed = await this.tx
      .update(schema.routes)
      .set({
        workerId: instance.workerId,
        workerUrl: url,
        vllmPort: port,
        ready,
        updatedAt: this.now,
      })
      .where(
        and(
          eq(schema.routes.instanceId, instance.id),
          or(
            ne(schema.routes.ready, ready),
            ne(schema.routes.workerId, instance.workerId),
            ne(schema.routes.workerUrl, url),
            sql`${schema.routes.vllmPort} is distinct from ${port}::integer`,
          ),
        ),
      )
      .returning();
    for (const route of changed) this.routeRows.set(instance.id, route);
    if (changed.length > 0) this.effects.routes = true;
  }

  private async worker(workerId: string): Promise<WorkerRow | undefined> {
    if (this.workerRows.has(workerId)) return this.workerRows.get(workerId);
    const [row] = await this.tx
      .select()
      .from(schema.workers)
      .where(eq(schema.workers.workerId, workerId));
    this.workerRows.set(workerId, row);
    return row;
  }

  private record(
    name: TransitionName,
    options: EventExtras & { instance: InstanceRow; from: RowStatus; to: RowStatus },
  ): void {
    const spec: TransitionSpec = instanceTransitions[name];
    const { instance, from, to } = options;
    this.events.push({
      kind: spec.event.replace("<to>", to ?? "removed"),
      workerId: instance.workerId,
      alias: instance.alias,
      instanceId: instance.id,
      fromStatus: from,
      toStatus: to,
      message:
        options.message !== undefined
          ? options.message
          : to === "failed"
            ? instance.lastError
            : null,
      detail: options.detail ?? null,
    });
  }
}

/** Events whose news is bad: a failure, a loss, something that could not be done. */
const badNews = /failed|lost|offline|blocked|mismatch|dropped|evicted/;

/** One log line per committed event. */
function logEvent(log: Logger, event: EventInput): void {
  const fields: Record<string, unknown> = {
    event: event.kind,
    ...(event.workerId ? { worker_id: event.workerId } : {}),
    ...(event.alias ? { alias: event.alias } : {}),
    ...(event.instanceId ? { instance_id: event.instanceId } : {}),
    ...(event.fromStatus !== undefined || event.toStatus !== undefined
      ? { from: event.fromStatus ?? null, to: event.toStatus ?? null }
      : {}),
    ...(event.message ? { message: event.message } : {}),
    ...(event.detail ? { detail: event.detail } : {}),
  };
  const bad = badNews.test(event.kind) || event.toStatus === "failed";
  log[bad ? "warn" : "info"](eventTitle(event), fields);
}

function eventTitle(event: EventInput): string {
  const [subject, verb] = event.kind.split(".");
  return `${subject} ${(verb ?? "").replaceAll("_", " ")}`.trim();
}

function sameNumbers(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}
