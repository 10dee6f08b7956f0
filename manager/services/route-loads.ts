import type { EngineLoad, InstanceReport, RouteLoad } from "../../protocol/index.ts";

/** A load older than this is not served: the agent stopped reporting it. */
const MAX_AGE_MS = 30_000;

/**
 * Each route's last engine load, from the heartbeats this manager process received
 * (`load` on an instance report). Kept in memory, apart from the route snapshot: loads
 * change every heartbeat, and the snapshot's version must move only when routes do.
 * Served at `GET /v1/route-loads`. With several manager replicas each knows the workers
 * that heartbeat to it.
 */
export class RouteLoads {
  readonly #entries = new Map<
    string,
    { workerId: string; alias: string; load: EngineLoad; at: number }
  >();

  record(workerId: string, reports: readonly InstanceReport[], now: number): void {
    for (const report of reports) {
      const key = `${workerId}\u0000${report.alias}`;
      if (report.load && report.status === "ready") {
        this.#entries.set(key, { workerId, alias: report.alias, load: report.load, at: now });
      } else {
        this.#entries.delete(key);
      }
    }
  }

  list(now: number): RouteLoad[] {
    const out: RouteLoad[] = [];
    for (const [key, entry] of this.#entries) {
      const age = now - entry.at;
      if (age > MAX_AGE_MS) {
        this.#entries.delete(key);
        continue;
      }
      out.push({
        alias: entry.alias,
        worker_id: entry.workerId,
        load: entry.load,
        age_s: Math.max(0, Math.round(age) / 1000),
      });
    }
    return out;
  }
}
