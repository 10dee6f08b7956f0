/**
 * The manager's own metrics on its `/metrics` (docs/manager.md "Metrics"), beside the mounted
 * router's `fleet_router_*` and the usage writer's `fleet_manager_usage_*` on the same
 * registry. Counters and the heartbeat histogram are updated where things happen; the fleet's
 * state (workers, paths, instances) is read at scrape time by one grouped query, so a scrape
 * costs the same whatever the size of the fleet and never reads a stale cache.
 */
import { sql } from "drizzle-orm";
import type { FleetDb } from "../../db/index.ts";
import type { Logger } from "../../kit/log.ts";
import type { Metrics } from "../../kit/metrics.ts";
import { instanceRecordStatuses } from "../../protocol/models.ts";
import { workerStatuses } from "../../protocol/workers.ts";

const instanceStates = instanceRecordStatuses.join(", ");

/** What reconciliation did, one count per action (`fleet_manager_reconcile_actions_total`). */
export type ReconcileAction =
  /** The liveness sweep marked a silent worker offline (its instances became `lost`). */
  | "mark_offline"
  /** A lost instance was placed on another worker. */
  | "replace"
  | "replace_blocked"
  /** A failed instance was launched again after its backoff. */
  | "retry"
  | "retry_blocked"
  /** A pending instance whose launch call never completed was launched again. */
  | "relaunch_pending"
  /** Most workers went silent at once: rescheduling holds off. */
  | "hold_off";

export type ProbePath = "internal" | "public";

/** How a path's last probe went, as the worker row records it. */
type Reachability = "reachable" | "unreachable" | "unprobed";

type StateRow = {
  kind: "worker" | "instance";
  state: string;
  alias: string | null;
  internal: Reachability | null;
  public: Reachability | "none" | null;
  n: number;
};

/** Declares the manager's families on `metrics` and hands out the updates. */
export class ManagerMetrics {
  constructor(private readonly metrics: Metrics) {
    metrics.declare(
      "fleet_manager_workers",
      "gauge",
      "Workers by status (online, draining, offline), read from the database at scrape time",
    );
    metrics.declare(
      "fleet_manager_worker_paths",
      "gauge",
      "Workers not offline, by path (internal, public) and the manager's last probe of it (reachable, unreachable, unprobed; none: no public URL)",
    );
    metrics.declare(
      "fleet_manager_workers_unreachable",
      "gauge",
      "Workers not offline that no path reaches (internal unreachable, and the public one unreachable or absent): launches, stops and logs fail",
    );
    metrics.declare(
      "fleet_manager_instances",
      "gauge",
      `Instances by alias and state (${instanceStates}); only the pairs that exist`,
    );
    metrics.declare(
      "fleet_manager_state_read_failures_total",
      "counter",
      "Reads of the fleet's state that failed, and scrapes that stopped waiting for one after 2 s (the gauges kept their last values)",
    );
    metrics.declare(
      "fleet_manager_heartbeat_duration_seconds",
      "histogram",
      "Time to handle an agent's heartbeat, by outcome (ok, error)",
    );
    metrics.declare(
      "fleet_manager_reconcile_actions_total",
      "counter",
      "What the liveness sweep and reconciliation did, by action",
    );
    metrics.declare(
      "fleet_manager_reconcile_duration_seconds",
      "histogram",
      "Time of one round of the background loops (sweep, reconciliation, launches)",
    );
    metrics.declare(
      "fleet_manager_reconcile_holding_off",
      "gauge",
      "1 while rescheduling holds off because most workers went silent at once",
    );
    metrics.declare(
      "fleet_manager_probes_total",
      "counter",
      "Probes of workers' URLs recorded, by path (internal, public) and result (reachable, unreachable)",
    );
    metrics.declare(
      "fleet_manager_route_withdrawals_total",
      "counter",
      "Times a worker's routed path stopped answering and its routes left the snapshot",
    );
    metrics.declare(
      "fleet_manager_route_restorations_total",
      "counter",
      "Times a worker's routed path answered again and its routes came back",
    );
    // Counters without labels start at 0, so that rate() and alerts have a series from the start.
    for (const name of [
      "fleet_manager_state_read_failures_total",
      "fleet_manager_route_withdrawals_total",
      "fleet_manager_route_restorations_total",
    ]) {
      metrics.inc(name, undefined, 0);
    }
  }

  heartbeat(seconds: number, outcome: "ok" | "error"): void {
    this.metrics.observe("fleet_manager_heartbeat_duration_seconds", { outcome }, seconds);
  }

  reconcile(action: ReconcileAction, by = 1): void {
    if (by > 0) this.metrics.inc("fleet_manager_reconcile_actions_total", { action }, by);
  }

  reconcileRound(seconds: number, holdingOff: boolean): void {
    this.metrics.observe("fleet_manager_reconcile_duration_seconds", undefined, seconds);
    this.metrics.set("fleet_manager_reconcile_holding_off", undefined, holdingOff ? 1 : 0);
  }

  probe(path: ProbePath, reachable: boolean): void {
    this.metrics.inc("fleet_manager_probes_total", {
      path,
      result: reachable ? "reachable" : "unreachable",
    });
  }

  routedPath(down: boolean): void {
    this.metrics.inc(
      down ? "fleet_manager_route_withdrawals_total" : "fleet_manager_route_restorations_total",
    );
  }

  /**
   * Reads workers and instances at each scrape: one grouped statement over both tables
   * (rows: one per distinct status and path state, one per alias and state). A failed read
   * keeps the last values and is counted.
   */
  readStateAtScrape(fleetDb: Pick<FleetDb, "query">, log: Logger): void {
    const metrics = this.metrics;
    metrics.collectAsync(
      async () => {
        let rows: StateRow[];
        try {
          rows = await fleetDb.query<StateRow>(stateQuery);
        } catch (error) {
          metrics.inc("fleet_manager_state_read_failures_total");
          log.debug("metrics: fleet state not read", { error: String(error) });
          return;
        }
        this.#publish(rows);
      },
      { onTimeout: () => metrics.inc("fleet_manager_state_read_failures_total") },
    );
  }

  #publish(rows: StateRow[]): void {
    const m = this.metrics;
    const workers = new Map<string, number>(workerStatuses.map((status) => [status, 0]));
    const paths = new Map<string, number>();
    for (const path of ["internal", "public"] as const) {
      for (const state of ["reachable", "unreachable", "unprobed"])
        paths.set(`${path}/${state}`, 0);
    }
    paths.set("public/none", 0);
    let unreachable = 0;
    // Only the alias and state pairs that exist: a deleted model's series goes.
    m.clear("fleet_manager_instances");
    for (const row of rows) {
      const n = Number(row.n);
      if (row.kind === "instance") {
        m.set("fleet_manager_instances", { alias: row.alias ?? "", state: row.state }, n);
        continue;
      }
      workers.set(row.state, (workers.get(row.state) ?? 0) + n);
      // An offline worker is not probed: its last probe says nothing about now.
      if (row.state === "offline") continue;
      const internal = row.internal ?? "unprobed";
      const external = row.public ?? "none";
      paths.set(`internal/${internal}`, (paths.get(`internal/${internal}`) ?? 0) + n);
      paths.set(`public/${external}`, (paths.get(`public/${external}`) ?? 0) + n);
      if (internal === "unreachable" && (external === "unreachable" || external === "none")) {
        unreachable += n;
      }
    }
    for (const [status, n] of workers) m.set("fleet_manager_workers", { status }, n);
    for (const [key, n] of paths) {
      const [path = "", state = ""] = key.split("/");
      m.set("fleet_manager_worker_paths", { path, state }, n);
    }
    m.set("fleet_manager_workers_unreachable", undefined, unreachable);
  }
}

const reachability = (column: string) =>
  `case when ${column} is null then 'unprobed' when ${column} then 'reachable' else 'unreachable' end`;

const stateQuery = sql.raw(`
select 'worker' as kind, status as state, null::text as alias,
       ${reachability("internal_reachable")} as internal,
       case when public_worker_url is null then 'none'
            else ${reachability("public_reachable")} end as public,
       count(*)::int as n
from workers
group by 2, 3, 4, 5
union all
select 'instance', status, alias, null, null, count(*)::int
from instances
group by 2, 3`);
